//! What a server decides about its music (`/music-settings`), who may do
//! what, and which servers may use music at all (the operator's allowlist).

use std::sync::Arc;

use den_storage::{Put, Query, StoreResult, Table};
use serde::{Deserialize, Serialize};

use crate::handle::Request;

/// A server's music settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Members of this role (and managers) may skip others' tracks, clear,
    /// stop, move, remove others' tracks and change settings. Unset: everyone may.
    pub dj_role: Option<u64>,
    /// Skips by others than the DJ and whoever queued the track need this
    /// percentage of the channel's listeners to agree. `None`: off.
    pub vote_skip: Option<u8>,
    /// Leave after this long alone or idle; `None` takes den's default, 0 stays.
    pub leave_after_secs: Option<u64>,
    /// Longest track that may be queued, in seconds.
    pub max_track_secs: Option<u64>,
    /// Most tracks one person may have queued.
    pub max_per_person: Option<usize>,
    /// Volume a new queue starts at.
    pub default_volume: u16,
    /// Post "Now playing" in the music channel when a track starts by itself.
    pub announce: bool,
    /// Music commands are taken in this channel only.
    pub channel: Option<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            dj_role: None,
            vote_skip: None,
            leave_after_secs: None,
            max_track_secs: None,
            max_per_person: None,
            default_volume: 100,
            announce: true,
            channel: None,
        }
    }
}

impl Settings {
    /// Whether `request`'s author may do what the DJ role may.
    #[must_use]
    pub fn is_dj(&self, request: &Request) -> bool {
        request.manager || self.dj_role.is_none_or(|role| request.roles.contains(&role))
    }

    /// Votes needed to skip among `listeners` people: at least one.
    #[must_use]
    pub fn votes_needed(&self, listeners: usize) -> Option<usize> {
        self.vote_skip.map(|pct| (listeners * usize::from(pct)).div_ceil(100).max(1))
    }

    /// Lines describing the settings, as `/music-settings` shows them.
    #[must_use]
    pub fn describe(&self, default_leave_secs: u64) -> String {
        let or = |v: Option<String>, none: &str| v.unwrap_or_else(|| none.to_owned());
        [
            format!("DJ role: {}", or(self.dj_role.map(|r| format!("<@&{r}>")), "none (everyone may)")),
            format!("Vote skip: {}", or(self.vote_skip.map(|p| format!("{p}% of listeners")), "off")),
            format!(
                "Leave when idle or alone after: {}",
                match self.leave_after_secs.unwrap_or(default_leave_secs) {
                    0 => "never".to_owned(),
                    s => format!("{s} s"),
                }
            ),
            format!("Longest track: {}", or(self.max_track_secs.map(|s| crate::track::clock(s * 1000)), "any")),
            format!("Tracks per person in the queue: {}", or(self.max_per_person.map(|n| n.to_string()), "any")),
            format!("Default volume: {}%", self.default_volume),
            format!("Announce each track: {}", if self.announce { "yes" } else { "no" }),
            format!("Music channel: {}", or(self.channel.map(|c| format!("<#{c}>")), "any")),
        ]
        .join("\n")
    }
}

const SETTINGS_SK: &str = "settings";
const ALLOW_PK: &str = "allowlist";

/// Settings and the allowlist, in the `music` table.
#[derive(Clone, Debug)]
pub struct Policies {
    table: Arc<dyn Table>,
}

impl Policies {
    /// Kept in `table` (the `music` table).
    #[must_use]
    pub fn new(table: Arc<dyn Table>) -> Self {
        Self { table }
    }

    /// `guild`'s settings (the defaults when it has none).
    pub async fn settings(&self, guild: u64) -> StoreResult<Settings> {
        let item = self.table.get(&guild.to_string(), SETTINGS_SK).await?;
        Ok(item.and_then(|i| serde_json::from_value(serde_json::Value::Object(i.attrs)).ok()).unwrap_or_default())
    }

    /// Replaces `guild`'s settings.
    pub async fn save(&self, guild: u64, settings: &Settings) -> StoreResult<()> {
        let serde_json::Value::Object(attrs) = serde_json::to_value(settings).unwrap_or_default() else {
            unreachable!("settings serialize to an object")
        };
        self.table.put(Put::new(guild.to_string(), SETTINGS_SK, attrs)).await.map(drop)
    }

    /// Whether the operator approved `guild`.
    pub async fn allowed(&self, guild: u64) -> StoreResult<bool> {
        Ok(self.table.get(ALLOW_PK, &guild.to_string()).await?.is_some())
    }

    /// Approves `guild`, noting who did and when; `false` when it already was.
    pub async fn allow(&self, guild: u64, by: &str, at: den_core::Timestamp) -> StoreResult<bool> {
        if self.allowed(guild).await? {
            return Ok(false);
        }
        let mut attrs = serde_json::Map::new();
        attrs.insert("by".into(), by.into());
        attrs.insert("at_ms".into(), at.0.into());
        self.table.put(Put::new(ALLOW_PK, guild.to_string(), attrs)).await?;
        Ok(true)
    }

    /// Revokes `guild`'s approval; `false` when it had none.
    pub async fn revoke(&self, guild: u64) -> StoreResult<bool> {
        self.table.delete(ALLOW_PK, &guild.to_string(), den_storage::Condition::None).await
    }

    /// Every approved server, with who approved it.
    pub async fn allowlist(&self) -> StoreResult<Vec<(u64, String)>> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.table.query(Query::pk(ALLOW_PK).cursor(cursor)).await?;
            for item in &page.items {
                if let Ok(guild) = item.sk.parse() {
                    out.push((guild, item.attrs.get("by").and_then(|b| b.as_str()).unwrap_or_default().to_owned()));
                }
            }
            cursor = page.cursor;
            if cursor.is_none() {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handle::Origin;

    fn request(roles: Vec<u64>, manager: bool) -> Request {
        let mut r = Request::new(1, 2, 3, Err(String::new()), Origin::Interaction);
        r.roles = roles;
        r.manager = manager;
        r
    }

    #[test]
    fn without_a_dj_role_everyone_is_a_dj_and_with_one_only_its_members_and_managers() {
        let mut s = Settings::default();
        assert!(s.is_dj(&request(vec![], false)));
        s.dj_role = Some(77);
        assert!(!s.is_dj(&request(vec![5], false)));
        assert!(s.is_dj(&request(vec![77], false)));
        assert!(s.is_dj(&request(vec![], true)));
    }

    #[test]
    fn votes_needed_round_up_and_never_drop_to_zero() {
        let mut s = Settings::default();
        assert_eq!(s.votes_needed(4), None);
        s.vote_skip = Some(50);
        assert_eq!(
            (s.votes_needed(1), s.votes_needed(3), s.votes_needed(4), s.votes_needed(0)),
            (Some(1), Some(2), Some(2), Some(1))
        );
    }
}
