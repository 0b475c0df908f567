//! What den takes from Discord's events: small types parsed from raw JSON.
//!
//! den parses only the fields it uses, so a new or odd field in Discord's
//! payloads never breaks ingress, and parsing stays cheap.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Permission bit ADMINISTRATOR.
pub const ADMINISTRATOR: u64 = 1 << 3;
/// Permission bit MANAGE_CHANNELS.
pub const MANAGE_CHANNELS: u64 = 1 << 4;
/// Permission bit MANAGE_GUILD.
pub const MANAGE_GUILD: u64 = 1 << 5;
/// Permission bit MANAGE_ROLES.
pub const MANAGE_ROLES: u64 = 1 << 28;

fn snowflake<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = Value::deserialize(d)?;
    parse_snowflake(&v).ok_or_else(|| serde::de::Error::custom("expected a snowflake"))
}

fn opt_snowflake<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    Ok(v.as_ref().and_then(parse_snowflake))
}

fn parse_snowflake(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// A message author.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    /// User id (a webhook's id for webhook messages).
    #[serde(deserialize_with = "snowflake")]
    pub id: u64,
    /// Username.
    #[serde(default)]
    pub username: String,
    /// Display name, when set.
    #[serde(default)]
    pub global_name: Option<String>,
    /// Bot account (webhooks too).
    #[serde(default)]
    pub bot: bool,
}

impl Author {
    /// The name people see.
    #[must_use]
    pub fn display_name(&self) -> &str {
        self.global_name.as_deref().filter(|n| !n.is_empty()).unwrap_or(&self.username)
    }
}

/// The message a message replies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferencedMessage {
    /// Its id.
    #[serde(deserialize_with = "snowflake")]
    pub id: u64,
    /// Its author.
    pub author: Author,
    /// Set when a webhook (a persona) sent it.
    #[serde(default, deserialize_with = "opt_snowflake")]
    pub webhook_id: Option<u64>,
    /// Its text.
    #[serde(default)]
    pub content: String,
}

/// A MESSAGE_CREATE, reduced to what modules use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundMessage {
    /// Message id.
    #[serde(deserialize_with = "snowflake")]
    pub id: u64,
    /// Channel.
    #[serde(deserialize_with = "snowflake")]
    pub channel_id: u64,
    /// Guild (absent in DMs).
    #[serde(default, deserialize_with = "opt_snowflake")]
    pub guild_id: Option<u64>,
    /// Author.
    pub author: Author,
    /// Text (empty without the MESSAGE_CONTENT intent).
    #[serde(default)]
    pub content: String,
    /// Set when a webhook sent it.
    #[serde(default, deserialize_with = "opt_snowflake")]
    pub webhook_id: Option<u64>,
    /// The message replied to, when Discord includes it.
    #[serde(default)]
    pub referenced_message: Option<Box<ReferencedMessage>>,
    /// Files attached to it.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// Ids of users mentioned.
    #[serde(default, skip_serializing)]
    mentions: Vec<Value>,
}

impl InboundMessage {
    /// Parses a MESSAGE_CREATE's `d`.
    pub fn parse(d: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(d)
    }

    /// Ids of users mentioned.
    #[must_use]
    pub fn mentioned_users(&self) -> Vec<u64> {
        self.mentions.iter().filter_map(|m| m.get("id").and_then(parse_snowflake)).collect()
    }
}

/// A MESSAGE_REACTION_ADD: someone reacted to a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundReaction {
    /// Who reacted.
    #[serde(deserialize_with = "snowflake")]
    pub user_id: u64,
    /// Channel of the message.
    #[serde(deserialize_with = "snowflake")]
    pub channel_id: u64,
    /// The message.
    #[serde(deserialize_with = "snowflake")]
    pub message_id: u64,
    /// Guild (absent in DMs).
    #[serde(default, deserialize_with = "opt_snowflake")]
    pub guild_id: Option<u64>,
    /// Who wrote the message, when Discord says.
    #[serde(default, deserialize_with = "opt_snowflake")]
    pub message_author_id: Option<u64>,
    /// The emoji: its Unicode text, or a custom emoji's name.
    #[serde(deserialize_with = "emoji_name")]
    pub emoji: String,
    /// The member who reacted (guilds only).
    #[serde(default, skip_serializing)]
    member: Value,
}

fn emoji_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(v["name"].as_str().unwrap_or_default().to_owned())
}

impl InboundReaction {
    /// Parses a MESSAGE_REACTION_ADD's `d`.
    pub fn parse(d: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(d)
    }

    /// Whether a bot reacted (den's own reactions included).
    #[must_use]
    pub fn by_bot(&self) -> bool {
        self.member["user"]["bot"].as_bool().unwrap_or(false)
    }

    /// Role ids of the member who reacted.
    #[must_use]
    pub fn roles(&self) -> Vec<u64> {
        self.member["roles"].as_array().into_iter().flatten().filter_map(parse_snowflake).collect()
    }
}

/// What kind of interaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InteractionKind {
    /// Discord checking the endpoint.
    Ping,
    /// A slash command.
    Command,
    /// A button or select menu.
    Component,
    /// Autocomplete of an option.
    Autocomplete,
    /// A modal submitted.
    ModalSubmit,
    /// A type den does not know.
    Other(u8),
}

impl From<u8> for InteractionKind {
    fn from(n: u8) -> Self {
        match n {
            1 => Self::Ping,
            2 => Self::Command,
            3 => Self::Component,
            4 => Self::Autocomplete,
            5 => Self::ModalSubmit,
            n => Self::Other(n),
        }
    }
}

/// An interaction, reduced to what modules use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboundInteraction {
    /// Interaction id.
    pub id: u64,
    /// Application id.
    pub application_id: u64,
    /// Kind.
    pub kind: InteractionKind,
    /// Token for the response and follow-ups (valid 15 minutes).
    pub token: String,
    /// Guild.
    pub guild_id: Option<u64>,
    /// Channel.
    pub channel_id: Option<u64>,
    /// Who invoked it.
    pub user: Option<Author>,
    /// The invoker's permissions in the channel.
    pub permissions: u64,
    /// den's own permissions in the channel (`app_permissions`), when Discord says.
    pub app_permissions: Option<u64>,
    /// The invoker's roles (in a guild).
    pub roles: Vec<u64>,
    /// The command's name (slash commands).
    pub command: Option<String>,
    /// Options by name; subcommand options flattened as `sub.option`.
    pub options: serde_json::Map<String, Value>,
    /// The component's custom id (buttons, menus, modals).
    pub custom_id: Option<String>,
    /// Users resolved from user options, by id.
    pub resolved_users: Vec<Author>,
    /// Files attached through attachment options.
    pub resolved_attachments: Vec<Attachment>,
    /// What was chosen in a select menu.
    pub values: Vec<String>,
}

/// A file attached to a message or an interaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Attachment id (the option's value).
    #[serde(deserialize_with = "snowflake")]
    pub id: u64,
    /// File name.
    pub filename: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Where to download it.
    pub url: String,
}

impl InboundInteraction {
    /// Parses an INTERACTION_CREATE's `d` or an HTTP interaction body.
    pub fn parse(d: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(d).map_err(|e| format!("interaction is not JSON: {e}"))?;
        let id = parse_snowflake(&v["id"]).ok_or("interaction has no id")?;
        let application_id = parse_snowflake(&v["application_id"]).ok_or("interaction has no application_id")?;
        let kind = InteractionKind::from(
            v["type"].as_u64().and_then(|t| u8::try_from(t).ok()).ok_or("interaction has no type")?,
        );
        let token = v["token"].as_str().ok_or("interaction has no token")?.to_owned();
        let member = &v["member"];
        let user_value = if member["user"].is_object() { &member["user"] } else { &v["user"] };
        let user = serde_json::from_value::<Author>(user_value.clone()).ok();
        let permissions = member["permissions"].as_str().and_then(|p| p.parse().ok()).unwrap_or(0);
        let app_permissions = v["app_permissions"].as_str().and_then(|p| p.parse().ok());
        let roles = member["roles"].as_array().into_iter().flatten().filter_map(parse_snowflake).collect();
        let channel_id = parse_snowflake(&v["channel_id"]).or_else(|| parse_snowflake(&v["channel"]["id"]));
        let mut options = serde_json::Map::new();
        flatten_options(&v["data"]["options"], "", &mut options);
        let resolved_attachments = v["data"]["resolved"]["attachments"]
            .as_object()
            .map(|m| m.values().filter_map(|a| serde_json::from_value(a.clone()).ok()).collect())
            .unwrap_or_default();
        let resolved_users = v["data"]["resolved"]["users"]
            .as_object()
            .map(|m| m.values().filter_map(|u| serde_json::from_value(u.clone()).ok()).collect())
            .unwrap_or_default();
        Ok(Self {
            id,
            application_id,
            kind,
            token,
            guild_id: parse_snowflake(&v["guild_id"]),
            channel_id,
            user,
            permissions,
            app_permissions,
            roles,
            command: v["data"]["name"].as_str().map(str::to_owned),
            options,
            custom_id: v["data"]["custom_id"].as_str().map(str::to_owned),
            resolved_users,
            resolved_attachments,
            values: v["data"]["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
        })
    }

    /// A string option.
    #[must_use]
    pub fn option_str(&self, name: &str) -> Option<&str> {
        self.options.get(name).and_then(Value::as_str)
    }

    /// A user option's id.
    #[must_use]
    pub fn option_user(&self, name: &str) -> Option<u64> {
        self.options.get(name).and_then(parse_snowflake)
    }

    /// Whether the invoker holds every bit of `permission` (administrators hold all).
    #[must_use]
    pub fn has_permission(&self, permission: u64) -> bool {
        self.permissions & ADMINISTRATOR != 0 || self.permissions & permission == permission
    }

    /// The bits of `needed` den itself lacks in the channel (none when it is
    /// an administrator; `needed` when Discord did not say).
    #[must_use]
    pub fn app_lacks(&self, needed: u64) -> u64 {
        match self.app_permissions {
            Some(p) if p & ADMINISTRATOR != 0 => 0,
            Some(p) => needed & !p,
            None => needed,
        }
    }
}

fn flatten_options(options: &Value, prefix: &str, out: &mut serde_json::Map<String, Value>) {
    for o in options.as_array().into_iter().flatten() {
        let Some(name) = o["name"].as_str() else { continue };
        let key = if prefix.is_empty() { name.to_owned() } else { format!("{prefix}.{name}") };
        if o["options"].is_array() {
            out.insert(key.clone(), Value::Null);
            flatten_options(&o["options"], &key, out);
        } else {
            out.insert(key, o["value"].clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_parses_with_reply_and_webhook_fields_and_ignores_the_rest() {
        let d = r#"{"id":"10","channel_id":"20","guild_id":"30","content":"hi <@5>",
            "author":{"id":"40","username":"ada","global_name":"Ada","bot":false,"avatar":null},
            "mentions":[{"id":"5","username":"den"}],"some_new_field":{"x":1},
            "referenced_message":{"id":"9","content":"earlier","webhook_id":"77","author":{"id":"77","username":"Grumpy","bot":true}}}"#;
        let m = InboundMessage::parse(d).unwrap();
        assert_eq!((m.id, m.channel_id, m.guild_id), (10, 20, Some(30)));
        assert_eq!(m.author.display_name(), "Ada");
        assert_eq!(m.mentioned_users(), [5]);
        let r = m.referenced_message.unwrap();
        assert_eq!((r.id, r.webhook_id), (9, Some(77)));
    }

    #[test]
    fn a_malformed_message_is_an_error_not_a_panic() {
        assert!(InboundMessage::parse("{").is_err());
        assert!(InboundMessage::parse(r#"{"id":"x","channel_id":"1","author":{"id":"1"}}"#).is_err());
    }

    #[test]
    fn an_interaction_flattens_subcommand_options_and_reads_permissions() {
        let d = r#"{"id":"1","application_id":"2","type":2,"token":"t","guild_id":"3","channel_id":"4",
            "member":{"user":{"id":"5","username":"ada"},"permissions":"16"},
            "data":{"name":"campaign","options":[{"name":"add","type":1,"options":[{"name":"name","type":3,"value":"Dragons"}]}]}}"#;
        let i = InboundInteraction::parse(d).unwrap();
        assert_eq!(i.kind, InteractionKind::Command);
        assert_eq!(i.command.as_deref(), Some("campaign"));
        assert_eq!(i.option_str("add.name"), Some("Dragons"));
        assert!(i.has_permission(MANAGE_CHANNELS));
        assert!(!i.has_permission(MANAGE_ROLES));
        assert_eq!(i.app_lacks(MANAGE_CHANNELS), MANAGE_CHANNELS, "unknown: assume lacking");
        assert_eq!(i.user.unwrap().id, 5);
        assert!(InboundInteraction::parse(r#"{"type":2}"#).is_err());
        let with_app = d.replace(r#""type":2,"#, r#""type":2,"app_permissions":"16","#);
        let i = InboundInteraction::parse(&with_app).unwrap();
        assert_eq!(i.app_lacks(MANAGE_CHANNELS | MANAGE_ROLES), MANAGE_ROLES);
        let admin = d.replace(r#""type":2,"#, r#""type":2,"app_permissions":"8","#);
        assert_eq!(InboundInteraction::parse(&admin).unwrap().app_lacks(MANAGE_ROLES), 0);
    }
}

/// A voice event of den's own connection or of anyone's presence in voice:
/// what a voice driver needs to connect, and who listens where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VoiceEvent {
    /// VOICE_STATE_UPDATE: `user` is now in `channel` of `guild` (`None`: left voice).
    State {
        /// The guild.
        guild: u64,
        /// The voice channel, or `None` when the user left.
        channel: Option<u64>,
        /// Whose state.
        user: u64,
        /// The voice session id (den's own is what its voice connection identifies with).
        session_id: String,
        /// Whether the user is a bot, when Discord says.
        bot: bool,
    },
    /// GUILD_CREATE: den's gateway session holds `guild` (at start, after a
    /// reconnect, or on joining it); its voice states follow.
    GuildAvailable {
        /// The guild.
        guild: u64,
    },
    /// VOICE_SERVER_UPDATE: where den's voice connection for `guild` goes.
    Server {
        /// The guild.
        guild: u64,
        /// The voice token.
        token: String,
        /// `host:port`; `None` while Discord picks a new server.
        endpoint: Option<String>,
    },
}

impl VoiceEvent {
    /// Parses a VOICE_STATE_UPDATE's `d`; states outside guilds are `None`.
    ///
    /// # Errors
    /// When the JSON lacks the user or the session.
    pub fn parse_state(d: &str) -> Result<Option<Self>, serde_json::Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default, deserialize_with = "opt_snowflake")]
            guild_id: Option<u64>,
            #[serde(default, deserialize_with = "opt_snowflake")]
            channel_id: Option<u64>,
            #[serde(deserialize_with = "snowflake")]
            user_id: u64,
            session_id: String,
            #[serde(default)]
            member: Value,
        }
        let r: Raw = serde_json::from_str(d)?;
        Ok(r.guild_id.map(|guild| Self::State {
            guild,
            channel: r.channel_id,
            user: r.user_id,
            session_id: r.session_id,
            bot: r.member["user"]["bot"].as_bool().unwrap_or(false),
        }))
    }

    /// What a GUILD_CREATE's `d` says of voice: the guild is available, then
    /// the voice states it lists (they carry no guild id: the guild's own id
    /// is theirs); nothing when it is malformed.
    #[must_use]
    pub fn parse_guild_states(d: &str) -> Vec<Self> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(deserialize_with = "snowflake")]
            id: u64,
            #[serde(default)]
            voice_states: Vec<Value>,
        }
        let Ok(r) = serde_json::from_str::<Raw>(d) else { return Vec::new() };
        let states = r.voice_states.into_iter().filter_map(|mut v| {
            v["guild_id"] = r.id.to_string().into();
            Self::parse_state(&v.to_string()).ok().flatten()
        });
        std::iter::once(Self::GuildAvailable { guild: r.id }).chain(states).collect()
    }

    /// Parses a VOICE_SERVER_UPDATE's `d`.
    ///
    /// # Errors
    /// When the JSON lacks the guild or the token.
    pub fn parse_server(d: &str) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(deserialize_with = "snowflake")]
            guild_id: u64,
            token: String,
            #[serde(default)]
            endpoint: Option<String>,
        }
        let r: Raw = serde_json::from_str(d)?;
        Ok(Self::Server { guild: r.guild_id, token: r.token, endpoint: r.endpoint })
    }
}
