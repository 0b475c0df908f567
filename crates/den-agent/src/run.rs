//! The loop: ask the model, run the tools it calls, send the results back,
//! until it calls `finish` (den then commits on the session's branch), asks
//! the user something, or the run reaches its turn limit.

use crate::controls::{Controls, Interrupt};
use den_llm::{ChatMessage, ChatModel, ChatRequest, FinishReason, ToolCall, ToolResult, ToolSpec, Usage, collect_turn};
use serde::{Deserialize, Serialize};
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Limit {
    /// `wall_time` passed.
    WallTime,
    /// `token_budget` was spent.
    Tokens,
    /// The server's tokens for the day were spent.
    ServerBudget,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::WallTime => "the run's time limit",
            Self::Tokens => "the run's token budget",
            Self::ServerBudget => "the server's daily token budget",
        })
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The model or den's git kept failing; nothing was committed.
    Failed {
        /// What failed, in words.
        reason: String,
    },
}

/// One tool call of a turn, for the turn log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CallRecord {
    /// The tool.
    pub tool: String,
    /// Its input.
    pub input: Value,
    /// What it answered.
    pub outcome: Outcome,
}

/// A move to the next model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

fn loop_tools(tools: &Tools) -> Vec<ToolSpec> {
    let mut specs = tools.offered();
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

/// A run between turns: everything needed to go on with it in another job,
/// another process or after a crash. Saved after the model answers and after
/// every tool call, so a resumed run never repeats a call whose result was kept.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunState {
    /// Turns taken.
    pub turns: u32,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Tokens used.
    pub usage: Usage,
    /// den's confidence after each turn.
    pub confidence: Vec<u8>,
    /// Moves to stronger models.
    pub escalations: Vec<Escalation>,
    /// The model in use: an index into the ladder.
    pub rung: usize,
    /// What the escalation rules have seen.
    pub watch: Watch,
    /// When the run began (ms since the epoch).
    pub began_ms: u64,
    /// Every call so far (outputs as the model saw them).
    pub calls: Vec<CallRecord>,
    /// The model's last turn while its calls are being run: the calls and the results so far.
    pub pending: Option<Pending>,
    /// How it ended, once it has.
    pub end: Option<End>,
    /// `git diff --stat` of the commit, when there is one.
    pub diffstat: String,
    /// This run's turn limit, when it has its own (else the config's).
    #[serde(default)]
    pub max_turns: Option<u32>,
}

/// A turn whose calls are being run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pending {
    /// What the model said with its calls.
    pub text: String,
    /// The calls.
    pub calls: Vec<ToolCall>,
    /// Results of the calls run so far, in order.
    pub results: Vec<ToolResult>,
}

impl RunState {
    /// A run of `task` after `history`, beginning at `now_ms`.
    #[must_use]
    pub fn start(history: Vec<ChatMessage>, task: &str, now_ms: u64) -> Self {
        let mut messages = history;
        messages.push(ChatMessage::user(None, task));
        Self {
            turns: 0,
            messages,
            usage: Usage::default(),
            confidence: vec![],
            escalations: vec![],
            rung: 0,
            watch: Watch::default(),
            began_ms: now_ms,
            calls: vec![],
            pending: None,
            end: None,
            diffstat: String::new(),
            max_turns: None,
        }
    }

    /// The report of the run so far.
    #[must_use]
    pub fn report(&self) -> Report {
        Report {
            end: self.end.clone().unwrap_or(End::OutOfTurns),
            turns: self.turns,
            usage: self.usage,
            calls: self.calls.clone(),
            messages: self.messages.clone(),
            diffstat: self.diffstat.clone(),
            confidence: self.confidence.clone(),
            escalations: self.escalations.clone(),
        }
    }

    /// Ends the run as failed: calls of a turn cut short are answered `why`,
    /// so the session's history stays one a provider accepts.
    pub fn fail(&mut self, why: &str) {
        if let Some(p) = self.pending.take() {
            let mut results = p.results;
            for c in p.calls.iter().skip(results.len()) {
                results.push(ToolResult::error(&c.id, format!("not run: {why}")));
            }
            self.messages.push(ChatMessage::results(results));
        }
        self.end = Some(End::Failed { reason: why.to_owned() });
    }

    fn ended(&mut self, end: End) -> Option<End> {
        self.end = Some(end.clone());
        Some(end)
    }
}

/// Told each time a run's state is worth keeping: after the model answers and
/// after each tool call (`call` is then the call just made).
#[async_trait::async_trait]
pub trait Checkpoint: Send + Sync {
    /// Keeps `state`; an error ends the step (the caller retries it).
    async fn save(&self, state: &RunState, call: Option<&CallRecord>) -> Result<(), String>;
}

/// Keeps nothing: a run in one process from start to end.
#[derive(Debug)]
pub struct NoCheckpoint;

#[async_trait::async_trait]
impl Checkpoint for NoCheckpoint {
    async fn save(&self, _: &RunState, _: Option<&CallRecord>) -> Result<(), String> {
        Ok(())
    }
}

/// What a step needs besides the state.
pub struct Step<'a> {
    /// Models, weakest first.
    pub ladder: &'a [&'a dyn ChatModel],
    /// The workspace's tools.
    pub tools: &'a Tools,
    /// Limits and branches.
    pub config: &'a RunConfig,
    /// Told about each call.
    pub progress: &'a dyn Progress,
    /// Stop and interrupts.
    pub controls: &'a Controls,
    /// Where the state is kept.
    pub checkpoint: &'a dyn Checkpoint,
    /// Now, in ms since the epoch (for the wall-time limit).
    pub now_ms: u64,
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
    tools.git.checkout(&config.branch, &config.base).await.map_err(RunError::Git)?;
    let mut state = RunState::start(history, task, now_ms());
    loop {
        let step = Step { ladder, tools, config, progress, controls, checkpoint: &NoCheckpoint, now_ms: now_ms() };
        if step.turn(&mut state).await?.is_some() {
            return Ok(state.report());
        }
    }
}

/// Milliseconds since the epoch.
#[must_use]
pub fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

impl Step<'_> {
    /// One turn of `state`: a model call and its tool calls, or the rest of a
    /// turn a crash cut short. Returns how the run ended, once it has. The
    /// workspace must be on the run's branch.
    pub async fn turn(&self, state: &mut RunState) -> Result<Option<End>, RunError> {
        if let Some(end) = &state.end {
            return Ok(Some(end.clone()));
        }
        let config = self.config;
        if state.pending.is_none() {
            if let Some(end) = self.before_model(state) {
                return Ok(state.ended(end));
            }
            let Some(pending) = self.ask_model(state).await? else {
                return Ok(state.end.clone());
            };
            state.pending = Some(pending);
            self.save(state, None).await?;
        }
        let Some(pending) = state.pending.clone() else { return Ok(None) };
        for call in pending.calls.iter().skip(pending.results.len()) {
            self.progress.calling(state.turns, self.max_turns(state), &call.name, &call.input);
            match call.name.as_str() {
                "finish" => {
                    let end = finish(self.tools, config, &call.input, state).await?;
                    self.close_turn(state, &call.id, "done; den committed your changes");
                    return Ok(state.ended(end));
                }
                "ask_user" => {
                    let question = call.input["question"].as_str().unwrap_or("What should I do next?").to_owned();
                    // The answer comes as the next user message; the call itself is answered now.
                    self.close_turn(state, &call.id, "asked; the answer follows");
                    return Ok(state.ended(End::AskedUser { question }));
                }
                name => {
                    let called = self.tools.call(name, &call.input);
                    let outcome = tokio::select! {
                        biased;
                        () = self.controls.stopped().cancelled() => None,
                        outcome = called => Some(outcome),
                    };
                    let Some(outcome) = outcome else {
                        // This call and any after it: cancelled, each answered.
                        let answered = state.pending.as_ref().map_or(0, |p| p.results.len());
                        for c in pending.calls.iter().skip(answered) {
                            self.answer(state, ToolResult::error(&c.id, "cancelled by the user"));
                        }
                        return Ok(state.ended(End::Stopped));
                    };
                    state.watch.call(name, &call.input, outcome.ok, &outcome.full);
                    let result = if outcome.ok {
                        ToolResult::ok(&call.id, &outcome.shown)
                    } else {
                        ToolResult::error(&call.id, &outcome.shown)
                    };
                    let record = CallRecord { tool: name.to_owned(), input: call.input.clone(), outcome };
                    state.calls.push(record.clone());
                    if let Some(p) = state.pending.as_mut() {
                        p.results.push(result);
                    }
                    self.save(state, Some(&record)).await?;
                }
            }
        }
        let Some(done) = state.pending.take() else { return Ok(None) };
        state.messages.push(ChatMessage::results(done.results));
        let (confidence, reason) = state.watch.end_turn(&done.text, None);
        state.confidence.push(confidence);
        if let Some(reason) = reason {
            if let Some(next) = self.ladder.get(state.rung + 1) {
                let from = self.ladder.get(state.rung).map(|m| m.name().to_owned()).unwrap_or_default();
                let to = next.name().to_owned();
                state.escalations.push(Escalation { turn: state.turns, from, to, reason });
                state.rung += 1;
            } else {
                // The top of the ladder: the user decides.
                let question = format!("I am not getting anywhere ({reason}). What should I try?");
                return Ok(state.ended(End::AskedUser { question }));
            }
        }
        if state.turns >= self.max_turns(state) {
            return Ok(state.ended(End::OutOfTurns));
        }
        Ok(None)
    }

    /// The run's turn limit.
    fn max_turns(&self, state: &RunState) -> u32 {
        state.max_turns.unwrap_or(self.config.max_turns)
    }

    /// Ends the turn at call `id` (`finish`, `ask_user`): it is answered
    /// `text`, and calls after it are answered as not run, so the history
    /// stays one a provider accepts when the session goes on.
    fn close_turn(&self, state: &mut RunState, id: &str, text: &str) {
        self.answer(state, ToolResult::ok(id, text));
        while let Some(next) = state.pending.as_ref().and_then(|p| p.calls.get(p.results.len())).map(|c| c.id.clone()) {
            self.answer(state, ToolResult::error(&next, "not run: the turn ended before it"));
        }
    }

    /// Answers one of the pending calls and, when it was the last, closes the turn in the history.
    fn answer(&self, state: &mut RunState, result: ToolResult) {
        if let Some(mut p) = state.pending.take() {
            p.results.push(result);
            if p.results.len() < p.calls.len() {
                state.pending = Some(p);
            } else {
                state.messages.push(ChatMessage::results(p.results));
            }
        }
    }

    async fn save(&self, state: &RunState, call: Option<&CallRecord>) -> Result<(), RunError> {
        self.checkpoint.save(state, call).await.map_err(RunError::Checkpoint)
    }

    /// Limits and interrupts, before a model call: how the run ends, if it must.
    fn before_model(&self, state: &mut RunState) -> Option<End> {
        let config = self.config;
        if state.turns >= self.max_turns(state) {
            return Some(End::OutOfTurns);
        }
        let spent = state.usage.input_tokens + state.usage.output_tokens;
        if self.now_ms.saturating_sub(state.began_ms) >= millis(config.wall_time) {
            return Some(End::Aborted(Limit::WallTime));
        }
        if config.token_budget > 0 && spent >= config.token_budget {
            return Some(End::Aborted(Limit::Tokens));
        }
        if self.controls.stopped().is_cancelled() {
            return Some(End::Stopped);
        }
        for interrupt in self.controls.take() {
            match interrupt {
                Interrupt::Clarify(text) => {
                    state.messages.push(ChatMessage::user(None, format!("Clarification: {text}")));
                }
                Interrupt::Retry => drop_last_turn(&mut state.messages),
                Interrupt::Wrong => state.watch.correction(),
                Interrupt::Escalate => {
                    if let (Some(from), Some(to)) = (self.ladder.get(state.rung), self.ladder.get(state.rung + 1)) {
                        let (from, to) = (from.name().to_owned(), to.name().to_owned());
                        state.escalations.push(Escalation { turn: state.turns, from, to, reason: Reason::Asked });
                        state.rung += 1;
                        state.watch = Watch::default();
                    }
                }
            }
        }
        None
    }

    /// One model call: the turn's calls, or `None` when the run ended or the
    /// model called nothing (then it is nudged and the turn is over).
    async fn ask_model(&self, state: &mut RunState) -> Result<Option<Pending>, RunError> {
        let config = self.config;
        state.turns += 1;
        let request = ChatRequest {
            tools: loop_tools(self.tools),
            messages: state.messages.clone(),
            max_tokens: config.max_tokens,
            ..ChatRequest::simple(SYSTEM, "")
        };
        let model = *self.ladder.get(state.rung).ok_or(RunError::NoModel)?;
        let asked = async { collect_turn(model.stream(&request).await?).await };
        let left = millis(config.wall_time).saturating_sub(self.now_ms.saturating_sub(state.began_ms));
        let turn = tokio::select! {
            biased;
            () = self.controls.stopped().cancelled() => {
                state.end = Some(End::Stopped);
                return Ok(None);
            }
            () = tokio::time::sleep(std::time::Duration::from_millis(left)) => {
                state.end = Some(End::Aborted(Limit::WallTime));
                return Ok(None);
            }
            turn = asked => turn.map_err(RunError::Model)?,
        };
        add_usage(&mut state.usage, turn.usage);
        state.messages.push(ChatMessage::assistant_calls(turn.text.clone(), turn.calls.clone()));
        if turn.calls.is_empty() {
            let nudge = if turn.finish == FinishReason::Length {
                "You were cut off. Go on."
            } else {
                "Use the tools; call finish when the task is done."
            };
            state.messages.push(ChatMessage::user(None, nudge));
            if state.turns >= self.max_turns(state) {
                state.end = Some(End::OutOfTurns);
            }
            return Ok(None);
        }
        Ok(Some(Pending { text: turn.text, calls: turn.calls, results: vec![] }))
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Removes the model's last turn and the results of its calls (`retry`).
fn drop_last_turn(messages: &mut Vec<ChatMessage>) {
    if let Some(last) = messages.iter().rposition(|m| m.role == den_llm::Role::Assistant) {
        messages.truncate(last);
    }
}

async fn finish(tools: &Tools, config: &RunConfig, input: &Value, state: &mut RunState) -> Result<End, RunError> {
    let summary = input["summary"].as_str().unwrap_or("done").trim().to_owned();
    let confidence = u8::try_from(input["confidence"].as_u64().unwrap_or(50).min(100)).unwrap_or(50);
    let title: String = summary.lines().next().unwrap_or("den's changes").chars().take(72).collect();
    let commit = tools.git.commit_all(&format!("{title}\n\n{summary}\n")).await.map_err(RunError::Git)?;
    if let Some(c) = &commit
        && tools.git.run(&["rev-parse", "--verify", "--quiet", &config.base]).await.is_ok()
    {
        state.diffstat = tools.git.diffstat(&config.base, c).await.map_err(RunError::Git)?;
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
    /// The run's state could not be kept.
    #[error("could not save the run: {0}")]
    Checkpoint(String),
}
