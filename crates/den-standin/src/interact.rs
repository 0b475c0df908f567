//! Interactions as people make them (slash commands, buttons, select menus)
//! and as Discord delivers them: over the gateway, or signed to the
//! application's Interactions Endpoint URL.

use ed25519_dalek::Signer as _;
use serde_json::{Value, json};

use crate::events::Part;
use crate::server::{Standin, lock};
use crate::world::Interaction;
use crate::{json, perms, rest};

/// A slash-command option.
#[derive(Clone, Debug)]
pub struct CommandOption {
    /// Option name.
    pub name: String,
    /// Option value (string, integer, boolean, or a user id as a string).
    pub value: Value,
    /// Option type (1 subcommand, 2 group, 3 string, 4 integer, 5 boolean,
    /// 6 user, 7 channel, 8 role, 10 number, 11 attachment).
    pub kind: u8,
    /// A subcommand's (or group's) own options.
    pub options: Vec<CommandOption>,
}

impl CommandOption {
    /// A string option.
    #[must_use]
    pub fn string(name: &str, value: &str) -> Self {
        Self::of(3, name, value.into())
    }
    /// An option of type `kind` with `value` as Discord sends it (snowflakes as strings).
    #[must_use]
    pub fn of(kind: u8, name: &str, value: Value) -> Self {
        Self { name: name.into(), value, kind, options: Vec::new() }
    }
    /// A subcommand (`kind` 1) or subcommand group (2) with its options.
    #[must_use]
    pub fn sub(kind: u8, name: &str, options: Vec<CommandOption>) -> Self {
        Self { name: name.into(), value: Value::Null, kind, options }
    }

    fn to_json(&self) -> Value {
        if matches!(self.kind, 1 | 2) {
            json!({"name": self.name, "type": self.kind, "options": self.options.iter().map(Self::to_json).collect::<Vec<_>>()})
        } else {
            json!({"name": self.name, "type": self.kind, "value": self.value})
        }
    }

    /// This option and every option inside it.
    fn leaves(&self) -> Vec<&CommandOption> {
        let mut out = vec![self];
        for o in &self.options {
            out.extend(o.leaves());
        }
        out
    }
    /// A user option.
    #[must_use]
    pub fn user(name: &str, user: u64) -> Self {
        Self::of(6, name, user.to_string().into())
    }
    /// An attachment option (an id from [`Standin::add_attachment`]).
    #[must_use]
    pub fn attachment(name: &str, attachment: u64) -> Self {
        Self::of(11, name, attachment.to_string().into())
    }
}

/// A signed HTTP interaction, ready to POST to an Interactions Endpoint.
#[derive(Clone, Debug)]
pub struct SignedInteraction {
    /// The interaction token.
    pub token: String,
    /// The raw body.
    pub body: String,
    /// `X-Signature-Ed25519`.
    pub signature: String,
    /// `X-Signature-Timestamp`.
    pub timestamp: String,
}

impl Standin {
    fn new_interaction(&self, user: u64, channel: u64, kind: u8, data: Value, message: Option<u64>) -> (String, Value) {
        let cdn = self.shared.rest_url.clone();
        let mut w = self.shared.world();
        let id = w.snowflake();
        let token = format!("interaction-token-{id}");
        let guild = w.guild_of(channel).unwrap_or(0);
        let name = w.users.get(&user).map_or_else(|| "someone".to_owned(), |u| u.name.clone());
        let permissions = perms::in_channel(&w, channel, user).to_string();
        // A bot is invited with the permissions it asks for: all, unless a test says otherwise.
        let app_permissions = w.app_permissions.unwrap_or(perms::ALL).to_string();
        let channel_kind = w.channels.get(&channel).map_or(0, |c| c.kind);
        let mut member = json::member(&w, guild, user);
        member["user"] = json::user(user, &name, false, None);
        member["permissions"] = permissions.into();
        let mut payload = json!({
            "id": id.to_string(), "application_id": w.app_id.to_string(), "type": kind, "data": data,
            "guild_id": guild.to_string(), "channel_id": channel.to_string(),
            "channel": {"id": channel.to_string(), "type": channel_kind, "guild_id": guild.to_string()},
            "member": member,
            "token": token, "version": 1, "app_permissions": app_permissions, "locale": "en-US",
            "guild_locale": "en-US", "entitlements": [], "authorizing_integration_owners": {"0": guild.to_string()},
            "context": 0, "attachment_size_limit": 10_485_760,
        });
        if let Some(mid) = message.and_then(|mid| w.messages.get(&mid)) {
            payload["message"] = json::message(mid, &cdn);
        }
        let created = w.now();
        let name = data["name"].as_str().or(data["custom_id"].as_str()).unwrap_or_default().to_owned();
        w.interactions.insert(
            token.clone(),
            Interaction {
                id,
                token: token.clone(),
                kind,
                name,
                user_id: user,
                channel_id: channel,
                guild_id: guild,
                message,
                created,
                callback: None,
                responded_at: None,
                original: None,
                followups: vec![],
            },
        );
        (token, payload)
    }

    fn command_data(&self, name: &str, options: &[CommandOption]) -> Value {
        let mut w = self.shared.world();
        let opts: Vec<Value> = options.iter().map(CommandOption::to_json).collect();
        let command_id = w
            .commands
            .global
            .iter()
            .chain(w.commands.guild.values().flatten())
            .find(|c| c["name"] == name)
            .and_then(|c| c["id"].as_str().map(str::to_owned));
        let id = command_id.unwrap_or_else(|| w.snowflake().to_string());
        let mut data = json!({"id": id, "name": name, "type": 1, "options": opts});
        let all: Vec<&CommandOption> = options.iter().flat_map(CommandOption::leaves).collect();
        let of_kind = |k: u8| all.iter().filter(move |o| o.kind == k).filter_map(|o| o.value.as_str()?.parse().ok());
        let users: serde_json::Map<String, Value> =
            of_kind(6).filter_map(|id: u64| w.users.get(&id).map(|u| (id.to_string(), json::account(u)))).collect();
        if !users.is_empty() {
            data["resolved"] = json!({"users": users});
        }
        let cdn = &self.shared.rest_url;
        let attachments: serde_json::Map<String, Value> = of_kind(11)
            .filter_map(|id: u64| {
                let (filename, bytes) = w.files.get(&id)?;
                let a = crate::world::Attachment {
                    id,
                    filename: filename.clone(),
                    size: bytes.len() as u64,
                    content_type: None,
                };
                Some((id.to_string(), json::attachment(cdn, &a)))
            })
            .collect();
        if !attachments.is_empty() {
            data["resolved"]["attachments"] = Value::Object(attachments);
        }
        data
    }

    /// Invokes slash command `name` as `user`, delivered as Discord would: to
    /// the Interactions Endpoint URL when one is set, else over the gateway
    /// (INTERACTION_CREATE); returns the interaction token.
    pub fn invoke_command(&self, user: u64, channel: u64, name: &str, options: &[CommandOption]) -> String {
        let data = self.command_data(name, options);
        let (token, payload) = self.new_interaction(user, channel, 2, data, None);
        self.deliver(&token, payload);
        token
    }

    /// Presses the button `custom_id` on `message` as `user`; returns the token.
    pub fn press_button(&self, user: u64, channel: u64, message: u64, custom_id: &str) -> String {
        let data = json!({"custom_id": custom_id, "component_type": 2});
        let (token, payload) = self.new_interaction(user, channel, 3, data, Some(message));
        self.deliver(&token, payload);
        token
    }

    /// Picks `values` in the string select menu `custom_id` on `message` as `user`; returns the token.
    pub fn choose(&self, user: u64, channel: u64, message: u64, custom_id: &str, values: &[String]) -> String {
        let data = json!({"custom_id": custom_id, "component_type": 3, "values": values});
        let (token, payload) = self.new_interaction(user, channel, 3, data, Some(message));
        self.deliver(&token, payload);
        token
    }

    /// Sends interactions to `url` (signed, as Discord POSTs them) instead of
    /// over the gateway; `None` goes back to the gateway.
    pub fn set_interactions_endpoint(&self, url: Option<String>) {
        *lock(&self.shared.endpoint) = url;
    }

    fn deliver(&self, token: &str, payload: Value) {
        let Some(url) = lock(&self.shared.endpoint).clone() else {
            let (guild, app) = {
                let w = self.shared.world();
                (w.interactions.get(token).map_or(0, |i| i.guild_id), w.bot.id)
            };
            // Interactions go to the application that owns the command: den's, not other bots'.
            self.shared.hub().dispatch("INTERACTION_CREATE", &payload, Some(guild), 0, Some(app));
            return;
        };
        let signed = self.sign(token.to_owned(), payload.to_string());
        let shared = self.shared.clone();
        self.shared.runtime.spawn(async move {
            let sent = shared
                .http
                .post(&url)
                .header("content-type", "application/json")
                .header("x-signature-ed25519", &signed.signature)
                .header("x-signature-timestamp", &signed.timestamp)
                .body(signed.body)
                .send()
                .await;
            let answer = match sent {
                Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                Ok(r) => {
                    tracing::warn!(target: "den_standin", status = %r.status(), "the interactions endpoint refused");
                    None
                }
                Err(e) => {
                    tracing::warn!(target: "den_standin", error = %e, "the interactions endpoint did not answer");
                    None
                }
            };
            // What the application answered is the first response, as if posted to the callback route.
            if let Some(answer) = answer {
                let channel = shared.world().interactions.get(&signed.token).map(|i| i.channel_id);
                let result = rest::respond(&shared, &mut shared.world(), &signed.token, None, &answer);
                if let Err(e) = result {
                    shared.violation(format!("interaction answer refused over HTTP: {}", e.message()));
                }
                shared.touch(Part::Messages, channel);
            }
        });
    }

    /// Builds a slash-command interaction for the HTTP endpoint, signed with the
    /// application's key.
    pub fn signed_command(&self, user: u64, channel: u64, name: &str, options: &[CommandOption]) -> SignedInteraction {
        let data = self.command_data(name, options);
        let (token, payload) = self.new_interaction(user, channel, 2, data, None);
        self.sign(token, payload.to_string())
    }

    /// A signed PING (type 1).
    pub fn signed_ping(&self) -> SignedInteraction {
        let body =
            json!({"id": "1", "application_id": self.app_id().to_string(), "type": 1, "token": "ping", "version": 1})
                .to_string();
        self.sign("ping".into(), body)
    }

    /// Signs `body` with the application's key at the current time.
    #[must_use]
    pub fn sign(&self, token: String, body: String) -> SignedInteraction {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        self.sign_at(token, body, &now.to_string())
    }

    /// Signs `body` as if sent at `timestamp` (Unix seconds), for replay tests.
    #[must_use]
    pub fn sign_at(&self, token: String, body: String, timestamp: &str) -> SignedInteraction {
        let signature = hex::encode(self.shared.signing_key.sign(format!("{timestamp}{body}").as_bytes()).to_bytes());
        SignedInteraction { token, body, signature, timestamp: timestamp.to_owned() }
    }
}
