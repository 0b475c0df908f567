//! Acting as a person: posting, replying, attaching files, starting threads.

use serde_json::json;

use crate::events::Part;
use crate::server::Standin;
use crate::world::{Attachment, Channel, Message, World, kind};
use crate::{gateway, json};

/// A file a person attaches.
#[derive(Clone, Debug)]
pub struct Upload {
    /// File name.
    pub filename: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// MIME type, when known.
    pub content_type: Option<String>,
}

/// Stores `file` and returns it as an attachment.
pub(crate) fn store_file(w: &mut World, file: Upload) -> Attachment {
    let id = w.snowflake();
    let a = Attachment {
        id,
        filename: file.filename.clone(),
        size: file.bytes.len() as u64,
        content_type: file.content_type,
    };
    w.files.insert(id, (file.filename, file.bytes));
    a
}

impl Standin {
    /// Posts `content` as `user` in `channel` and dispatches MESSAGE_CREATE.
    pub fn post_as(&self, user: u64, channel: u64, content: &str) -> u64 {
        self.post(user, channel, content, None, Vec::new())
    }

    /// Replies to `message` as `user`.
    pub fn reply_as(&self, user: u64, channel: u64, content: &str, message: u64) -> u64 {
        self.post(user, channel, content, Some(message), Vec::new())
    }

    /// Posts as `user`: text, a reply, files.
    pub fn post(&self, user: u64, channel: u64, content: &str, reply_to: Option<u64>, files: Vec<Upload>) -> u64 {
        let cdn = self.shared.rest_url.clone();
        let (json, guild, id) = {
            let mut w = self.shared.world();
            let (name, bot) = w.users.get(&user).map(|u| (u.name.clone(), u.bot)).unwrap_or(("someone".into(), false));
            let guild = w.guild_of(channel).unwrap_or(0);
            let attachments = files.into_iter().map(|f| store_file(&mut w, f)).collect();
            // A person's message mentions whoever it names, as on Discord.
            let (pinged_users, pinged_everyone) = crate::rest::pings(&json!({"content": content}));
            let msg = Message {
                id: w.snowflake(),
                channel_id: channel,
                author_id: user,
                author_name: name,
                author_avatar: None,
                author_bot: bot,
                content: content.into(),
                webhook_id: None,
                reply_to,
                flags: 0,
                embeds: vec![],
                components: vec![],
                attachments,
                pinged_users,
                pinged_everyone,
                edits: 0,
                created: w.now(),
                nonce: None,
                visible_to: None,
                interaction: None,
                reactions: vec![],
            };
            let mut json = json::message(&msg, &cdn);
            if let Some(r) = reply_to.and_then(|r| w.messages.get(&r)) {
                json["referenced_message"] = json::message(r, &cdn);
            }
            json["member"] = json::member(&w, guild, user);
            let id = msg.id;
            w.messages.insert(id, msg);
            (json, guild, id)
        };
        self.shared.dispatch_message(&json, guild);
        self.shared.touch(Part::Messages, Some(channel));
        id
    }

    /// A file a person attaches to a command; returns its attachment id.
    pub fn add_attachment(&self, filename: &str, bytes: &[u8]) -> u64 {
        let mut w = self.shared.world();
        let upload = Upload { filename: filename.into(), bytes: bytes.to_vec(), content_type: None };
        store_file(&mut w, upload).id
    }

    /// Starts a public thread in `channel` as `user`, from `message` when
    /// given; dispatches THREAD_CREATE and returns the thread's id.
    pub fn start_thread(&self, user: u64, channel: u64, name: &str, message: Option<u64>) -> u64 {
        let (json, guild, id) = {
            let mut w = self.shared.world();
            let guild = w.guild_of(channel).unwrap_or(0);
            // A thread started from a message takes the message's id, as on Discord.
            let id = message.unwrap_or_else(|| w.snowflake());
            let thread = Channel {
                id,
                guild_id: guild,
                kind: kind::PUBLIC_THREAD,
                name: name.into(),
                topic: None,
                parent_id: Some(channel),
                position: 0,
                overwrites: vec![],
                tags: vec![],
                owner_id: Some(user),
                archived: false,
            };
            let mut json = json::channel(&thread);
            json["newly_created"] = true.into();
            w.channels.insert(id, thread);
            (json, guild, id)
        };
        self.shared.hub().dispatch("THREAD_CREATE", &json, Some(guild), gateway::GUILDS, None);
        self.shared.touch(Part::Channels, None);
        let _ = json!({});
        id
    }
}

/// An emoji from a reaction route's path: percent-encoded Unicode, or a
/// custom emoji as `name:id` (kept whole).
pub(crate) fn decode_emoji(raw: &str) -> Result<String, crate::rest::ApiError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or_else(|| crate::rest::err(400, 10014, "Unknown Emoji"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let emoji = String::from_utf8(out).map_err(|_| crate::rest::err(400, 10014, "Unknown Emoji"))?;
    if emoji.is_empty() || emoji.chars().count() > 32 {
        return Err(crate::rest::err(400, 10014, "Unknown Emoji"));
    }
    Ok(emoji)
}

/// `user` reacts to `message` with `emoji`: stored, and MESSAGE_REACTION_ADD
/// sent to the bots that asked for reactions (when the reaction is new).
pub(crate) fn add_reaction(
    shared: &crate::server::Shared,
    w: &mut World,
    user: u64,
    channel: u64,
    message: u64,
    emoji: &str,
) -> Result<(), crate::rest::ApiError> {
    let guild = w.guild_of(channel).ok_or_else(|| crate::rest::err(404, 10003, "Unknown Channel"))?;
    let m = w.messages.get_mut(&message).filter(|m| m.channel_id == channel);
    let m = m.ok_or_else(|| crate::rest::err(404, 10008, "Unknown Message"))?;
    let author = m.author_id;
    if m.reactions.len() >= 20 && !m.reactions.iter().any(|(e, _)| e == emoji) {
        return Err(crate::rest::err(400, 30010, "Maximum number of reactions reached (20)"));
    }
    if !m.react(user, emoji) {
        return Ok(());
    }
    let data = json!({
        "user_id": user.to_string(), "channel_id": channel.to_string(), "message_id": message.to_string(),
        "guild_id": guild.to_string(), "message_author_id": author.to_string(),
        "emoji": {"id": null, "name": emoji}, "burst": false, "type": 0,
        "member": json::member(w, guild, user),
    });
    shared.hub().dispatch("MESSAGE_REACTION_ADD", &data, Some(guild), gateway::GUILD_MESSAGE_REACTIONS, None);
    Ok(())
}

impl Standin {
    /// `user` reacts to `message` in `channel` with `emoji` (a Unicode emoji).
    ///
    /// # Errors
    /// Discord's error when the channel or message is unknown.
    pub fn react(&self, user: u64, channel: u64, message: u64, emoji: &str) -> Result<(), String> {
        {
            let mut w = self.shared.world();
            add_reaction(&self.shared, &mut w, user, channel, message, emoji).map_err(|e| e.message().to_owned())?;
        }
        self.shared.touch(Part::Messages, Some(channel));
        Ok(())
    }

    /// Puts `user` in voice `channel` of `guild` (`None`: out of voice), as
    /// if they joined it in their client.
    ///
    /// # Errors
    /// When `channel` is not a voice channel of `guild`.
    pub fn join_voice(&self, user: u64, guild: u64, channel: Option<u64>) -> Result<(), String> {
        let session = format!("{:032x}", rand::random::<u128>());
        if crate::gateway::voice::set_state(&self.shared, guild, user, channel, &session) {
            Ok(())
        } else {
            Err(format!("{channel:?} is not a voice channel of guild {guild}"))
        }
    }

    /// Moves `guild`'s call to another voice server, as Discord does when one
    /// goes away: den's bot is told the new server and its connection closed.
    /// `false` when den's bot is not in voice there.
    pub fn move_voice_server(&self, guild: u64) -> bool {
        crate::gateway::voice::move_server(&self.shared, guild)
    }

    /// Who is in which voice channel of `guild`: (user, channel).
    #[must_use]
    pub fn voice_members(&self, guild: u64) -> Vec<(u64, u64)> {
        let w = self.shared.world();
        w.voice_states.get(&guild).map(|s| s.iter().map(|(u, v)| (*u, v.channel)).collect()).unwrap_or_default()
    }
}
