//! A run in a thread: started by a message or `/agent task`, carried out one
//! `agent.turn` job at a time, shown in one progress message edited as it
//! goes, and ended with the result and its merge buttons.

use std::sync::Arc;
use std::time::Duration;

use den_core::Job;
use den_discord::{Button, ButtonStyle, Outgoing};
use den_llm::ledger::{Budget, BudgetCheck};
use den_llm::{ChatModel, Usage};
use den_worker::JobError;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::sessions::{Session, Status};
use super::{AgentModule, kinds, retry};
use crate::controls::{Controls, Interrupt};
use crate::records::EventKind;
use crate::run::{CallRecord, Checkpoint, End, Limit, Progress, RunConfig, RunState, Step, now_ms};
use crate::size::Size;
use crate::tools::Tools;

/// The model a task asks for by `@alias`, and the task without it.
fn alias<'t>(m: &AgentModule, task: &'t str) -> (Option<usize>, &'t str) {
    alias_in(&m.parts.settings.aliases, task)
}

fn alias_in<'t>(aliases: &[(String, usize)], task: &'t str) -> (Option<usize>, &'t str) {
    let t = task.trim_start();
    for (name, rung) in aliases {
        if let Some(rest) = t.strip_prefix('@').and_then(|r| r.strip_prefix(name.as_str()))
            && (rest.is_empty() || rest.starts_with(char::is_whitespace))
        {
            return (Some(*rung), rest.trim_start());
        }
    }
    (None, task)
}

/// Starts a run of `task` in `session` for `asked_by`: its state saved, the
/// session marked running (a session already running keeps its run, so a
/// redelivered job starts nothing new), the progress message posted and the
/// first turn queued. Returns the run's id.
pub(super) async fn start(
    m: &Arc<AgentModule>,
    mut session: Session,
    task: &str,
    asked_by: u64,
) -> Result<String, JobError> {
    let p = &m.parts;
    let thread = session.thread;
    if session.status == Status::Running {
        return Ok(session.run);
    }
    let history = match p.sessions.state(thread, &session.run).await.map_err(retry)? {
        Some(last) if !session.run.is_empty() => last.messages,
        _ => vec![],
    };
    let (rung, task) = alias(m, task);
    let run = format!("{thread}-{}", session.runs + 1);
    let size = Size::of(task);
    let server = p.sessions.settings(session.guild).await.map_err(retry)?;
    let ladder = m.ladder_for(&server);
    let mut state = RunState::start(history, task, now_ms());
    let limit = p.settings.turns.of(size);
    state.max_turns = Some(server.max_turns.map_or(limit, |cap| limit.min(cap)));
    state.rung = rung.unwrap_or_else(|| size.start_tier(ladder.len())).min(ladder.len().saturating_sub(1));
    p.sessions.save_state(thread, &run, &state).await.map_err(retry)?;
    // Controls sent to earlier runs are not this run's.
    let earlier = p.sessions.controls_after(thread, &session.heard).await.map_err(retry)?;
    let heard = earlier.last().map_or_else(|| session.heard.clone(), |c| c.seq.clone());
    let stamp = run.clone();
    let started = p
        .sessions
        .update(thread, |s| {
            if s.status != Status::Running {
                s.status = Status::Running;
                s.run.clone_from(&stamp);
                s.runs += 1;
                s.progress_message = None;
                s.owner = asked_by;
                s.heard.clone_from(&heard);
            }
        })
        .await
        .map_err(retry)?;
    session = started.ok_or_else(|| JobError::permanent("the session disappeared"))?;
    if session.run != run {
        // Someone else's run started first.
        return Ok(session.run);
    }
    let model = ladder.get(state.rung).map(|l| l.name().to_owned()).unwrap_or_default();
    let text = progress_text(&session, &state, &model, &format!("starting ({size:?} task)"));
    let progress = p.egress.post(thread, &Outgoing::text(text).buttons(controls(thread)), &run).await.map_err(retry)?;
    p.sessions.update(thread, |s| s.progress_message = Some(progress)).await.map_err(retry)?;
    let data = json!({"thread": thread, "task": task, "model": model});
    p.records.publish(&thread.to_string(), &run, EventKind::ExecutionStarted, 0, data).await.map_err(retry)?;
    queue_turn(m, &session, &run, 1).await?;
    Ok(run)
}

async fn queue_turn(m: &AgentModule, session: &Session, run: &str, n: u32) -> Result<(), JobError> {
    let job = Job::builder(kinds::TURN, m.parts.clock.now())
        .payload(json!({"thread": session.thread, "run": run}))
        .guild(session.guild)
        .dedup_key(format!("agent:turn:{run}:{n}"))
        .build();
    m.parts.jobs.send(&job).await.map(|_| ()).map_err(retry)
}

fn controls(thread: u64) -> Vec<Button> {
    vec![
        Button::new(format!("agent:stop:{thread}"), "Stop").emoji("🛑").style(ButtonStyle::Danger),
        Button::new(format!("agent:retry:{thread}"), "Retry turn").emoji("🔄"),
        Button::new(format!("agent:escalate:{thread}"), "Stronger model").emoji("🚀"),
    ]
}

fn progress_text(s: &Session, state: &RunState, model: &str, doing: &str) -> String {
    let max = state.max_turns.unwrap_or(0);
    let confidence = state.confidence.last().map_or_else(|| "–".to_owned(), |c| format!("{c}%"));
    format!(
        "🛠️ **Working** on `{}` · turn {}/{max} · model `{model}` · confidence {confidence}\n{doing}",
        s.branch, state.turns
    )
}

/// What the run is doing, for the progress message: the tool and its argument cut short.
fn doing(tool: &str, input: &Value) -> String {
    let arg = ["command", "path", "regex", "glob", "question"].iter().find_map(|k| input[*k].as_str()).unwrap_or("");
    let mut arg: String = arg.replace('`', "'").chars().take(80).collect();
    if arg.len() < input.to_string().len() && arg.chars().count() == 80 {
        arg.push('…');
    }
    format!("▶ `{tool}` {}", if arg.is_empty() { String::new() } else { format!("`{arg}`") })
}

/// Edits the progress message with the latest call, at most once per `every`.
struct LiveProgress {
    tx: watch::Sender<Option<(u32, String)>>,
}

impl Progress for LiveProgress {
    fn calling(&self, turn: u32, _max: u32, tool: &str, input: &Value) {
        let _ = self.tx.send(Some((turn, doing(tool, input))));
    }
}

/// Keeps the run's state after each step, and each call in the turn log.
struct Keep<'a> {
    m: &'a AgentModule,
    thread: u64,
    run: &'a str,
}

#[async_trait::async_trait]
impl Checkpoint for Keep<'_> {
    async fn save(&self, state: &RunState, call: Option<&CallRecord>) -> Result<(), String> {
        let p = &self.m.parts;
        if let Some(call) = call {
            p.records.log_call(self.run, state.calls.len() - 1, call).await.map_err(|e| e.to_string())?;
        }
        p.sessions.save_state(self.thread, self.run, state).await.map_err(|e| e.to_string())
    }
}

/// One turn of a run (`agent.turn`): the thread's lease, the saved state,
/// the controls people sent, one step, the state saved, the next turn queued
/// or the result posted.
pub(super) async fn turn(m: &Arc<AgentModule>, job: &Job) -> Result<(), JobError> {
    let p = &m.parts;
    let thread = job.payload["thread"].as_u64().ok_or_else(|| JobError::permanent("no thread"))?;
    let run = job.payload["run"].as_str().ok_or_else(|| JobError::permanent("no run"))?.to_owned();
    let Some((session, _)) = p.sessions.get(thread).await.map_err(retry)? else { return Ok(()) };
    if session.run != run || session.status != Status::Running {
        return Ok(()); // A turn of a run that ended or was replaced.
    }
    let owner = format!("{:016x}", rand::random::<u64>());
    if !p.sessions.take_lease(thread, &owner, now_ms(), p.settings.lease).await.map_err(retry)? {
        return Err(JobError::retry("another worker holds this thread's run"));
    }
    let result = turn_under_lease(m, session, &run, &owner, job.attempt).await;
    p.sessions.release(thread, &owner).await.map_err(retry)?;
    result
}

/// Deliveries of a turn that fails before the run ends as failed.
const GIVE_UP_AFTER: u32 = 3;

async fn turn_under_lease(
    m: &Arc<AgentModule>,
    session: Session,
    run: &str,
    owner: &str,
    attempt: u32,
) -> Result<(), JobError> {
    let p = &m.parts;
    let thread = session.thread;
    let Some(mut state) = p.sessions.state(thread, run).await.map_err(retry)? else {
        return Err(JobError::permanent(format!("run {run} has no saved state")));
    };
    let git = p.workspaces.thread(session.guild, thread).await.map_err(retry)?;
    if state.turns == 0 && state.pending.is_none() {
        p.workspaces.refresh(session.guild, thread, &git).await.map_err(retry)?;
    }
    git.checkout(&session.branch, &session.base).await.map_err(retry)?;
    let workspace = crate::workspace::Workspace::open(&p.workspaces.thread_dir(session.guild, thread))
        .map_err(|e| JobError::permanent(e.to_string()))?;
    // A worker that died mid-command may have left it running: it goes before the run goes on.
    let _ = p.sandbox.kill_leftovers(session.uid);
    let tools = Tools {
        workspace,
        git,
        sandbox: p.sandbox.clone(),
        session_uid: session.uid,
        mcp: p.mcp.clone(),
        run_limit: p.settings.command_limit,
    };

    let controls = Controls::default();
    let heard = hear(m, thread, &session.heard, &controls).await?;
    let server = p.sessions.settings(session.guild).await.map_err(retry)?;
    let daily = server.daily_tokens.map_or(p.settings.daily_tokens, |t| (t > 0).then_some(t));
    let budget = Budget { per_guild: daily, per_persona: None };
    let over_budget =
        matches!(p.ledger.check(session.guild, "agent", &budget).await.map_err(retry)?, BudgetCheck::Exhausted);

    let models = m.ladder_for(&server);
    let ladder: Vec<&dyn ChatModel> = models.iter().map(AsRef::as_ref).collect();
    let config = RunConfig {
        max_turns: state.max_turns.unwrap_or(p.settings.turns.medium),
        wall_time: p.settings.wall_time,
        ..RunConfig::new(&session.branch, &session.base)
    };
    let (tx, rx) = watch::channel(None);
    let in_use = ladder.get(state.rung).map(|l| l.name().to_owned()).unwrap_or_default();
    let shown = tokio::spawn(show_progress(m.clone(), session.clone(), rx, state.clone(), in_use));
    let watcher = tokio::spawn(watch_stop(m.clone(), thread, heard.clone(), owner.to_owned(), controls.clone()));
    let before = state.usage;
    let calls_before = state.calls.len();
    let ended = if attempt > GIVE_UP_AFTER {
        // Earlier deliveries ran out of the job's time without a word: the run ends here.
        state.fail("a turn did not finish within the worker's job timeout, three times");
        Ok(state.end.clone())
    } else if over_budget {
        state.end = Some(End::Aborted(Limit::ServerBudget));
        Ok(state.end.clone())
    } else {
        let step = Step {
            ladder: &ladder,
            tools: &tools,
            config: &config,
            progress: &LiveProgress { tx },
            controls: &controls,
            checkpoint: &Keep { m, thread, run },
            now_ms: now_ms(),
        };
        step.turn(&mut state).await
    };
    watcher.abort();
    shown.abort();
    let ended = match ended {
        Ok(ended) => ended,
        // Tried enough: the run ends, said in the thread, rather than waiting in the dead-letter queue.
        Err(e) if attempt >= GIVE_UP_AFTER => {
            tracing::warn!(error = %e, thread, "agent: a turn keeps failing; the run ends");
            state.fail(&e.to_string());
            state.end.clone()
        }
        Err(e) => return Err(JobError::retry(e.to_string())),
    };
    p.sessions.save_state(thread, run, &state).await.map_err(retry)?;
    let used = Usage {
        input_tokens: state.usage.input_tokens - before.input_tokens,
        output_tokens: state.usage.output_tokens - before.output_tokens,
        cache_read_tokens: 0,
    };
    p.ledger.record(session.guild, "agent", used).await.map_err(retry)?;
    let model = ladder.get(state.rung).map(|l| l.name().to_owned()).unwrap_or_default();
    let escalation = state.escalations.last().map(|e| format!("turn {}: {} → {} ({})", e.turn, e.from, e.to, e.reason));
    let tokens = state.usage.input_tokens + state.usage.output_tokens;
    let updated = p
        .sessions
        .update(thread, |s| {
            s.model.clone_from(&model);
            s.confidence = state.confidence.last().copied();
            s.last_escalation.clone_from(&escalation);
            s.heard.clone_from(&heard);
            s.tokens = tokens;
        })
        .await
        .map_err(retry)?
        .unwrap_or(session);
    let report = state.report();
    let made = state.calls.get(calls_before..).unwrap_or_default();
    let failures = made.iter().filter(|c| !c.outcome.ok).count();
    let killed = made.iter().filter(|c| !c.outcome.ok && c.outcome.shown.contains("killed after")).count();
    let turn_events = json!({"turn": state.turns, "confidence": state.confidence.last(), "model": model,
        "calls": made.len(), "failures": failures, "killed": killed, "tokens": used.input_tokens + used.output_tokens});
    p.records
        .publish(&thread.to_string(), run, EventKind::TurnCompleted, state.turns, turn_events)
        .await
        .map_err(retry)?;
    match ended {
        None => queue_turn(m, &updated, run, state.turns + 1).await,
        Some(end) => {
            p.records.finish(&thread.to_string(), run, &report).await.map_err(retry)?;
            super::results::finished(m, &updated, run, &state, &end, &model).await
        }
    }
}

/// Applies the controls sent since `heard`; returns the newest one's seq.
async fn hear(m: &AgentModule, thread: u64, heard: &str, controls: &Controls) -> Result<String, JobError> {
    let sent = m.parts.sessions.controls_after(thread, heard).await.map_err(retry)?;
    let mut last = heard.to_owned();
    for c in sent {
        match c.word.as_str() {
            "stop" => controls.stop(),
            "retry" => controls.send(Interrupt::Retry),
            "wrong" => controls.send(Interrupt::Wrong),
            "escalate" => controls.send(Interrupt::Escalate),
            _ => controls.send(Interrupt::Clarify(c.text)),
        }
        last = c.seq;
    }
    Ok(last)
}

/// While a turn runs: a stop sent from anywhere cancels it within half a
/// second, and the thread's lease is renewed.
async fn watch_stop(m: Arc<AgentModule>, thread: u64, heard: String, owner: String, controls: Controls) {
    let mut renewed = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(sent) = m.parts.sessions.controls_after(thread, &heard).await
            && sent.iter().any(|c| c.word == "stop")
        {
            controls.stop();
        }
        if renewed.elapsed() >= m.parts.settings.lease / 3 {
            renewed = std::time::Instant::now();
            let _ = m.parts.sessions.take_lease(thread, &owner, now_ms(), m.parts.settings.lease).await;
        }
    }
}

/// Shows each call as it starts, at most once per `progress_every` (Discord
/// allows five edits in five seconds in a channel); the latest call wins.
async fn show_progress(
    m: Arc<AgentModule>,
    session: Session,
    mut rx: watch::Receiver<Option<(u32, String)>>,
    mut state: RunState,
    model: String,
) {
    while rx.changed().await.is_ok() {
        let Some((turn, doing)) = rx.borrow_and_update().clone() else { continue };
        state.turns = turn;
        edit_progress(&m, &session, &state, &model, &doing, true).await;
        tokio::time::sleep(m.parts.settings.progress_every).await;
    }
}

/// Edits the progress message (failures are logged: progress is never worth failing a turn).
pub(super) async fn edit_progress(
    m: &AgentModule,
    s: &Session,
    state: &RunState,
    model: &str,
    doing: &str,
    live: bool,
) {
    let Some(message) = s.progress_message else { return };
    let text = if live {
        progress_text(s, state, model, doing)
    } else {
        let confidence = state.confidence.last().map_or_else(|| "–".to_owned(), |c| format!("{c}%"));
        format!("{doing} · `{}` · {} turns · model `{model}` · confidence {confidence}", s.branch, state.turns)
    };
    let buttons = if live { controls(s.thread) } else { vec![] };
    if let Err(e) = m.parts.egress.edit(s.thread, message, &text, &buttons).await {
        tracing::warn!(error = %e, thread = s.thread, "agent: cannot edit the progress message");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_alias_must_be_a_whole_word_at_the_start() {
        let aliases = vec![("opus".to_owned(), 2), ("fast".to_owned(), 0)];
        assert_eq!(super::alias_in(&aliases, "@opus fix the parser"), (Some(2), "fix the parser"));
        assert_eq!(super::alias_in(&aliases, "  @fast\tadd a test"), (Some(0), "add a test"));
        assert_eq!(super::alias_in(&aliases, "@opusx fix it"), (None, "@opusx fix it"));
        assert_eq!(super::alias_in(&aliases, "fix @opus"), (None, "fix @opus"));
    }
}
