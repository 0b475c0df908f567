//! The personas' runtime state in den's store: which messages personas
//! posted, who spoke last, the brakes on persona-to-persona talk, rate-limit
//! windows, mutes, guild settings, Higher Self directives and the audit log.
//! Nothing personal is kept here (that lives in the memory store).

use std::sync::Arc;

use den_core::Timestamp;
use den_storage::{Condition, Put, Query, SkCondition, StoreErrorKind, StoreResult, Table, TableSpec};
use serde_json::{Map, Value, json};

/// The table's declaration.
#[must_use]
pub fn table_spec() -> TableSpec {
    TableSpec::new("personas_state")
}

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

/// A channel's persona activity.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChannelRun {
    /// Persona messages since the last human one.
    pub persona_streak: u32,
    /// When each persona last spoke here.
    pub last_spoke: Map<String, Value>,
}

/// A fixed-window counter's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// Under the limit: go ahead.
    Allowed,
    /// Just went over: say so once.
    JustExceeded,
    /// Over, and already said so: stay silent.
    Silenced,
}

/// Limits a guild's admins set over den's configured ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuildLimits {
    /// Requests per person per minute.
    pub user_per_minute: Option<u32>,
    /// Persona replies per channel per minute.
    pub channel_per_minute: Option<u32>,
    /// Tokens per UTC day for the whole guild (0: den's configured budget).
    pub daily_tokens: Option<u64>,
}

/// A Higher Self directive: followed for the next `remaining` replies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directive {
    /// What the owner asked.
    pub text: String,
    /// Replies it still applies to.
    pub remaining: u32,
}

/// The state store.
#[derive(Debug, Clone)]
pub struct State {
    table: Arc<dyn Table>,
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

impl State {
    /// State over `table` (declared by [`table_spec`]).
    #[must_use]
    pub fn new(table: Arc<dyn Table>) -> Self {
        Self { table }
    }

    /// Read-modify-write with optimistic concurrency.
    async fn update<F>(
        &self,
        pk: &str,
        sk: &str,
        expires: Option<Timestamp>,
        mut f: F,
    ) -> StoreResult<Map<String, Value>>
    where
        F: FnMut(&mut Map<String, Value>) + Send,
    {
        for _ in 0..16 {
            let current = self.table.get(pk, sk).await?;
            let (mut attrs, condition) = match current {
                Some(item) => (item.attrs, Condition::VersionEquals(item.version)),
                None => (Map::new(), Condition::Absent),
            };
            f(&mut attrs);
            let mut put = Put::new(pk, sk, attrs.clone()).condition(condition);
            if let Some(at) = expires {
                put = put.expires_at(at);
            }
            match self.table.put(put).await {
                Ok(_) => return Ok(attrs),
                Err(e) if e.kind() == StoreErrorKind::ConditionFailed => {}
                Err(e) => return Err(e),
            }
        }
        Err(den_storage::StoreError::new(
            StoreErrorKind::ConditionFailed,
            "personas state: too many concurrent writers",
        ))
    }

    /// Remembers that `persona` posted `message` (kept 30 days, so replies to it find it).
    pub async fn mark_persona_message(&self, message: u64, persona: &str, now: Timestamp) -> StoreResult<()> {
        let put = Put::new(format!("msg:{message}"), "m", obj(json!({"persona": persona})))
            .expires_at(Timestamp(now.0 + 30 * DAY));
        self.table.put(put).await.map(|_| ())
    }

    /// The persona that posted `message`, if one did.
    pub async fn persona_of(&self, message: u64) -> StoreResult<Option<String>> {
        Ok(self
            .table
            .get(&format!("msg:{message}"), "m")
            .await?
            .and_then(|i| i.attrs.get("persona").and_then(Value::as_str).map(str::to_owned)))
    }

    /// A channel's activity.
    pub async fn channel(&self, channel: u64) -> StoreResult<ChannelRun> {
        let item = self.table.get(&format!("chan:{channel}"), "run").await?;
        Ok(item.map(|i| run_of(&i.attrs)).unwrap_or_default())
    }

    /// A person spoke: the persona streak starts again. Returns how many
    /// messages of people the channel has seen (what consolidation counts).
    pub async fn human_spoke(&self, channel: u64) -> StoreResult<u64> {
        let a = self
            .update(&format!("chan:{channel}"), "run", None, |a| {
                a.insert("streak".into(), 0.into());
                let seen = a.get("seen").and_then(Value::as_u64).unwrap_or(0);
                a.insert("seen".into(), (seen + 1).into());
            })
            .await?;
        Ok(a.get("seen").and_then(Value::as_u64).unwrap_or(0))
    }

    /// `persona` spoke in `channel` (the gap between persona-to-persona
    /// replies is the delay of the job that cues them, not state).
    pub async fn persona_spoke(&self, channel: u64, persona: &str, now: Timestamp) -> StoreResult<()> {
        self.update(&format!("chan:{channel}"), "run", None, |a| {
            let streak = a.get("streak").and_then(Value::as_u64).unwrap_or(0);
            a.insert("streak".into(), (streak + 1).into());
            let spoke = a.entry("spoke").or_insert_with(|| json!({}));
            if let Some(m) = spoke.as_object_mut() {
                m.insert(persona.to_owned(), now.0.into());
            }
        })
        .await
        .map(|_| ())
    }

    /// Counts one persona-to-persona reply in the channel's current hour;
    /// whether it stays within `cap`.
    pub async fn take_hourly(&self, channel: u64, cap: u32, now: Timestamp) -> StoreResult<bool> {
        let hour = now.0 / HOUR;
        let n = self.count(&format!("chan:{channel}"), &format!("hour:{hour}"), Timestamp((hour + 2) * HOUR)).await?;
        Ok(n <= u64::from(cap))
    }

    /// Adds one to a counter that expires at `expires`; its new value.
    async fn count(&self, pk: &str, sk: &str, expires: Timestamp) -> StoreResult<u64> {
        let a = self
            .update(pk, sk, Some(expires), |a| {
                let n = a.get("n").and_then(Value::as_u64).unwrap_or(0);
                a.insert("n".into(), (n + 1).into());
            })
            .await?;
        Ok(a.get("n").and_then(Value::as_u64).unwrap_or(0))
    }

    /// Sets (`on`) or clears a flag item.
    async fn set_flag(&self, pk: String, sk: &str, on: bool) -> StoreResult<()> {
        if on {
            self.table.put(Put::new(pk, sk, Map::new())).await.map(|_| ())
        } else {
            self.table.delete(&pk, sk, Condition::None).await.map(|_| ())
        }
    }

    /// Counts a request against a per-minute window for `key` (`user:G:U`,
    /// `chan:C`): allowed, just exceeded (tell them once), or silenced.
    pub async fn take_minute(&self, key: &str, limit: u32, now: Timestamp) -> StoreResult<Window> {
        let minute = now.0 / MINUTE;
        let n = self.count(&format!("rl:{key}"), &format!("{minute}"), Timestamp((minute + 2) * MINUTE)).await?;
        Ok(if n <= u64::from(limit) {
            Window::Allowed
        } else if n == u64::from(limit) + 1 {
            Window::JustExceeded
        } else {
            Window::Silenced
        })
    }

    /// Whether a once-a-day notice (`key`) is still to give today; marks it given.
    pub async fn first_today(&self, key: &str, now: Timestamp) -> StoreResult<bool> {
        let day = now.0 / DAY;
        let put = Put::new(format!("once:{key}"), format!("{day}"), Map::new())
            .condition(Condition::Absent)
            .expires_at(Timestamp((day + 2) * DAY));
        match self.table.put(put).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == StoreErrorKind::ConditionFailed => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Mutes `persona` in a guild (channel 0: everywhere) until `until` (None: until unmuted).
    pub async fn mute(&self, guild: u64, persona: &str, channel: u64, until: Option<Timestamp>) -> StoreResult<()> {
        let mut put = Put::new(format!("mute:{guild}"), format!("{persona}:{channel}"), Map::new());
        if let Some(at) = until {
            put = put.expires_at(at);
        }
        self.table.put(put).await.map(|_| ())
    }

    /// Lifts every mute of `persona` in a guild; returns how many there were.
    pub async fn unmute(&self, guild: u64, persona: &str) -> StoreResult<usize> {
        let pk = format!("mute:{guild}");
        let page = self.table.query(Query::pk(&pk).sk(SkCondition::Prefix(format!("{persona}:"))).limit(1000)).await?;
        for item in &page.items {
            self.table.delete(&pk, &item.sk, Condition::None).await?;
        }
        Ok(page.items.len())
    }

    /// Whether `persona` is muted in `channel`.
    pub async fn is_muted(&self, guild: u64, persona: &str, channel: u64) -> StoreResult<bool> {
        let pk = format!("mute:{guild}");
        for c in [0, channel] {
            if self.table.get(&pk, &format!("{persona}:{c}")).await?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A guild's own limits, where its admins set them.
    pub async fn guild_limits(&self, guild: u64) -> StoreResult<GuildLimits> {
        let item = self.table.get(&format!("guild:{guild}"), "limits").await?;
        let get = |k: &str| item.as_ref().and_then(|i| i.attrs.get(k)).and_then(Value::as_u64);
        Ok(GuildLimits {
            user_per_minute: get("user_per_minute").map(|n| n as u32),
            channel_per_minute: get("channel_per_minute").map(|n| n as u32),
            daily_tokens: get("daily_tokens"),
        })
    }

    /// Changes the limits given (`Some`), keeps the others.
    pub async fn set_guild_limits(&self, guild: u64, limits: GuildLimits) -> StoreResult<GuildLimits> {
        self.update(&format!("guild:{guild}"), "limits", None, |a| {
            if let Some(n) = limits.user_per_minute {
                a.insert("user_per_minute".into(), n.into());
            }
            if let Some(n) = limits.channel_per_minute {
                a.insert("channel_per_minute".into(), n.into());
            }
            if let Some(n) = limits.daily_tokens {
                a.insert("daily_tokens".into(), n.into());
            }
        })
        .await?;
        self.guild_limits(guild).await
    }

    /// Turns unprompted chime-ins on or off in a channel.
    pub async fn set_chime_in(&self, guild: u64, channel: u64, on: bool) -> StoreResult<()> {
        self.set_flag(format!("guild:{guild}"), &format!("chime:{channel}"), on).await
    }

    /// Whether chime-ins are on in a channel.
    pub async fn chime_in(&self, guild: u64, channel: u64) -> StoreResult<bool> {
        Ok(self.table.get(&format!("guild:{guild}"), &format!("chime:{channel}")).await?.is_some())
    }

    /// Sets a Higher Self directive for the next `turns` replies.
    pub async fn set_directive(&self, guild: u64, persona: &str, text: &str, turns: u32) -> StoreResult<()> {
        let attrs = obj(json!({"text": text, "remaining": turns}));
        self.table.put(Put::new(format!("hs:{guild}:{persona}"), "directive", attrs)).await.map(|_| ())
    }

    /// Takes the current directive for one reply (counting it down).
    pub async fn take_directive(&self, guild: u64, persona: &str) -> StoreResult<Option<Directive>> {
        let pk = format!("hs:{guild}:{persona}");
        let Some(item) = self.table.get(&pk, "directive").await? else { return Ok(None) };
        let text = item.attrs.get("text").and_then(Value::as_str).unwrap_or_default().to_owned();
        let remaining = item.attrs.get("remaining").and_then(Value::as_u64).unwrap_or(0) as u32;
        if remaining <= 1 {
            self.table.delete(&pk, "directive", Condition::VersionEquals(item.version)).await?;
        } else {
            let attrs = obj(json!({"text": text, "remaining": remaining - 1}));
            let put = Put::new(&pk, "directive", attrs).condition(Condition::VersionEquals(item.version));
            match self.table.put(put).await {
                Ok(_) => {}
                Err(e) if e.kind() == StoreErrorKind::ConditionFailed => {}
                Err(e) => return Err(e),
            }
        }
        Ok((remaining > 0).then_some(Directive { text, remaining }))
    }

    /// Turns Higher Self mode on or off (on: the persona only speaks when its owner takes over).
    pub async fn set_higher_self(&self, guild: u64, persona: &str, on: bool) -> StoreResult<()> {
        self.set_flag(format!("hs:{guild}:{persona}"), "mode", on).await
    }

    /// Whether Higher Self mode is on.
    pub async fn higher_self(&self, guild: u64, persona: &str) -> StoreResult<bool> {
        Ok(self.table.get(&format!("hs:{guild}:{persona}"), "mode").await?.is_some())
    }

    /// Writes an entry of a guild's audit log (kept 180 days): one entry per
    /// `key` (the interaction's id), dated `at` (when it was asked), so a
    /// redelivered command job writes the same line again, not a second one.
    pub async fn audit(
        &self,
        guild: u64,
        user: u64,
        action: &str,
        detail: &str,
        at: Timestamp,
        key: u64,
    ) -> StoreResult<()> {
        let attrs = obj(json!({"user": user.to_string(), "action": action, "detail": detail, "at": at.0}));
        let sk = format!("{:015}:{key}", at.0.max(0));
        self.table
            .put(Put::new(format!("audit:{guild}"), sk, attrs).expires_at(Timestamp(at.0.saturating_add(180 * DAY))))
            .await
            .map(|_| ())
    }

    /// Replaces the details of `user`'s audit entries with "(forgotten)":
    /// the log keeps that they acted, not what they wrote. Returns how many.
    pub async fn redact_audit(&self, guild: u64, user: u64) -> StoreResult<usize> {
        let mut n = 0;
        let mut query = Query::pk(format!("audit:{guild}")).limit(200);
        loop {
            let page = self.table.query(query.clone()).await?;
            for item in &page.items {
                let theirs = item.attrs.get("user").and_then(Value::as_str) == Some(user.to_string().as_str());
                if theirs && item.attrs.get("detail").and_then(Value::as_str) != Some(FORGOTTEN) {
                    let mut attrs = item.attrs.clone();
                    attrs.insert("detail".into(), FORGOTTEN.into());
                    let put = Put::new(item.pk.clone(), item.sk.clone(), attrs);
                    let put = match item.expires_at {
                        Some(at) => put.expires_at(at),
                        None => put,
                    };
                    self.table.put(put).await?;
                    n += 1;
                }
            }
            match page.cursor {
                Some(c) => query = query.cursor(Some(c)),
                None => return Ok(n),
            }
        }
    }

    /// The model's answer kept for consolidation job `job` about `user`.
    pub async fn decision(&self, job: &str, user: u64) -> StoreResult<Option<String>> {
        let item = self.table.get(&format!("consolidation:{job}"), &user.to_string()).await?;
        Ok(item.and_then(|i| i.attrs.get("answer").and_then(Value::as_str).map(str::to_owned)))
    }

    /// Keeps the model's answer for consolidation job `job` about `user` (a day: longer than any redelivery).
    pub async fn set_decision(&self, job: &str, user: u64, answer: &str, now: Timestamp) -> StoreResult<()> {
        let expires = Timestamp(now.0.saturating_add(DAY));
        let put = Put::new(format!("consolidation:{job}"), user.to_string(), obj(json!({"answer": answer})))
            .expires_at(expires);
        self.table.put(put).await.map(|_| ())
    }

    /// The newest `n` audit entries: (time, user, action, detail).
    pub async fn audit_log(&self, guild: u64, n: usize) -> StoreResult<Vec<(Timestamp, u64, String, String)>> {
        let page = self.table.query(Query::pk(format!("audit:{guild}")).reverse().limit(n)).await?;
        Ok(page
            .items
            .into_iter()
            .map(|i| {
                let s = |k: &str| i.attrs.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
                let at = Timestamp(i.attrs.get("at").and_then(Value::as_i64).unwrap_or(0));
                (at, s("user").parse().unwrap_or(0), s("action"), s("detail"))
            })
            .collect())
    }
}

/// What a forgotten person's audit entries say instead of their words.
const FORGOTTEN: &str = "(forgotten)";

fn run_of(a: &Map<String, Value>) -> ChannelRun {
    ChannelRun {
        persona_streak: a.get("streak").and_then(Value::as_u64).unwrap_or(0) as u32,
        last_spoke: a.get("spoke").and_then(Value::as_object).cloned().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn state() -> (State, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let options = den_storage::sqlite::SqliteOptions::new(dir.path().join("den.db"));
        let store: Arc<dyn den_storage::Store> =
            Arc::new(den_storage::sqlite::SqliteStore::open(&options, Arc::new(den_core::SystemClock)).unwrap());
        (State::new(store.table(table_spec()).await.unwrap()), dir)
    }

    #[tokio::test]
    async fn a_minute_window_allows_the_limit_then_tells_once_then_stays_silent() {
        let (s, _d) = state().await;
        let t = Timestamp(1_800_000_000_000);
        let mut verdicts = Vec::new();
        for _ in 0..7 {
            verdicts.push(s.take_minute("user:1:2", 5, t).await.unwrap());
        }
        assert_eq!(verdicts[..5], [Window::Allowed; 5]);
        assert_eq!(verdicts[5], Window::JustExceeded);
        assert_eq!(verdicts[6], Window::Silenced);
        assert_eq!(
            s.take_minute("user:1:2", 5, Timestamp(t.0 + 60_000)).await.unwrap(),
            Window::Allowed,
            "next minute"
        );
    }

    #[tokio::test]
    async fn directives_count_down_and_mutes_cover_a_channel_or_everywhere() {
        let (s, _d) = state().await;
        s.set_directive(1, "gran", "be nice", 2).await.unwrap();
        assert_eq!(s.take_directive(1, "gran").await.unwrap().unwrap().remaining, 2);
        assert_eq!(s.take_directive(1, "gran").await.unwrap().unwrap().text, "be nice");
        assert_eq!(s.take_directive(1, "gran").await.unwrap(), None);

        s.mute(1, "gran", 7, None).await.unwrap();
        assert!(s.is_muted(1, "gran", 7).await.unwrap());
        assert!(!s.is_muted(1, "gran", 8).await.unwrap());
        s.mute(1, "gran", 0, None).await.unwrap();
        assert!(s.is_muted(1, "gran", 8).await.unwrap());
        assert_eq!(s.unmute(1, "gran").await.unwrap(), 2);
        assert!(!s.is_muted(1, "gran", 7).await.unwrap());
    }
}
