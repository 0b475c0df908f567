//! The fake's in-memory world and the JSON it shows of it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Discord's epoch (2015-01-01) in milliseconds, for snowflakes.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// A user or bot account.
#[derive(Clone, Debug)]
pub struct User {
    /// Snowflake.
    pub id: u64,
    /// Username.
    pub name: String,
    /// Bot account.
    pub bot: bool,
}

/// A guild.
#[derive(Clone, Debug)]
pub struct Guild {
    /// Snowflake; also the id of its @everyone role.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Owner.
    pub owner_id: u64,
    /// Members and their role ids.
    pub members: BTreeMap<u64, Vec<u64>>,
}

/// A role.
#[derive(Clone, Debug)]
pub struct Role {
    /// Snowflake.
    pub id: u64,
    /// Guild.
    pub guild_id: u64,
    /// Name.
    pub name: String,
    /// Permission bits as a decimal string.
    pub permissions: String,
    /// Position.
    pub position: i64,
}

/// A guild channel.
#[derive(Clone, Debug)]
pub struct Channel {
    /// Snowflake.
    pub id: u64,
    /// Guild.
    pub guild_id: u64,
    /// Channel type: 0 text, 2 voice, 4 category, 15 forum.
    pub kind: u8,
    /// Name.
    pub name: String,
    /// Topic.
    pub topic: Option<String>,
    /// Parent category.
    pub parent_id: Option<u64>,
    /// Sort position.
    pub position: i64,
    /// Permission overwrites, as sent.
    pub overwrites: Vec<Value>,
    /// Forum tags, as sent.
    pub tags: Vec<Value>,
}

/// A message.
#[derive(Clone, Debug)]
pub struct Message {
    /// Snowflake.
    pub id: u64,
    /// Channel.
    pub channel_id: u64,
    /// Author: a user, den's bot, or a webhook's name.
    pub author_id: u64,
    /// Display name of the author (webhook messages carry their own).
    pub author_name: String,
    /// Author avatar URL, for webhook messages.
    pub author_avatar: Option<String>,
    /// Bot or webhook author.
    pub author_bot: bool,
    /// Text.
    pub content: String,
    /// Set on messages sent through a webhook.
    pub webhook_id: Option<u64>,
    /// Message replied to.
    pub reply_to: Option<u64>,
    /// Message flags (64 ephemeral, 128 loading).
    pub flags: u64,
    /// Embeds, as sent.
    pub embeds: Vec<Value>,
    /// Components, as sent.
    pub components: Vec<Value>,
    /// Users this message actually pinged (after `allowed_mentions`).
    pub pinged_users: Vec<u64>,
    /// Whether it pinged @everyone or @here.
    pub pinged_everyone: bool,
    /// How many times it was edited.
    pub edits: u32,
    /// Creation time.
    pub created: SystemTime,
    /// The nonce it was created with.
    pub nonce: Option<String>,
}

/// A webhook.
#[derive(Clone, Debug)]
pub struct Webhook {
    /// Snowflake.
    pub id: u64,
    /// Token.
    pub token: String,
    /// Channel.
    pub channel_id: u64,
    /// Guild.
    pub guild_id: u64,
    /// Name.
    pub name: String,
}

/// One interaction and what was done with it.
#[derive(Clone, Debug)]
pub struct Interaction {
    /// Snowflake.
    pub id: u64,
    /// Token.
    pub token: String,
    /// Who invoked it.
    pub user_id: u64,
    /// Channel it was invoked in.
    pub channel_id: u64,
    /// Guild.
    pub guild_id: u64,
    /// When Discord created it (fake time).
    pub created: SystemTime,
    /// The first response: its type and data.
    pub callback: Option<(u8, Value)>,
    /// When the first response arrived (fake time).
    pub responded_at: Option<SystemTime>,
    /// The original response message.
    pub original: Option<u64>,
    /// Follow-up messages.
    pub followups: Vec<u64>,
}

/// Everything the fake knows.
#[derive(Debug)]
pub struct Model {
    next_id: u64,
    /// The application.
    pub app_id: u64,
    /// den's bot account (while a request of another bot account runs: that account).
    pub bot: User,
    /// Other bot accounts den may post as (a persona's own bot), by token.
    pub other_bots: BTreeMap<String, User>,
    /// Users by id.
    pub users: BTreeMap<u64, User>,
    /// Guilds by id.
    pub guilds: BTreeMap<u64, Guild>,
    /// Roles by id.
    pub roles: BTreeMap<u64, Role>,
    /// Channels by id.
    pub channels: BTreeMap<u64, Channel>,
    /// Messages by id (deleted ones removed).
    pub messages: BTreeMap<u64, Message>,
    /// Webhooks by id (deleted ones removed).
    pub webhooks: BTreeMap<u64, Webhook>,
    /// Registered commands: `None` global, `Some(guild)` per guild.
    pub commands: HashMap<Option<u64>, Vec<Value>>,
    /// Interactions by token.
    pub interactions: HashMap<String, Interaction>,
    /// How far fake time is ahead of the wall clock.
    pub time_offset: Duration,
    /// den's permissions as interactions report them (`app_permissions`); `None`: all.
    pub app_permissions: Option<u64>,
    /// Files people attached, by attachment id: name and bytes (served under `/attachments/`).
    pub attachments: BTreeMap<u64, (String, Vec<u8>)>,
}

impl Model {
    pub(crate) fn new() -> Self {
        let mut m = Self {
            next_id: 0,
            app_id: 0,
            bot: User { id: 0, name: String::new(), bot: true },
            other_bots: BTreeMap::new(),
            users: BTreeMap::new(),
            guilds: BTreeMap::new(),
            roles: BTreeMap::new(),
            channels: BTreeMap::new(),
            messages: BTreeMap::new(),
            webhooks: BTreeMap::new(),
            commands: HashMap::new(),
            interactions: HashMap::new(),
            time_offset: Duration::ZERO,
            app_permissions: None,
            attachments: BTreeMap::new(),
        };
        m.app_id = m.snowflake();
        // Applications made before 2019 have a bot user whose id differs from
        // the application's; the fake gives them different ids so den cannot confuse them.
        let bot_id = m.snowflake();
        m.bot = User { id: bot_id, name: "den".into(), bot: true };
        m.users.insert(m.bot.id, m.bot.clone());
        m
    }

    /// Fake "now".
    pub fn now(&self) -> SystemTime {
        SystemTime::now() + self.time_offset
    }

    /// A fresh snowflake with the current time in its top bits.
    pub fn snowflake(&mut self) -> u64 {
        let ms = self.now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        self.next_id += 1;
        (ms.saturating_sub(DISCORD_EPOCH_MS) << 22) | (self.next_id & 0x3f_ffff)
    }
}

/// ISO 8601 of a system time, as Discord writes timestamps.
pub fn iso8601(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (year, month, day) = den_core::Timestamp(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).utc_date();
    let rem = d.as_secs() % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// A user as `UserResponse`.
pub fn user_json(id: u64, name: &str, bot: bool, avatar: Option<&str>) -> Value {
    let mut u = json!({
        "id": id.to_string(), "username": name, "avatar": avatar, "discriminator": "0000",
        "public_flags": 0, "flags": 0, "global_name": null, "primary_guild": null,
    });
    if bot {
        u["bot"] = true.into();
    }
    u
}

/// A message as `MessageResponse`.
pub fn message_json(m: &Message) -> Value {
    let mentions: Vec<Value> = m.pinged_users.iter().map(|id| user_json(*id, "user", false, None)).collect();
    let mut v = json!({
        "type": if m.reply_to.is_some() { 19 } else { 0 },
        "content": m.content,
        "mentions": mentions,
        "mention_roles": [],
        "attachments": [],
        "embeds": m.embeds,
        "timestamp": iso8601(m.created),
        "edited_timestamp": null,
        "flags": m.flags,
        "components": m.components,
        "id": m.id.to_string(),
        "channel_id": m.channel_id.to_string(),
        "author": user_json(m.author_id, &m.author_name, m.author_bot, m.author_avatar.as_deref()),
        "pinned": false,
        "mention_everyone": m.pinged_everyone,
        "tts": false,
    });
    if let Some(n) = &m.nonce {
        v["nonce"] = n.clone().into();
    }
    if m.edits > 0 {
        v["edited_timestamp"] = iso8601(m.created).into();
    }
    if let Some(w) = m.webhook_id {
        v["webhook_id"] = w.to_string().into();
    }
    if let Some(r) = m.reply_to {
        v["message_reference"] =
            json!({"type": 0, "channel_id": m.channel_id.to_string(), "message_id": r.to_string()});
    }
    v
}

/// A guild channel as `GuildChannelResponse`.
pub fn channel_json(c: &Channel) -> Value {
    let mut v = json!({
        "id": c.id.to_string(), "type": c.kind, "flags": 0, "guild_id": c.guild_id.to_string(),
        "name": c.name, "position": c.position, "permission_overwrites": c.overwrites, "nsfw": false,
    });
    if let Some(p) = c.parent_id {
        v["parent_id"] = p.to_string().into();
    }
    if let Some(t) = &c.topic {
        v["topic"] = t.clone().into();
    }
    if c.kind == 15 {
        v["available_tags"] = c.tags.clone().into();
    }
    v
}

/// A role as `GuildRoleResponse`.
pub fn role_json(r: &Role) -> Value {
    json!({
        "id": r.id.to_string(), "name": r.name, "permissions": r.permissions, "position": r.position,
        "color": 0, "colors": {"primary_color": 0, "secondary_color": null, "tertiary_color": null},
        "hoist": false, "managed": false, "mentionable": false, "icon": null, "unicode_emoji": null, "flags": 0,
    })
}

/// A webhook as `GuildIncomingWebhookResponse`.
pub fn webhook_json(w: &Webhook, app_id: u64, bot: &User) -> Value {
    json!({
        "application_id": app_id.to_string(), "avatar": null, "channel_id": w.channel_id.to_string(),
        "guild_id": w.guild_id.to_string(), "id": w.id.to_string(), "name": w.name, "type": 1,
        "user": user_json(bot.id, &bot.name, true, None), "token": w.token,
    })
}
