//! What a run leaves in den's store: its record, its turn log (kept 30 days),
//! and its lifecycle events on the `agent-events` queue (with a dead-letter
//! queue). Every event has an id made from what it says, and is sent with
//! that id as its dedup key: writing a report again (a redelivered job) sends
//! each event once.

use std::sync::Arc;
use std::time::Duration;

use den_core::Clock;
use den_storage::{DeadLetterSpec, OutgoingMessage, Put, Queue, QueueSpec, Store, StoreResult, Table, TableSpec};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::run::{CallRecord, End, Report};

/// The events queue.
pub const EVENTS: &str = "agent-events";
/// The job kind an event travels as on [`EVENTS`].
pub const EVENT: &str = "agent.event";
/// How long turn logs are kept.
pub const TURN_LOG_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A run began.
    ExecutionStarted,
    /// A turn ended.
    TurnCompleted,
    /// The run moved to the next model.
    ModelEscalated,
    /// The model finished.
    ExecutionCompleted,
    /// A limit, a stop or a question ended the run early.
    ExecutionAborted,
    /// den committed.
    CommitCreated,
    /// The branch was merged.
    BranchMerged,
    /// The branch was dropped.
    BranchRejected,
}

impl EventKind {
    /// Its name, as events and metrics say it (`turn_completed`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::ExecutionStarted => "execution_started",
            Self::TurnCompleted => "turn_completed",
            Self::ModelEscalated => "model_escalated",
            Self::ExecutionCompleted => "execution_completed",
            Self::ExecutionAborted => "execution_aborted",
            Self::CommitCreated => "commit_created",
            Self::BranchMerged => "branch_merged",
            Self::BranchRejected => "branch_rejected",
        }
    }
}

/// The events queue: kept 4 days, dead-lettered after 5 failed deliveries to the sink.
#[must_use]
pub fn events_queue() -> QueueSpec {
    let day = Duration::from_secs(24 * 3600);
    QueueSpec {
        name: EVENTS.into(),
        visibility_timeout: Duration::from_secs(60),
        retention: 4 * day,
        dead_letter: Some(DeadLetterSpec { name: format!("{EVENTS}-dlq"), max_receive_count: 5, retention: 14 * day }),
    }
}

/// A run's records, in den's store.
#[derive(Clone)]
pub struct Records {
    runs: Arc<dyn Table>,
    turns: Arc<dyn Table>,
    queue: Arc<dyn Queue>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records").finish_non_exhaustive()
    }
}

impl Records {
    /// The agent's tables and its events queue (made when missing).
    pub async fn open(store: &dyn Store, clock: Arc<dyn Clock>) -> StoreResult<Self> {
        let runs = store.table(TableSpec::new("agent_runs")).await?;
        let turns = store.table(TableSpec::new("agent_turns")).await?;
        let queue = store.queue();
        queue.create_queue(&events_queue()).await?;
        Ok(Self { runs, turns, queue, clock })
    }

    /// Sends one event; the same `(run, kind, n)` is sent once. An event
    /// travels as a den job of kind [`EVENT`], so a worker pool on the
    /// events queue hands it to the sink (retries and the DLQ included).
    pub async fn publish(&self, session: &str, run: &str, kind: EventKind, n: u32, data: Value) -> StoreResult<()> {
        let id = format!("{run}:{}:{n}", kind.name());
        let event = json!({"id": id, "kind": kind, "session": session, "run": run,
            "at_ms": self.clock.now().as_millis(), "data": data});
        let job = den_core::Job::builder(EVENT, self.clock.now()).payload(event).dedup_key(id).build();
        let body = serde_json::to_string(&job).unwrap_or_default();
        let message = OutgoingMessage { dedup_key: job.dedup_key.clone(), ..OutgoingMessage::new(body) };
        self.queue.send_batch(EVENTS, vec![message]).await.map(|_| ())
    }

    /// Writes a finished run: a turn log line per call, its record and its events.
    pub async fn report(&self, session: &str, run: &str, report: &Report) -> StoreResult<()> {
        for (i, call) in report.calls.iter().enumerate() {
            self.log_call(run, i, call).await?;
        }
        self.finish(session, run, report).await
    }

    /// Writes turn log line `n` of `run` (the same `n` again replaces it).
    pub async fn log_call(&self, run: &str, n: usize, call: &CallRecord) -> StoreResult<()> {
        let mut line = Map::new();
        line.insert("tool".into(), call.tool.clone().into());
        line.insert("input".into(), call.input.clone());
        line.insert("ok".into(), call.outcome.ok.into());
        line.insert("output_bytes".into(), call.outcome.full.len().into());
        line.insert("output_digest".into(), format!("{:016x}", digest(&call.outcome.full)).into());
        line.insert("shown".into(), crate::output::cut(&call.outcome.shown, 600).into());
        let expires = self.clock.now().plus(TURN_LOG_TTL);
        self.turns.put(Put::new(run, format!("{n:06}"), line).expires_at(expires)).await.map(|_| ())
    }

    /// The last `count` turn log lines of `run`, oldest first.
    pub async fn calls(&self, run: &str, count: usize) -> StoreResult<Vec<Map<String, Value>>> {
        let page = self.turns.query(den_storage::Query::pk(run).reverse().limit(count.clamp(1, 100))).await?;
        Ok(page.items.into_iter().rev().map(|i| i.attrs).collect())
    }

    /// Writes a finished run's record and its events (its calls were logged as they ran).
    pub async fn finish(&self, session: &str, run: &str, report: &Report) -> StoreResult<()> {
        let (status, mut events) = match &report.end {
            End::Finished { summary, confidence, commit } => {
                let mut e =
                    vec![(EventKind::ExecutionCompleted, json!({"summary": summary, "confidence": confidence}))];
                if let Some(c) = commit {
                    e.push((EventKind::CommitCreated, json!({"commit": c})));
                }
                ("completed", e)
            }
            End::Aborted(limit) => {
                ("aborted", vec![(EventKind::ExecutionAborted, json!({"reason": limit.to_string()}))])
            }
            End::Stopped => ("aborted", vec![(EventKind::ExecutionAborted, json!({"reason": "stopped by the user"}))]),
            End::Failed { reason } => ("failed", vec![(EventKind::ExecutionAborted, json!({"reason": reason}))]),
            End::OutOfTurns => ("aborted", vec![(EventKind::ExecutionAborted, json!({"reason": "max turns"}))]),
            End::AskedUser { question } => (
                "waiting",
                vec![(EventKind::ExecutionAborted, json!({"reason": "asked the user", "question": question}))],
            ),
        };
        let mut attrs = Map::new();
        attrs.insert("status".into(), status.into());
        attrs.insert("turns".into(), report.turns.into());
        attrs.insert("tokens".into(), (report.usage.input_tokens + report.usage.output_tokens).into());
        attrs.insert("escalations".into(), report.escalations.len().into());
        self.runs.put(Put::new(session, run, attrs)).await?;
        for e in &report.escalations {
            let data = json!({"turn": e.turn, "from": e.from, "to": e.to, "reason": e.reason.to_string()});
            events.push((EventKind::ModelEscalated, data));
        }
        let mut counts: std::collections::HashMap<EventKind, u32> = std::collections::HashMap::new();
        for (kind, data) in events {
            let n = counts.entry(kind).or_default();
            self.publish(session, run, kind, *n, data).await?;
            *n += 1;
        }
        Ok(())
    }
}

fn digest(text: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}
