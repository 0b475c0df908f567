//! The loop: ask the model, run the tools it calls, send the results back,
//! until it calls `finish` (den then commits on the session's branch), asks
//! the user something, or the run reaches its turn limit.

use crate::controls::{Controls, Interrupt};
use den_llm::{ChatMessage, ChatModel, ChatRequest, FinishReason, ToolResult, ToolSpec, Usage, collect_turn};
use serde_json::{Value, json};

use crate::ToolError;
use crate::escalation::{Reason, Watch};
use crate::tools::{Outcome, Tools};

/// What the model is told about its job.
pub const SYSTEM: &str = "You are den's coding agent. You work in a git repository through tools: read before you \
edit, keep changes small, run the tests with `run`. `run` has no network. You cannot commit: den commits your work \
when you call `finish` with a summary and your confidence (0-100) that the task is done. If you cannot go on \
without the user, call `ask_user`.";

/// How a run may go.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Turns (model calls) at most.
    pub max_turns: u32,
    /// Tokens per model call at most.
    pub max_tokens: u32,
    /// The session's branch (`den/<thread id>`).
    pub branch: String,
    /// What the branch starts from.
    pub base: String,
    /// Longest the run may take.
    pub wall_time: std::time::Duration,
    /// Tokens the run may use, all turns (0: no limit; a server's daily budget is the ledger's).
    pub token_budget: u64,
}

impl RunConfig {
    /// A run on `branch` from `base`: 20 turns, 4,096 tokens per answer, 30 minutes, no token budget.
    #[must_use]
    pub fn new(branch: &str, base: &str) -> Self {
        Self {
            max_turns: 20,
            max_tokens: 4096,
            branch: branch.into(),
            base: base.into(),
            wall_time: std::time::Duration::from_secs(30 * 60),
            token_budget: 0,
        }
    }
}

/// Why a run was cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `wall_time` passed.
    WallTime,
    /// `token_budget` was spent.
    Tokens,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::WallTime => "the run's time limit",
            Self::Tokens => "the run's token budget",
        })
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The model finished; den committed what changed (when anything did).
    Finished {
        /// The model's summary.
        summary: String,
        /// Its confidence, 0 to 100.
        confidence: u8,
        /// The commit den made.
        commit: Option<String>,
    },
    /// The model asked the user; the run continues with their answer.
    AskedUser {
        /// The question.
        question: String,
    },
    /// The turn limit came first; nothing was committed.
    OutOfTurns,
    /// The user stopped it: the model call or command running was cancelled.
    Stopped,
    /// A limit cut it short; nothing was committed.
    Aborted(Limit),
}

/// One tool call of a turn, for the turn log.
#[derive(Clone, Debug)]
pub struct CallRecord {
    /// The tool.
    pub tool: String,
    /// Its input.
    pub input: Value,
    /// What it answered.
    pub outcome: Outcome,
}

/// A move to the next model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Escalation {
    /// The turn after which it happened.
    pub turn: u32,
    /// The model left and the one taken, by name.
    pub from: String,
    /// The model taken.
    pub to: String,
    /// Why.
    pub reason: Reason,
}

/// A whole run.
#[derive(Clone, Debug)]
pub struct Report {
    /// How it ended.
    pub end: End,
    /// Turns taken.
    pub turns: u32,
    /// Tokens used, all turns.
    pub usage: Usage,
    /// Every call, in order.
    pub calls: Vec<CallRecord>,
    /// The conversation, to continue the session with.
    pub messages: Vec<ChatMessage>,
    /// `git diff --stat` of the commit, when there is one.
    pub diffstat: String,
    /// den's confidence after each turn.
    pub confidence: Vec<u8>,
    /// Moves to stronger models.
    pub escalations: Vec<Escalation>,
}

/// Told about each step, to show progress (a Discord message, a terminal line).
pub trait Progress: Send + Sync {
    /// Turn `turn` of `max` calls `tool` with `input`.
    fn calling(&self, turn: u32, max: u32, tool: &str, input: &Value);
}

/// Shows nothing.
#[derive(Debug)]
pub struct Quiet;

impl Progress for Quiet {
    fn calling(&self, _: u32, _: u32, _: &str, _: &Value) {}
}

fn loop_tools() -> Vec<ToolSpec> {
    let mut specs = Tools::specs();
    specs.push(ToolSpec {
        name: "finish".into(),
        description: "Say the task is done: den commits your changes.".into(),
        input_schema: json!({"type": "object", "required": ["summary", "confidence"], "properties": {
            "summary": {"type": "string"}, "confidence": {"type": "integer", "minimum": 0, "maximum": 100}}}),
    });
    specs.push(ToolSpec {
        name: "ask_user".into(),
        description: "Ask the user a question and wait for the answer.".into(),
        input_schema: json!({"type": "object", "required": ["question"], "properties": {"question": {"type": "string"}}}),
    });
    specs
}

/// Runs `task` (after `history`, the session so far) until it ends, with
/// `ladder[0]` first and each next model when [`Watch`] says so; past the
/// last one, den asks the user. [`Controls`] steer it: stopping cancels the
/// model call or command under way at once (a call cut short is answered
/// "cancelled by the user", so the session's history stays valid), and
/// interrupts act before the next model call.
pub async fn run(
    ladder: &[&dyn ChatModel],
    tools: &Tools,
    config: &RunConfig,
    history: Vec<ChatMessage>,
    task: &str,
    progress: &dyn Progress,
    controls: &Controls,
) -> Result<Report, RunError> {
    let stop = controls.stopped();
    tools.git.checkout(&config.branch, &config.base).await.map_err(RunError::Git)?;
    let mut messages = history;
    messages.push(ChatMessage::user(None, task));
    let mut report = Report {
        end: End::OutOfTurns,
        turns: 0,
        usage: Usage::default(),
        calls: vec![],
        messages: vec![],
        diffstat: String::new(),
        confidence: vec![],
        escalations: vec![],
    };
    let specs = loop_tools();
    let mut watch = Watch::default();
    let mut rung = 0;
    let began = std::time::Instant::now();
    while report.turns < config.max_turns {
        let spent = report.usage.input_tokens + report.usage.output_tokens;
        let limit = if began.elapsed() >= config.wall_time {
            Some(Limit::WallTime)
        } else if config.token_budget > 0 && spent >= config.token_budget {
            Some(Limit::Tokens)
        } else {
            None
        };
        if let Some(limit) = limit {
            report.end = End::Aborted(limit);
            break;
        }
        for interrupt in controls.take() {
            match interrupt {
                Interrupt::Clarify(text) => messages.push(ChatMessage::user(None, format!("Clarification: {text}"))),
                Interrupt::Retry => drop_last_turn(&mut messages),
                Interrupt::Wrong => watch.correction(),
                Interrupt::Escalate => {
                    if let (Some(from), Some(to)) = (ladder.get(rung), ladder.get(rung + 1)) {
                        let (from, to) = (from.name().to_owned(), to.name().to_owned());
                        report.escalations.push(Escalation { turn: report.turns, from, to, reason: Reason::Asked });
                        rung += 1;
                        watch = Watch::default();
                    }
                }
            }
        }
        report.turns += 1;
        let request = ChatRequest {
            tools: specs.clone(),
            messages: messages.clone(),
            max_tokens: config.max_tokens,
            ..ChatRequest::simple(SYSTEM, "")
        };
        let model = *ladder.get(rung).ok_or(RunError::NoModel)?;
        let asked = async { collect_turn(model.stream(&request).await?).await };
        let turn = tokio::select! {
            biased;
            () = stop.cancelled() => {
                report.end = End::Stopped;
                report.messages = messages;
                return Ok(report);
            }
            () = tokio::time::sleep(config.wall_time.saturating_sub(began.elapsed())) => {
                report.end = End::Aborted(Limit::WallTime);
                report.messages = messages;
                return Ok(report);
            }
            turn = asked => turn.map_err(RunError::Model)?,
        };
        add_usage(&mut report.usage, turn.usage);
        messages.push(ChatMessage::assistant_calls(turn.text.clone(), turn.calls.clone()));
        if turn.calls.is_empty() {
            let nudge = if turn.finish == FinishReason::Length {
                "You were cut off. Go on."
            } else {
                "Use the tools; call finish when the task is done."
            };
            messages.push(ChatMessage::user(None, nudge));
            continue;
        }
        let mut results = Vec::new();
        for call in &turn.calls {
            progress.calling(report.turns, config.max_turns, &call.name, &call.input);
            match call.name.as_str() {
                "finish" => {
                    report.end = finish(tools, config, &call.input, &mut report).await?;
                    report.messages = messages;
                    return Ok(report);
                }
                "ask_user" => {
                    let question = call.input["question"].as_str().unwrap_or("What should I do next?").to_owned();
                    // The answer comes as the next user message; the call itself is answered now.
                    messages.push(ChatMessage::results(vec![ToolResult::ok(&call.id, "asked; the answer follows")]));
                    report.end = End::AskedUser { question };
                    report.messages = messages;
                    return Ok(report);
                }
                name => {
                    let called = tools.call(name, &call.input);
                    let outcome = tokio::select! {
                        biased;
                        () = stop.cancelled() => None,
                        outcome = called => Some(outcome),
                    };
                    let Some(outcome) = outcome else {
                        // This call and any after it: cancelled, each answered.
                        let answered: Vec<&str> = results.iter().map(|r: &ToolResult| r.call_id.as_str()).collect();
                        let cancelled: Vec<ToolResult> = turn
                            .calls
                            .iter()
                            .filter(|c| !answered.contains(&c.id.as_str()))
                            .map(|c| ToolResult::error(&c.id, "cancelled by the user"))
                            .collect();
                        results.extend(cancelled);
                        messages.push(ChatMessage::results(results));
                        report.end = End::Stopped;
                        report.messages = messages;
                        return Ok(report);
                    };
                    watch.call(name, &call.input, outcome.ok, &outcome.full);
                    results.push(if outcome.ok {
                        ToolResult::ok(&call.id, &outcome.shown)
                    } else {
                        ToolResult::error(&call.id, &outcome.shown)
                    });
                    report.calls.push(CallRecord { tool: name.to_owned(), input: call.input.clone(), outcome });
                }
            }
        }
        messages.push(ChatMessage::results(results));
        let (confidence, reason) = watch.end_turn(&turn.text, None);
        report.confidence.push(confidence);
        if let Some(reason) = reason {
            if let Some(next) = ladder.get(rung + 1) {
                let from = model.name().to_owned();
                report.escalations.push(Escalation { turn: report.turns, from, to: next.name().to_owned(), reason });
                rung += 1;
            } else {
                // The top of the ladder: the user decides.
                report.end =
                    End::AskedUser { question: format!("I am not getting anywhere ({reason}). What should I try?") };
                report.messages = messages;
                return Ok(report);
            }
        }
    }
    report.messages = messages;
    Ok(report)
}

/// Removes the model's last turn and the results of its calls (`retry`).
fn drop_last_turn(messages: &mut Vec<ChatMessage>) {
    if let Some(last) = messages.iter().rposition(|m| m.role == den_llm::Role::Assistant) {
        messages.truncate(last);
    }
}

async fn finish(tools: &Tools, config: &RunConfig, input: &Value, report: &mut Report) -> Result<End, RunError> {
    let summary = input["summary"].as_str().unwrap_or("done").trim().to_owned();
    let confidence = u8::try_from(input["confidence"].as_u64().unwrap_or(50).min(100)).unwrap_or(50);
    let title: String = summary.lines().next().unwrap_or("den's changes").chars().take(72).collect();
    let commit = tools.git.commit_all(&format!("{title}\n\n{summary}\n")).await.map_err(RunError::Git)?;
    if let Some(c) = &commit
        && tools.git.run(&["rev-parse", "--verify", "--quiet", &config.base]).await.is_ok()
    {
        report.diffstat = tools.git.diffstat(&config.base, c).await.map_err(RunError::Git)?;
    }
    Ok(End::Finished { summary, confidence, commit })
}

fn add_usage(total: &mut Usage, u: Usage) {
    total.input_tokens += u.input_tokens;
    total.output_tokens += u.output_tokens;
    total.cache_read_tokens += u.cache_read_tokens;
}

/// Why a run stopped before it ended.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The model failed (after the resilience layer's retries).
    #[error("the model failed: {0}")]
    Model(den_llm::LlmError),
    /// den's git failed.
    #[error("git: {0}")]
    Git(ToolError),
    /// No model to ask.
    #[error("no model is configured for the agent")]
    NoModel,
}
