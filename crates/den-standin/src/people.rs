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
                pinged_users: vec![],
                pinged_everyone: false,
                edits: 0,
                created: w.now(),
                nonce: None,
                visible_to: None,
                interaction: None,
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
