//! The status module: checks from Discord that den is alive and well.
//!
//! - `/ping` answers at once (the fast path alone).
//! - `/status` is deferred; a job reads the queues and finishes the answer
//!   (the whole path: ingress, queue, worker, egress).
//! - `!ping` in a channel is answered with a reply by a job.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use den_core::{Clock, Job};
use den_discord::events::{InboundInteraction, InboundMessage};
use den_discord::router::finish_interaction;
use den_discord::{CommandSpec, Egress, IngressCx, InteractionRef, Module, Reaction};
use den_storage::Queue;
use den_worker::{JobContext, JobError, JobHandler};
use serde_json::json;

/// Job kind that answers `!ping`.
pub const PONG: &str = "status.pong";
/// Job kind that finishes `/status`.
pub const REPORT: &str = "status.report";

/// The status module.
pub struct StatusModule {
    egress: Arc<Egress>,
    queue: Arc<dyn Queue>,
    clock: Arc<dyn Clock>,
    started: Instant,
}

impl StatusModule {
    /// A module answering through `egress` and reporting on `queue`'s queues.
    pub fn new(egress: Arc<Egress>, queue: Arc<dyn Queue>, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self { egress, queue, clock, started: Instant::now() })
    }

    async fn report(&self) -> String {
        let mut lines =
            vec![format!("den {} is up ({} s).", env!("CARGO_PKG_VERSION"), self.started.elapsed().as_secs())];
        match self.queue.list_queues().await {
            Ok(specs) => {
                for spec in specs {
                    if let Ok(d) = self.queue.depth(&spec.name).await {
                        lines.push(format!(
                            "`{}`: {} waiting, {} running, {} delayed",
                            spec.name, d.visible, d.in_flight, d.delayed
                        ));
                    }
                }
            }
            Err(e) => lines.push(format!("queues unavailable: {e}")),
        }
        lines.join("\n")
    }
}

#[async_trait]
impl Module for StatusModule {
    fn name(&self) -> &'static str {
        "status"
    }

    fn commands(&self) -> Vec<CommandSpec> {
        vec![
            CommandSpec::new("ping", "Check that den answers"),
            CommandSpec::new("status", "Show den's version, uptime and queues"),
        ]
    }

    async fn on_message(&self, message: &InboundMessage, _cx: &IngressCx) -> Vec<Job> {
        if message.content.trim() != "!ping" {
            return Vec::new();
        }
        let payload = json!({"channel_id": message.channel_id, "message_id": message.id});
        let mut job = Job::builder(PONG, self.clock.now()).payload(payload).build();
        job.guild = message.guild_id;
        vec![job]
    }

    async fn on_interaction(&self, i: &InboundInteraction, _cx: &IngressCx) -> Option<Reaction> {
        match i.command.as_deref()? {
            "ping" => Some(Reaction::reply("Pong!", true)),
            "status" => Some(Reaction::defer(Job::builder(REPORT, self.clock.now()).payload(json!({})).build(), true)),
            _ => None,
        }
    }

    fn handlers(self: Arc<Self>) -> Vec<(String, Arc<dyn JobHandler>)> {
        let jobs: Arc<dyn JobHandler> = Arc::new(StatusJobs(self));
        vec![(PONG.into(), jobs.clone()), (REPORT.into(), jobs)]
    }
}

/// Runs the module's jobs.
pub struct StatusJobs(pub Arc<StatusModule>);

#[async_trait]
impl JobHandler for StatusJobs {
    async fn run(&self, job: &Job, _cx: &JobContext) -> Result<(), JobError> {
        let m = &self.0;
        match job.kind.as_str() {
            PONG => {
                let channel = job.payload["channel_id"].as_u64().ok_or_else(|| JobError::permanent("no channel_id"))?;
                let reply_to = job.payload["message_id"].as_u64();
                m.egress
                    .send_text(channel, "pong", reply_to)
                    .await
                    .map_err(|e| JobError::retry(e.to_string()).with_source(e))?;
                Ok(())
            }
            REPORT => {
                let iref =
                    InteractionRef::from_job(job).ok_or_else(|| JobError::permanent("no interaction in payload"))?;
                let text = m.report().await;
                finish_interaction(&m.egress, &*m.clock, &iref, &text)
                    .await
                    .map_err(|e| JobError::retry(e.to_string()).with_source(e))
            }
            other => Err(JobError::permanent(format!("status has no job {other}"))),
        }
    }
}
