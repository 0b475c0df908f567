use std::sync::Arc;
use std::time::Duration;

use den_core::Job;
use den_ops::Metrics;
use den_storage::{MAX_BATCH, OutgoingMessage, Queue, Sent, StoreError, StoreResult};

/// Sends [`Job`]s to one queue and counts them.
#[derive(Clone, Debug)]
pub struct JobQueue {
    queue: Arc<dyn Queue>,
    name: String,
    metrics: Metrics,
}

impl JobQueue {
    /// A sender to the queue `name`.
    pub fn new(queue: Arc<dyn Queue>, name: impl Into<String>, metrics: Metrics) -> Self {
        Self { queue, name: name.into(), metrics }
    }

    /// The queue's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Enqueues one job; when it returns `Ok` the job is durable.
    pub async fn send(&self, job: &Job) -> StoreResult<Sent> {
        self.send_delayed(job, Duration::ZERO).await
    }

    /// Enqueues one job that becomes visible after `delay`.
    pub async fn send_delayed(&self, job: &Job, delay: Duration) -> StoreResult<Sent> {
        let mut sent = self.send_messages(std::slice::from_ref(job), delay).await?;
        sent.pop().ok_or_else(|| StoreError::new(den_storage::StoreErrorKind::Backend, "send returned nothing"))
    }

    /// Enqueues jobs in batches of [`MAX_BATCH`].
    pub async fn send_all(&self, jobs: &[Job]) -> StoreResult<Vec<Sent>> {
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(MAX_BATCH) {
            out.extend(self.send_messages(chunk, Duration::ZERO).await?);
        }
        Ok(out)
    }

    /// Deletes the jobs of `guild` that carry `person`'s words ([`Job::people`])
    /// from this queue and its dead-letter queue, running or waiting, then
    /// scrubs the store's files; returns how many went. Forgetting a person
    /// uses it: their queued messages are neither acted on nor kept.
    pub async fn forget_person(&self, guild: u64, person: u64) -> StoreResult<u64> {
        let dlq = self
            .queue
            .list_queues()
            .await?
            .into_iter()
            .find(|spec| spec.name == self.name)
            .and_then(|spec| spec.dead_letter.map(|d| d.name));
        let mut gone = 0;
        for queue in std::iter::once(self.name.clone()).chain(dlq) {
            let mut after: Option<String> = None;
            loop {
                let page = self.queue.peek(&queue, 200, after.as_deref()).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.message_id.clone());
                for message in &page {
                    let carries = serde_json::from_str::<Job>(&message.body)
                        .is_ok_and(|job| job.guild == Some(guild) && job.people.contains(&person));
                    if carries && self.queue.delete_message(&queue, &message.message_id).await? {
                        gone += 1;
                    }
                }
            }
        }
        self.queue.scrub().await?;
        Ok(gone)
    }

    async fn send_messages(&self, jobs: &[Job], delay: Duration) -> StoreResult<Vec<Sent>> {
        let messages = jobs
            .iter()
            .map(|job| {
                let body = serde_json::to_string(job).map_err(|e| StoreError::backend("cannot encode job", e))?;
                let mut m = OutgoingMessage::new(body).delay(delay);
                m.dedup_key = job.dedup_key.clone();
                m.group = job.guild.map(|g| g.to_string());
                Ok(m)
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let sent = self.queue.send_batch(&self.name, messages).await?;
        for (job, s) in jobs.iter().zip(&sent) {
            if !s.duplicate {
                self.metrics.job_sent(&self.name, &job.kind);
            }
        }
        Ok(sent)
    }
}
