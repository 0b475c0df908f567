use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Timestamp;

/// The unit of background work: what ingress enqueues and workers run.
///
/// A job is serialised as JSON into a queue message. It may run more than
/// once (delivery is at least once), so handlers make their side effects
/// idempotent, using [`Job::dedup_key`] or stored step state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Unique id of this job, stable across retries.
    pub id: String,
    /// Which handler runs it, for example `personas.reply`.
    pub kind: String,
    /// The Discord guild the job belongs to, when it belongs to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guild: Option<u64>,
    /// Key under which duplicate sends are collapsed by the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
    /// Handler-specific data.
    #[serde(default)]
    pub payload: Value,
    /// The people (user ids) whose words the payload carries, so that
    /// forgetting a person can find and delete their queued jobs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub people: Vec<u64>,
    /// How many times this job has been delivered, counting this delivery
    /// (1 on the first run). Filled in by the worker from the queue.
    #[serde(default)]
    pub attempt: u32,
    /// Correlates the logs of everything this job and its parents did.
    pub trace_id: String,
    /// When the job was created.
    pub created_at: Timestamp,
}

impl Job {
    /// Starts building a job of `kind` created at `now`.
    pub fn builder(kind: impl Into<String>, now: Timestamp) -> JobBuilder {
        let id = uuid::Uuid::new_v4().simple().to_string();
        JobBuilder {
            job: Job {
                trace_id: id.clone(),
                id,
                kind: kind.into(),
                guild: None,
                dedup_key: None,
                payload: Value::Null,
                people: Vec::new(),
                attempt: 0,
                created_at: now,
            },
        }
    }
}

/// Builder for [`Job`].
#[derive(Debug)]
#[must_use]
pub struct JobBuilder {
    job: Job,
}

impl JobBuilder {
    /// Sets the guild.
    pub fn guild(mut self, guild: u64) -> Self {
        self.job.guild = Some(guild);
        self
    }

    /// Sets the dedup key.
    pub fn dedup_key(mut self, key: impl Into<String>) -> Self {
        self.job.dedup_key = Some(key.into());
        self
    }

    /// Sets the payload.
    pub fn payload(mut self, payload: Value) -> Self {
        self.job.payload = payload;
        self
    }

    /// Names the people whose words the payload carries (see [`Job::people`]).
    pub fn people(mut self, people: impl IntoIterator<Item = u64>) -> Self {
        self.job.people = people.into_iter().filter(|p| *p != 0).collect();
        self.job.people.sort_unstable();
        self.job.people.dedup();
        self
    }

    /// Continues the trace of a parent job.
    pub fn trace_id(mut self, trace_id: impl Into<String>) -> Self {
        self.job.trace_id = trace_id.into();
        self
    }

    /// The job.
    #[must_use]
    pub fn build(self) -> Job {
        self.job
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_round_trips_through_json_and_defaults_missing_fields() {
        let job = Job::builder("test.echo", Timestamp(42))
            .guild(7)
            .dedup_key("k")
            .payload(serde_json::json!({"x": 1}))
            .build();
        let text = serde_json::to_string(&job).unwrap();
        assert_eq!(serde_json::from_str::<Job>(&text).unwrap(), job);

        let minimal: Job = serde_json::from_str(r#"{"id":"a","kind":"k","trace_id":"t","created_at":1}"#).unwrap();
        assert_eq!(minimal.guild, None);
        assert_eq!(minimal.payload, Value::Null);
    }
}
