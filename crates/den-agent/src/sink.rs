//! Where the agent's events go: a worker pool on the `agent-events` queue
//! hands each to the [`EventSink`], which logs it, counts it in den's
//! metrics and, when configured, POSTs it to a webhook. A webhook that fails
//! is tried again with the pool's backoff, then the event waits in the DLQ.

use std::time::Duration;

use async_trait::async_trait;
use den_core::Job;
use den_ops::Metrics;
use den_worker::{JobContext, JobError, JobHandler};

/// Delivers events.
#[derive(Clone, Debug)]
pub struct EventSink {
    metrics: Metrics,
    webhook: Option<String>,
    http: reqwest::Client,
}

impl EventSink {
    /// A sink counting in `metrics` and POSTing to `webhook` when given.
    #[must_use]
    pub fn new(metrics: Metrics, webhook: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self { metrics, webhook, http }
    }
}

fn count(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

#[async_trait]
impl JobHandler for EventSink {
    async fn run(&self, job: &Job, _cx: &JobContext) -> Result<(), JobError> {
        let event = &job.payload;
        let kind = event["kind"].as_str().ok_or_else(|| JobError::permanent("an event without a kind"))?;
        let data = &event["data"];
        tracing::info!(
            kind,
            id = event["id"].as_str().unwrap_or_default(),
            run = event["run"].as_str().unwrap_or_default(),
            "agent event"
        );
        if let Some(url) = &self.webhook {
            let answer = self
                .http
                .post(url)
                .json(event)
                .send()
                .await
                .map_err(|e| JobError::retry(e.without_url().to_string()))?;
            if !answer.status().is_success() {
                return Err(JobError::retry(format!("the events webhook answered {}", answer.status())));
            }
        }
        // Counted once delivered, so a retried delivery does not count twice.
        self.metrics.agent_event(kind);
        if kind == "turn_completed" {
            self.metrics.agent_tool_calls(count(data, "calls"), count(data, "failures"), count(data, "killed"));
            self.metrics.agent_tokens(count(data, "tokens"));
        }
        Ok(())
    }
}
