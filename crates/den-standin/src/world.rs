//! The stand-in's world: accounts, guilds, roles, channels, messages,
//! webhooks, commands and interactions. It is plain data; it can be saved
//! to a file and loaded again (live interactions aside).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Discord's epoch (2015-01-01) in milliseconds, for snowflakes.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// Channel types the stand-in knows.
pub mod kind {
    /// A text channel.
    pub const TEXT: u8 = 0;
    /// A voice channel.
    pub const VOICE: u8 = 2;
    /// A category.
    pub const CATEGORY: u8 = 4;
    /// A public thread (also a forum post).
    pub const PUBLIC_THREAD: u8 = 11;
    /// A private thread.
    pub const PRIVATE_THREAD: u8 = 12;
    /// A forum.
    pub const FORUM: u8 = 15;

    /// Whether channels of type `k` are threads.
    #[must_use]
    pub fn is_thread(k: u8) -> bool {
        matches!(k, PUBLIC_THREAD | 10 | PRIVATE_THREAD)
    }
}

/// A user or bot account.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct User {
    /// Snowflake.
    pub id: u64,
    /// Username.
    pub name: String,
    /// Bot account.
    pub bot: bool,
}

/// A guild.
#[derive(Clone, Debug, Serialize, Deserialize)]
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

/// Someone in a voice channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoiceState {
    /// The voice channel.
    pub channel: u64,
    /// The voice session (for a bot: what its voice connection identifies with).
    pub session_id: String,
    /// Sending audio now (a bot playing).
    pub speaking: bool,
}

/// A role.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// Colour (RGB).
    #[serde(default)]
    pub color: u32,
}

/// A guild channel (threads included).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Channel {
    /// Snowflake.
    pub id: u64,
    /// Guild.
    pub guild_id: u64,
    /// Channel type: see [`kind`].
    pub kind: u8,
    /// Name.
    pub name: String,
    /// Topic.
    pub topic: Option<String>,
    /// Parent: a category, or for threads the channel they are in.
    pub parent_id: Option<u64>,
    /// Sort position.
    pub position: i64,
    /// Permission overwrites, as sent.
    pub overwrites: Vec<Value>,
    /// Forum tags, as sent.
    pub tags: Vec<Value>,
    /// Threads: who started it.
    #[serde(default)]
    pub owner_id: Option<u64>,
    /// Threads: archived.
    #[serde(default)]
    pub archived: bool,
}

/// A file attached to a message or an interaction.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Attachment {
    /// Snowflake.
    pub id: u64,
    /// File name.
    pub filename: String,
    /// Bytes.
    pub size: u64,
    /// MIME type, when known.
    pub content_type: Option<String>,
}

/// A message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Message {
    /// Snowflake.
    pub id: u64,
    /// Channel (or thread).
    pub channel_id: u64,
    /// Author: a user, a bot, or a webhook's id.
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
    /// Files attached.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
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
    /// An ephemeral message is seen by this user alone.
    #[serde(default)]
    pub visible_to: Option<u64>,
    /// The interaction it answers: (its type, its command name, who invoked it).
    #[serde(default)]
    pub interaction: Option<(u8, String, u64)>,
    /// Reactions: each emoji and who reacted with it, in order of first use.
    #[serde(default)]
    pub reactions: Vec<(String, Vec<u64>)>,
}

impl Message {
    /// Adds `user`'s reaction `emoji`; whether it is new.
    pub fn react(&mut self, user: u64, emoji: &str) -> bool {
        match self.reactions.iter_mut().find(|(e, _)| e == emoji) {
            Some((_, users)) if users.contains(&user) => false,
            Some((_, users)) => {
                users.push(user);
                true
            }
            None => {
                self.reactions.push((emoji.to_owned(), vec![user]));
                true
            }
        }
    }

    /// Removes `user`'s reaction `emoji`; whether there was one.
    pub fn unreact(&mut self, user: u64, emoji: &str) -> bool {
        let Some(i) = self.reactions.iter().position(|(e, _)| e == emoji) else { return false };
        let users = &mut self.reactions[i].1;
        let before = users.len();
        users.retain(|u| *u != user);
        let removed = users.len() < before;
        if users.is_empty() {
            self.reactions.remove(i);
        }
        removed
    }
}

/// A webhook.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// Type: 2 command, 3 component.
    pub kind: u8,
    /// The command's name, or a component's custom id.
    pub name: String,
    /// Who invoked it.
    pub user_id: u64,
    /// Channel it was invoked in.
    pub channel_id: u64,
    /// Guild.
    pub guild_id: u64,
    /// For components: the message the component is on.
    pub message: Option<u64>,
    /// When Discord created it (stand-in time).
    pub created: SystemTime,
    /// The first response: its type and data.
    pub callback: Option<(u8, Value)>,
    /// When the first response arrived (stand-in time).
    pub responded_at: Option<SystemTime>,
    /// The original response message.
    pub original: Option<u64>,
    /// Follow-up messages.
    pub followups: Vec<u64>,
}

/// Everything the stand-in knows.
#[derive(Debug, Serialize, Deserialize)]
pub struct World {
    next_id: u64,
    /// The application.
    pub app_id: u64,
    /// The application's bot (while a request of another bot account runs: that account).
    pub bot: User,
    /// Other bot accounts, by token: a persona's own bot, a bot someone connects.
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
    /// Registered commands: global, and per guild.
    pub commands: Commands,
    /// Interactions by token (live for 15 minutes; not saved).
    #[serde(skip)]
    pub interactions: HashMap<String, Interaction>,
    /// How far stand-in time is ahead of the wall clock.
    #[serde(skip)]
    pub time_offset: Duration,
    /// Who is in which voice channel, by guild and user (not saved: calls end with the stand-in).
    #[serde(skip)]
    pub voice_states: BTreeMap<u64, BTreeMap<u64, VoiceState>>,
    /// The application's permissions as interactions report them (`app_permissions`); `None`: all.
    pub app_permissions: Option<u64>,
    /// Files people and bots attached, by attachment id: name and bytes.
    #[serde(with = "bytes_by_id")]
    pub files: BTreeMap<u64, (String, Vec<u8>)>,
}

/// Registered application commands.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Commands {
    /// Global commands.
    pub global: Vec<Value>,
    /// Commands of one guild, by guild id.
    pub guild: BTreeMap<u64, Vec<Value>>,
}

impl Commands {
    /// The commands of `guild` (`None`: global).
    #[must_use]
    pub fn of(&self, guild: Option<u64>) -> &[Value] {
        match guild {
            None => &self.global,
            Some(g) => self.guild.get(&g).map_or(&[], Vec::as_slice),
        }
    }

    /// Replaces the commands of `guild` (`None`: global).
    pub fn set(&mut self, guild: Option<u64>, commands: Vec<Value>) {
        match guild {
            None => self.global = commands,
            Some(g) => {
                self.guild.insert(g, commands);
            }
        }
    }

    /// The commands a person sees in `guild`: the guild's, then global ones not shadowed.
    #[must_use]
    pub fn visible_in(&self, guild: u64) -> Vec<Value> {
        let mut out: Vec<Value> = self.of(Some(guild)).to_vec();
        for c in &self.global {
            if !out.iter().any(|o| o["name"] == c["name"]) {
                out.push(c.clone());
            }
        }
        out
    }
}

mod bytes_by_id {
    use std::collections::BTreeMap;

    use base64::Engine as _;
    use serde::{Deserialize as _, Deserializer, Serializer};

    type Files = BTreeMap<u64, (String, Vec<u8>)>;

    pub fn serialize<S: Serializer>(files: &Files, s: S) -> Result<S::Ok, S::Error> {
        let b64 = base64::engine::general_purpose::STANDARD;
        s.collect_seq(files.iter().map(|(id, (name, bytes))| (id, name, b64.encode(bytes))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Files, D::Error> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let list = Vec::<(u64, String, String)>::deserialize(d)?;
        list.into_iter()
            .map(|(id, name, text)| b64.decode(text).map(|bytes| (id, (name, bytes))).map_err(serde::de::Error::custom))
            .collect()
    }
}

impl World {
    pub(crate) fn new() -> Self {
        let mut w = Self {
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
            commands: Commands::default(),
            interactions: HashMap::new(),
            time_offset: Duration::ZERO,
            voice_states: BTreeMap::new(),
            app_permissions: None,
            files: BTreeMap::new(),
        };
        w.app_id = w.snowflake();
        // Applications made before 2019 have a bot user whose id differs from
        // the application's; the stand-in gives them different ids so a bot cannot confuse them.
        let bot_id = w.snowflake();
        w.bot = User { id: bot_id, name: "den".into(), bot: true };
        w.users.insert(w.bot.id, w.bot.clone());
        w
    }

    /// Stand-in "now".
    #[must_use]
    pub fn now(&self) -> SystemTime {
        SystemTime::now() + self.time_offset
    }

    /// A fresh snowflake with the current time in its top bits.
    pub fn snowflake(&mut self) -> u64 {
        let ms = self.now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        self.next_id += 1;
        (ms.saturating_sub(DISCORD_EPOCH_MS) << 22) | (self.next_id & 0x3f_ffff)
    }

    /// The guild a channel (or thread) belongs to.
    #[must_use]
    pub fn guild_of(&self, channel: u64) -> Option<u64> {
        self.channels.get(&channel).map(|c| c.guild_id)
    }

    /// The user id of the account `token` names: the application's bot or another bot.
    #[must_use]
    pub fn account(&self, token: &str, app_token: &str) -> Option<User> {
        if token == app_token { Some(self.bot.clone()) } else { self.other_bots.get(token).cloned() }
    }

    /// A new bot account for `token`, a member of every guild.
    pub fn add_bot(&mut self, name: &str, token: &str) -> User {
        let id = self.snowflake();
        let user = User { id, name: name.into(), bot: true };
        self.users.insert(id, user.clone());
        self.other_bots.insert(token.to_owned(), user.clone());
        for g in self.guilds.values_mut() {
            g.members.insert(id, Vec::new());
        }
        user
    }
}
