//! Building and tearing down guild structure through den's egress: roles,
//! categories and text, voice and forum channels with permission overwrites.
//!
//! Bodies are written as Discord's API describes them and sent through the
//! same rate-limited client, with the same retries, as everything else.

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::egress::Landed;
use crate::rest::Call;

use crate::egress::{DiscordErrorKind, DiscordResult, Egress};

/// `VIEW_CHANNEL`.
pub const VIEW_CHANNEL: u64 = 1 << 10;
/// `SEND_MESSAGES`.
pub const SEND_MESSAGES: u64 = 1 << 11;
/// `CONNECT` (voice).
pub const CONNECT: u64 = 1 << 20;
/// `SEND_MESSAGES_IN_THREADS` (forum posts).
pub const SEND_MESSAGES_IN_THREADS: u64 = 1 << 38;
/// `CREATE_PUBLIC_THREADS` (forum posts).
pub const CREATE_PUBLIC_THREADS: u64 = 1 << 35;

/// A channel's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// Text (0).
    Text,
    /// Voice (2).
    Voice,
    /// Category (4).
    Category,
    /// Forum (15).
    Forum,
}

impl ChannelKind {
    /// Discord's number for it.
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            Self::Text => 0,
            Self::Voice => 2,
            Self::Category => 4,
            Self::Forum => 15,
        }
    }

    /// The kind of Discord's number, if den builds such channels.
    #[must_use]
    pub fn from_code(code: u64) -> Option<Self> {
        Some(match code {
            0 => Self::Text,
            2 => Self::Voice,
            4 => Self::Category,
            15 => Self::Forum,
            _ => return None,
        })
    }
}

/// Whom an overwrite is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// A role (@everyone's id is the guild's).
    Role(u64),
    /// A member.
    Member(u64),
}

/// A permission overwrite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overwrite {
    /// Whom it is for.
    pub target: Target,
    /// Permissions granted.
    pub allow: u64,
    /// Permissions refused.
    pub deny: u64,
}

impl Overwrite {
    fn to_json(self) -> Value {
        let (id, kind) = match self.target {
            Target::Role(id) => (id, 0),
            Target::Member(id) => (id, 1),
        };
        // Integers, as Discord's API description asks of requests (answers carry strings).
        json!({"id": id.to_string(), "type": kind, "allow": self.allow, "deny": self.deny})
    }

    fn from_json(v: &Value) -> Option<Self> {
        let num = |k: &str| v[k].as_str().and_then(|s| s.parse().ok()).or_else(|| v[k].as_u64());
        let id = num("id")?;
        let target = if v["type"].as_u64()? == 1 { Target::Member(id) } else { Target::Role(id) };
        Some(Self { target, allow: num("allow").unwrap_or(0), deny: num("deny").unwrap_or(0) })
    }
}

/// A channel to create.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewChannel {
    /// Name.
    pub name: String,
    /// Type (default text).
    pub kind: Option<ChannelKind>,
    /// Topic (text and forum).
    pub topic: Option<String>,
    /// Category it goes under.
    pub parent: Option<u64>,
    /// Position.
    pub position: Option<u32>,
    /// The full set of overwrites, sent in the create call so the channel is never visible too widely.
    pub overwrites: Vec<Overwrite>,
    /// Forum tags (names of at most 20 characters; at most 20).
    pub tags: Vec<String>,
}

/// A channel as Discord describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Type number.
    pub kind: u64,
    /// Category.
    pub parent: Option<u64>,
    /// Topic.
    pub topic: Option<String>,
    /// Overwrites.
    pub overwrites: Vec<Overwrite>,
}

/// A role as Discord describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleInfo {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
}

fn snowflake(v: &Value) -> Option<u64> {
    v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_u64())
}

fn channel_info(v: &Value) -> Option<ChannelInfo> {
    Some(ChannelInfo {
        id: snowflake(&v["id"])?,
        name: v["name"].as_str().unwrap_or_default().to_owned(),
        kind: v["type"].as_u64().unwrap_or(0),
        parent: snowflake(&v["parent_id"]),
        topic: v["topic"].as_str().map(str::to_owned),
        overwrites: v["permission_overwrites"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Overwrite::from_json)
            .collect(),
    })
}

/// Discord's channel-name rules for text-like channels: lowercase, spaces to
/// dashes, at most 100 characters.
#[must_use]
pub fn channel_name(name: &str, kind: ChannelKind) -> String {
    let name: String = name.trim().chars().filter(|c| !c.is_control()).take(100).collect();
    match kind {
        ChannelKind::Text | ChannelKind::Forum => name.to_lowercase().split_whitespace().collect::<Vec<_>>().join("-"),
        ChannelKind::Voice | ChannelKind::Category => name,
    }
}

impl Egress {
    /// Creates a role with no permissions of its own (a role created without
    /// them copies @everyone's).
    pub async fn create_role(&self, guild: u64, name: &str) -> DiscordResult<RoleInfo> {
        let body = json!({"name": name, "permissions": 0, "mentionable": false, "hoist": false});
        let v = self
            .create("create role", Call::new(Method::POST, format!("/guilds/{guild}/roles")).json(&body), unknown)
            .await?;
        let id = snowflake(&v["id"]).ok_or_else(|| crate::egress::local("create role", "no id in the answer"))?;
        Ok(RoleInfo { id, name: v["name"].as_str().unwrap_or(name).to_owned() })
    }

    /// The guild's roles.
    pub async fn list_roles(&self, guild: u64) -> DiscordResult<Vec<RoleInfo>> {
        let v = self.call("list roles", Call::new(Method::GET, format!("/guilds/{guild}/roles"))).await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                Some(RoleInfo { id: snowflake(&r["id"])?, name: r["name"].as_str().unwrap_or_default().to_owned() })
            })
            .collect())
    }

    /// Deletes a role; `false` when it was already gone.
    pub async fn delete_role(&self, guild: u64, role: u64) -> DiscordResult<bool> {
        gone_is_fine(
            self.call(
                "delete role",
                Call::new(Method::DELETE, format!("/guilds/{guild}/roles/{role}"))
                    .bucket(format!("DELETE /guilds/{guild}/roles")),
            )
            .await,
        )
    }

    /// Creates a channel with its whole overwrite set.
    pub async fn create_channel(&self, guild: u64, c: &NewChannel) -> DiscordResult<ChannelInfo> {
        let kind = c.kind.unwrap_or(ChannelKind::Text);
        let mut body = json!({"name": channel_name(&c.name, kind), "type": kind.code()});
        if let Some(t) = &c.topic
            && matches!(kind, ChannelKind::Text | ChannelKind::Forum)
        {
            body["topic"] = t.chars().take(1024).collect::<String>().into();
        }
        if let Some(p) = c.parent {
            body["parent_id"] = p.to_string().into();
        }
        if let Some(p) = c.position {
            body["position"] = p.into();
        }
        if !c.overwrites.is_empty() {
            body["permission_overwrites"] = c.overwrites.iter().map(|o| o.to_json()).collect();
        }
        if kind == ChannelKind::Forum && !c.tags.is_empty() {
            body["available_tags"] = c
                .tags
                .iter()
                .take(20)
                .map(|t| json!({"name": t.chars().take(20).collect::<String>(), "moderated": false}))
                .collect();
        }
        let v = self
            .create("create channel", Call::new(Method::POST, format!("/guilds/{guild}/channels")).json(&body), unknown)
            .await?;
        channel_info(&v).ok_or_else(|| crate::egress::local("create channel", "no id in the answer"))
    }

    /// The guild's channels.
    pub async fn list_channels(&self, guild: u64) -> DiscordResult<Vec<ChannelInfo>> {
        let v = self.call("list channels", Call::new(Method::GET, format!("/guilds/{guild}/channels"))).await?;
        Ok(v.as_array().into_iter().flatten().filter_map(channel_info).collect())
    }

    /// Moves a channel under `parent` and/or replaces its overwrites.
    pub async fn update_channel(
        &self,
        channel: u64,
        parent: Option<u64>,
        overwrites: Option<&[Overwrite]>,
    ) -> DiscordResult<ChannelInfo> {
        let mut body = json!({});
        if let Some(p) = parent {
            body["parent_id"] = p.to_string().into();
        }
        if let Some(o) = overwrites {
            body["permission_overwrites"] = o.iter().map(|o| o.to_json()).collect();
        }
        let v =
            self.call("update channel", Call::new(Method::PATCH, format!("/channels/{channel}")).json(&body)).await?;
        channel_info(&v).ok_or_else(|| crate::egress::local("update channel", "no id in the answer"))
    }

    /// Deletes a channel; `false` when it was already gone.
    pub async fn delete_channel(&self, channel: u64) -> DiscordResult<bool> {
        gone_is_fine(self.call("delete channel", Call::new(Method::DELETE, format!("/channels/{channel}"))).await)
    }
}

/// Roles and channels are not told apart by name: whether a lost create
/// landed is for the caller to find out (a campaign's steps know how).
async fn unknown() -> Landed<Value> {
    Landed::Unknown
}

fn gone_is_fine(r: DiscordResult<Value>) -> DiscordResult<bool> {
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == DiscordErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_forum_names_follow_discords_rules() {
        assert_eq!(channel_name("  Session Recaps ", ChannelKind::Text), "session-recaps");
        assert_eq!(channel_name("Campaign Main", ChannelKind::Voice), "Campaign Main");
        assert_eq!(channel_name(&"x".repeat(300), ChannelKind::Forum).len(), 100);
    }

    #[test]
    fn overwrites_round_trip_through_discords_json() {
        for o in [
            Overwrite { target: Target::Role(1), allow: 0, deny: VIEW_CHANNEL },
            Overwrite { target: Target::Member(2), allow: VIEW_CHANNEL | SEND_MESSAGES, deny: 0 },
        ] {
            assert_eq!(Overwrite::from_json(&o.to_json()), Some(o));
        }
    }
}
