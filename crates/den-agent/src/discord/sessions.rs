//! Sessions in den's tables: one per thread, with the run under way, its
//! saved state, its lease (one run per thread, given up by a crashed worker
//! after its lease runs out) and the controls people sent it.

use std::sync::Arc;
use std::time::Duration;

use den_storage::{Condition, Put, Query, SkCondition, Store, StoreErrorKind, StoreResult, Table, TableSpec};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::run::RunState;

/// The partition listing every enabled channel and session thread.
const KNOWN: &str = "known";

/// Largest saved state; older tool results are shortened past it (DynamoDB
/// items hold 400 KB).
const MAX_STATE_BYTES: usize = 300 * 1024;

/// Where a session stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// No run; a message in the thread starts one.
    #[default]
    Idle,
    /// A run is working.
    Running,
    /// The model asked a question; the next message answers it.
    Waiting,
    /// Its branch was merged or rejected; a message in the thread starts again from the base.
    Closed,
}

/// A thread's session.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Session {
    /// The thread.
    pub thread: u64,
    /// Its server.
    pub guild: u64,
    /// Who started it (may approve its merge).
    pub owner: u64,
    /// The branch (`den/<thread>`).
    pub branch: String,
    /// What the branch starts from and merges into.
    pub base: String,
    /// Where it stands.
    pub status: Status,
    /// The run under way or the last one (`<thread>-<n>`).
    pub run: String,
    /// Runs so far.
    pub runs: u32,
    /// The run's progress message.
    pub progress_message: Option<u64>,
    /// The message with the result and the merge buttons.
    pub result_message: Option<u64>,
    /// The last commit den made on the branch.
    pub commit: Option<String>,
    /// The model in use, by name.
    pub model: String,
    /// The last confidence.
    pub confidence: Option<u8>,
    /// The last escalation, said in words.
    pub last_escalation: Option<String>,
    /// Tokens of the run under way or the last one.
    pub tokens: u64,
    /// The newest control the run has heard (a seq of the controls table).
    #[serde(default)]
    pub heard: String,
    /// The sandbox user of its commands (its own, never another session's).
    #[serde(default)]
    pub uid: u32,
    /// Holder of the lease and until when (ms since the epoch).
    #[serde(default)]
    pub lease: Option<(String, u64)>,
}

/// What a server's admins changed with `/agent settings` (unset: den.toml's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSettings {
    /// Turns per run at most, whatever the task's size.
    pub max_turns: Option<u32>,
    /// Tokens per UTC day (0: no limit).
    pub daily_tokens: Option<u64>,
    /// Members of this role may merge or reject any session.
    pub approver_role: Option<u64>,
    /// The models of each tier, weakest first, by provider name (empty: den.toml's).
    #[serde(default)]
    pub tiers: Vec<String>,
}

/// A control a person sent a thread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    /// Order of arrival.
    pub seq: String,
    /// `stop`, `retry`, `wrong`, `escalate` or `clarify`.
    pub word: String,
    /// The clarification.
    pub text: String,
}

/// The agent's tables.
#[derive(Clone)]
pub struct Sessions {
    sessions: Arc<dyn Table>,
    channels: Arc<dyn Table>,
    states: Arc<dyn Table>,
    controls: Arc<dyn Table>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

fn to_attrs<T: Serialize>(v: &T) -> Map<String, Value> {
    match serde_json::to_value(v) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

impl Sessions {
    /// The tables, declared when missing.
    pub async fn open(store: &dyn Store) -> StoreResult<Self> {
        Ok(Self {
            sessions: store.table(TableSpec::new("agent_sessions")).await?,
            channels: store.table(TableSpec::new("agent_channels")).await?,
            states: store.table(TableSpec::new("agent_states")).await?,
            controls: store.table(TableSpec::new("agent_controls")).await?,
        })
    }

    /// The session of `thread`, with its version.
    pub async fn get(&self, thread: u64) -> StoreResult<Option<(Session, u64)>> {
        let item = self.sessions.get(&thread.to_string(), "s").await?;
        Ok(item.and_then(|i| serde_json::from_value(Value::Object(i.attrs)).ok().map(|s| (s, i.version))))
    }

    /// Writes `session` if it is still at `version` (0: new). False when someone else wrote first.
    pub async fn put(&self, session: &Session, version: u64) -> StoreResult<bool> {
        let condition = if version == 0 { Condition::Absent } else { Condition::VersionEquals(version) };
        let put = Put::new(session.thread.to_string(), "s", to_attrs(session)).condition(condition);
        match self.sessions.put(put).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == StoreErrorKind::ConditionFailed => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Changes the session with `change` until the write lands (or there is none).
    pub async fn update(&self, thread: u64, change: impl Fn(&mut Session)) -> StoreResult<Option<Session>> {
        for _ in 0..20 {
            let Some((mut s, v)) = self.get(thread).await? else { return Ok(None) };
            change(&mut s);
            if self.put(&s, v).await? {
                return Ok(Some(s));
            }
        }
        Err(den_storage::StoreError::new(StoreErrorKind::ConditionFailed, "the session kept changing"))
    }

    /// Every session of `guild` (newest threads last), at most 200.
    pub async fn of_guild(&self, guild: u64) -> StoreResult<Vec<Session>> {
        let page = self.channels.query(Query::pk(format!("t:{guild}")).limit(200)).await?;
        let mut out = Vec::new();
        for item in page.items {
            if let Ok(thread) = item.sk.parse()
                && let Some((s, _)) = self.get(thread).await?
            {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Remembers that `thread` of `guild` is a session (for `/workspace list` and ingress).
    pub async fn add_thread(&self, guild: u64, thread: u64) -> StoreResult<()> {
        self.channels.put(Put::new(format!("t:{guild}"), thread.to_string(), Map::new())).await?;
        self.channels.put(Put::new(KNOWN, thread.to_string(), Map::new())).await.map(|_| ())
    }

    /// Turns the agent on or off in `channel` of `guild`.
    pub async fn set_channel(&self, guild: u64, channel: u64, on: bool) -> StoreResult<()> {
        let (pk, sk) = (format!("c:{guild}"), channel.to_string());
        if on {
            self.channels.put(Put::new(pk, sk.clone(), Map::new())).await?;
            self.channels.put(Put::new(KNOWN, sk, Map::new())).await.map(|_| ())
        } else {
            self.channels.delete(&pk, &sk, Condition::None).await?;
            self.channels.delete(KNOWN, &sk, Condition::None).await.map(|_| ())
        }
    }

    /// Whether the agent answers mentions in `channel` of `guild`.
    pub async fn channel_enabled(&self, guild: u64, channel: u64) -> StoreResult<bool> {
        Ok(self.channels.get(&format!("c:{guild}"), &channel.to_string()).await?.is_some())
    }

    /// Every channel and session thread of every server: what ingress listens to.
    pub async fn known_channels(&self) -> StoreResult<Vec<u64>> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.channels.query(Query::pk(KNOWN).limit(1000).cursor(cursor)).await?;
            out.extend(page.items.iter().filter_map(|i| i.sk.parse::<u64>().ok()));
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// A sandbox user id no other session of this store has: `first` and up, counted in the store.
    pub async fn next_uid(&self, first: u32) -> StoreResult<u32> {
        for _ in 0..50 {
            let item = self.channels.get("uid", "next").await?;
            let (next, version) = item.map_or((first, 0), |i| {
                let n = i.attrs.get("next").and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok());
                (n.unwrap_or(first).max(first), i.version)
            });
            let condition = if version == 0 { Condition::Absent } else { Condition::VersionEquals(version) };
            let put = Put::new("uid", "next", to_attrs(&json!({"next": next + 1}))).condition(condition);
            match self.channels.put(put).await {
                Ok(_) => return Ok(next),
                Err(e) if e.kind() == StoreErrorKind::ConditionFailed => continue,
                Err(e) => return Err(e),
            }
        }
        Err(den_storage::StoreError::new(StoreErrorKind::ConditionFailed, "could not take a sandbox user id"))
    }

    /// What `guild`'s admins set.
    pub async fn settings(&self, guild: u64) -> StoreResult<ServerSettings> {
        let item = self.channels.get("settings", &guild.to_string()).await?;
        Ok(item.and_then(|i| serde_json::from_value(Value::Object(i.attrs)).ok()).unwrap_or_default())
    }

    /// Stores `guild`'s settings.
    pub async fn set_settings(&self, guild: u64, settings: &ServerSettings) -> StoreResult<()> {
        self.channels.put(Put::new("settings", guild.to_string(), to_attrs(settings))).await.map(|_| ())
    }

    /// Takes (or renews) the lease of `thread` for `owner` for `lease` from
    /// `now_ms`, unless another holder's lease is still good.
    pub async fn take_lease(&self, thread: u64, owner: &str, now_ms: u64, lease: Duration) -> StoreResult<bool> {
        let Some((mut s, v)) = self.get(thread).await? else { return Ok(false) };
        if s.lease.as_ref().is_some_and(|(o, until)| o != owner && *until > now_ms) {
            return Ok(false);
        }
        s.lease = Some((owner.to_owned(), now_ms.saturating_add(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX))));
        self.put(&s, v).await
    }

    /// Gives the lease up (when `owner` still holds it).
    pub async fn release(&self, thread: u64, owner: &str) -> StoreResult<()> {
        self.update(thread, |s| {
            if s.lease.as_ref().is_some_and(|(o, _)| o == owner) {
                s.lease = None;
            }
        })
        .await
        .map(|_| ())
    }

    /// The saved state of `run`.
    pub async fn state(&self, thread: u64, run: &str) -> StoreResult<Option<RunState>> {
        let item = self.states.get(&thread.to_string(), run).await?;
        Ok(item.and_then(|i| i.attrs.get("state").and_then(|v| v.as_str()).and_then(|s| serde_json::from_str(s).ok())))
    }

    /// Saves the state of `run`, shortening old tool results when it grows past what a store item holds.
    pub async fn save_state(&self, thread: u64, run: &str, state: &RunState) -> StoreResult<()> {
        let mut text = serde_json::to_string(state).unwrap_or_default();
        // Past the limit, older tool results are shortened (the turn log has their digests): first all but
        // the last ten messages', then every one's. Two passes at most, whatever the run's length.
        for (keep, cut) in [(10, 1024), (0, 256)] {
            if text.len() <= MAX_STATE_BYTES {
                break;
            }
            let mut smaller = state.clone();
            let older = smaller.messages.len().saturating_sub(keep);
            for r in smaller.messages[..older].iter_mut().flat_map(|m| m.tool_results.iter_mut()) {
                r.content = crate::output::cut(&r.content, cut);
            }
            text = serde_json::to_string(&smaller).unwrap_or_default();
        }
        let mut attrs = Map::new();
        attrs.insert("state".into(), text.into());
        self.states.put(Put::new(thread.to_string(), run, attrs)).await.map(|_| ())
    }

    /// Records a control for `thread`'s run.
    pub async fn send_control(&self, thread: u64, word: &str, text: &str, now_ms: u64) -> StoreResult<()> {
        let seq = format!("{now_ms:016}-{:08x}", rand::random::<u32>());
        let attrs = to_attrs(&json!({"word": word, "text": text}));
        self.controls.put(Put::new(thread.to_string(), seq, attrs)).await.map(|_| ())
    }

    /// Controls of `thread` sent after `after` (a seq, or "" for all), oldest first.
    pub async fn controls_after(&self, thread: u64, after: &str) -> StoreResult<Vec<Sent>> {
        let q = Query::pk(thread.to_string()).sk(SkCondition::Gt(after.to_owned())).limit(100);
        let page = self.controls.query(q).await?;
        Ok(page
            .items
            .into_iter()
            .map(|i| Sent {
                seq: i.sk,
                word: i.attrs.get("word").and_then(Value::as_str).unwrap_or_default().to_owned(),
                text: i.attrs.get("text").and_then(Value::as_str).unwrap_or_default().to_owned(),
            })
            .collect())
    }
}
