//! Posts made exactly once across job redeliveries.
//!
//! A job that posts may die after Discord created the message and before den
//! learned its id; the redelivered job must not post again. Before posting,
//! den records its intent (when, and the exact text); after, the message ids.
//! A later delivery that finds an intent without ids looks in the channel for
//! that text from that poster since that moment: found, it is the post; not
//! found, it posts. The text is dropped from the record once the post is done.

use std::sync::Arc;

use den_core::Timestamp;
use den_storage::{Condition, Put, StoreErrorKind, Table, TableSpec};
use serde_json::{Map, Value, json};

use crate::egress::{DiscordError, DiscordResult, Egress, Poster};

/// The table's declaration.
#[must_use]
pub fn table_spec() -> TableSpec {
    TableSpec::new("discord_posts")
}

/// How long a post is remembered: longer than any redelivery of its job.
const KEEP_MS: i64 = 15 * 86_400_000;

/// Whether a post happened now or was found from an earlier delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Posted {
    /// Posted by this call; the message ids.
    Now(Vec<u64>),
    /// An earlier delivery posted it; its ids (the first message's, when it was found by looking).
    Before(Vec<u64>),
}

impl Posted {
    /// The message ids.
    #[must_use]
    pub fn ids(&self) -> &[u64] {
        match self {
            Posted::Now(ids) | Posted::Before(ids) => ids,
        }
    }
}

/// One post a job makes: its key (the job and what it posts), where, and as whom.
#[derive(Clone, Copy, Debug)]
pub struct Post<'a> {
    /// Unique per post of a job, the same on every delivery of it.
    pub key: &'a str,
    /// The channel.
    pub channel: u64,
    /// Who posts it.
    pub poster: &'a Poster,
}

/// The record of posts by key (a job id and what it posts).
#[derive(Clone, Debug)]
pub struct PostLedger {
    table: Arc<dyn Table>,
}

impl PostLedger {
    /// A ledger over `table` (declared by [`table_spec`]).
    #[must_use]
    pub fn new(table: Arc<dyn Table>) -> Self {
        Self { table }
    }

    fn store_error(e: den_storage::StoreError) -> DiscordError {
        crate::egress::local("post ledger", e.to_string())
    }

    /// Whether `key` was posted, or may have been: `Some` with the ids when
    /// done, or after finding the attempted post in the channel.
    pub async fn earlier(&self, egress: &Egress, post: Post<'_>) -> DiscordResult<Option<Vec<u64>>> {
        let key = post.key;
        let Some(item) = self.table.get(key, "post").await.map_err(Self::store_error)? else { return Ok(None) };
        if let Some(ids) = item.attrs.get("ids").and_then(Value::as_array) {
            return Ok(Some(ids.iter().filter_map(Value::as_u64).collect()));
        }
        let started = Timestamp(item.attrs.get("started").and_then(Value::as_i64).unwrap_or(0));
        let text = item.attrs.get("text").and_then(Value::as_str);
        match egress.find_posted(post.channel, post.poster, text, started).await? {
            Some(id) => {
                tracing::info!(key, message_id = id, "an earlier delivery's post was found in the channel");
                self.done(key, &[id], started).await?;
                Ok(Some(vec![id]))
            }
            None => Ok(None),
        }
    }

    /// Posts `text` once for `key`: `post` runs unless an earlier delivery
    /// posted it (found by [`PostLedger::earlier`]).
    pub async fn once<F, Fut>(
        &self,
        egress: &Egress,
        post: Post<'_>,
        text: &str,
        now: Timestamp,
        send: F,
    ) -> DiscordResult<Posted>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = DiscordResult<Vec<u64>>>,
    {
        let key = post.key;
        if let Some(ids) = self.earlier(egress, post).await? {
            return Ok(Posted::Before(ids));
        }
        // The first piece is what Discord will show first: that is what a later look compares.
        let first = crate::split::split_message(text, crate::split::MAX_MESSAGE_CHARS).into_iter().next();
        let mut attrs = Map::new();
        attrs.insert("started".into(), now.0.into());
        attrs.insert("text".into(), first.unwrap_or_default().into());
        let put = Put::new(key, "post", attrs).expires_at(Timestamp(now.0.saturating_add(KEEP_MS)));
        self.table.put(put).await.map_err(Self::store_error)?;
        let ids = send().await?;
        self.done(key, &ids, now).await?;
        Ok(Posted::Now(ids))
    }

    /// Records the ids of a finished post (and forgets its text).
    async fn done(&self, key: &str, ids: &[u64], started: Timestamp) -> DiscordResult<()> {
        let attrs = json!({"ids": ids, "started": started.0});
        let put = Put::new(key, "post", attrs.as_object().cloned().unwrap_or_default())
            .expires_at(Timestamp(started.0.saturating_add(KEEP_MS)));
        match self.table.put(put.condition(Condition::None)).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == StoreErrorKind::ConditionFailed => Ok(()),
            Err(e) => Err(Self::store_error(e)),
        }
    }
}
