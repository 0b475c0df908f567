//! The world as Discord's API shows it: the JSON of users, messages,
//! channels, roles, webhooks and guilds.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::world::{self, Attachment, Channel, Message, Role, User, Webhook, World};

/// ISO 8601 of a system time, as Discord writes timestamps.
#[must_use]
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
#[must_use]
pub fn user(id: u64, name: &str, bot: bool, avatar: Option<&str>) -> Value {
    let mut u = json!({
        "id": id.to_string(), "username": name, "avatar": avatar, "discriminator": "0000",
        "public_flags": 0, "flags": 0, "global_name": null, "primary_guild": null,
    });
    if bot {
        u["bot"] = true.into();
    }
    u
}

/// An account as `UserResponse`.
#[must_use]
pub fn account(u: &User) -> Value {
    user(u.id, &u.name, u.bot, None)
}

/// Where the stand-in serves an attachment's bytes.
#[must_use]
pub fn attachment_url(cdn: &str, a: &Attachment) -> String {
    format!("{cdn}/attachments/{}/{}", a.id, a.filename)
}

/// An attachment as `MessageAttachmentResponse`.
#[must_use]
pub fn attachment(cdn: &str, a: &Attachment) -> Value {
    let url = attachment_url(cdn, a);
    let mut v = json!({"id": a.id.to_string(), "filename": a.filename, "size": a.size, "url": url, "proxy_url": url});
    if let Some(t) = &a.content_type {
        v["content_type"] = t.clone().into();
    }
    v
}

/// A message as `MessageResponse`; `cdn` is where attachments are served.
#[must_use]
pub fn message(m: &Message, cdn: &str) -> Value {
    let mentions: Vec<Value> = m.pinged_users.iter().map(|id| user(*id, "user", false, None)).collect();
    let attachments: Vec<Value> = m.attachments.iter().map(|a| attachment(cdn, a)).collect();
    let kind = if m.interaction.as_ref().is_some_and(|i| i.0 == 2) {
        20 // CHAT_INPUT_COMMAND
    } else if m.reply_to.is_some() {
        19
    } else {
        0
    };
    let mut v = json!({
        "type": kind,
        "content": m.content,
        "mentions": mentions,
        "mention_roles": [],
        "attachments": attachments,
        "embeds": m.embeds,
        "timestamp": iso8601(m.created),
        "edited_timestamp": null,
        "flags": m.flags,
        "components": m.components,
        "id": m.id.to_string(),
        "channel_id": m.channel_id.to_string(),
        "author": user(m.author_id, &m.author_name, m.author_bot, m.author_avatar.as_deref()),
        "pinned": false,
        "mention_everyone": m.pinged_everyone,
        "tts": false,
    });
    if let Some(n) = &m.nonce {
        v["nonce"] = n.clone().into();
    }
    if !m.reactions.is_empty() {
        // `me` would depend on who reads; the stand-in leaves it false.
        v["reactions"] = m
            .reactions
            .iter()
            .map(|(emoji, users)| {
                json!({"emoji": {"id": null, "name": emoji}, "count": users.len(),
                    "count_details": {"burst": 0, "normal": users.len()}, "burst_colors": [], "me_burst": false,
                    "me": false})
            })
            .collect();
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

/// A guild channel or thread as `GuildChannelResponse` / `ThreadResponse`.
#[must_use]
pub fn channel(c: &Channel) -> Value {
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
    match c.kind {
        world::kind::TEXT => {
            v["rate_limit_per_user"] = 0.into();
            v["last_message_id"] = Value::Null;
        }
        world::kind::VOICE => {
            v["bitrate"] = 64_000.into();
            v["user_limit"] = 0.into();
            v["rtc_region"] = Value::Null;
            v["video_quality_mode"] = 1.into();
            v["rate_limit_per_user"] = 0.into();
        }
        world::kind::FORUM => {
            v["available_tags"] = c.tags.clone().into();
            v["default_reaction_emoji"] = Value::Null;
            v["default_sort_order"] = Value::Null;
            v["default_forum_layout"] = 0.into();
            v["default_thread_rate_limit_per_user"] = 0.into();
            v["rate_limit_per_user"] = 0.into();
        }
        _ => {}
    }
    if world::kind::is_thread(c.kind) {
        let object = v.as_object_mut();
        if let Some(o) = object {
            o.remove("permission_overwrites");
            o.remove("position");
        }
        v["owner_id"] = c.owner_id.unwrap_or(0).to_string().into();
        v["message_count"] = 0.into();
        v["member_count"] = 1.into();
        v["total_message_sent"] = 0.into();
        v["thread_metadata"] = json!({
            "archived": c.archived, "auto_archive_duration": 1440, "locked": false,
            "archive_timestamp": iso8601(SystemTime::now()), "create_timestamp": iso8601(SystemTime::now()),
        });
    }
    v
}

/// A role as `GuildRoleResponse`.
#[must_use]
pub fn role(r: &Role) -> Value {
    json!({
        "id": r.id.to_string(), "name": r.name, "permissions": r.permissions, "position": r.position,
        "color": r.color, "colors": {"primary_color": r.color, "secondary_color": null, "tertiary_color": null},
        "hoist": false, "managed": false, "mentionable": false, "icon": null, "unicode_emoji": null, "flags": 0,
    })
}

/// A webhook as `GuildIncomingWebhookResponse`.
#[must_use]
pub fn webhook(w: &Webhook, app_id: u64, bot: &User) -> Value {
    json!({
        "application_id": app_id.to_string(), "avatar": null, "channel_id": w.channel_id.to_string(),
        "guild_id": w.guild_id.to_string(), "id": w.id.to_string(), "name": w.name, "type": 1,
        "user": account(bot), "token": w.token,
    })
}

/// A member as the gateway shows one.
#[must_use]
pub fn member(world: &World, guild: u64, user_id: u64) -> Value {
    let roles: Vec<String> = world
        .guilds
        .get(&guild)
        .and_then(|g| g.members.get(&user_id))
        .map(|r| r.iter().map(u64::to_string).collect())
        .unwrap_or_default();
    let mut m = json!({"roles": roles, "joined_at": iso8601(world.now()), "deaf": false, "mute": false, "flags": 0});
    if let Some(u) = world.users.get(&user_id) {
        m["user"] = account(u);
    }
    m
}

/// A voice state as VOICE_STATE_UPDATE and GUILD_CREATE carry it; `channel` `None`: left.
#[must_use]
pub fn voice_state(world: &World, guild: u64, user: u64, channel: Option<u64>, session_id: &str) -> Value {
    json!({
        "guild_id": guild.to_string(), "channel_id": channel.map(|c| c.to_string()), "user_id": user.to_string(),
        "member": member(world, guild, user), "session_id": session_id, "deaf": false, "mute": false,
        "self_deaf": false, "self_mute": false, "self_video": false, "suppress": false,
        "request_to_speak_timestamp": null,
    })
}

fn voice_states(world: &World, guild: u64) -> Vec<Value> {
    let states = world.voice_states.get(&guild).into_iter().flatten();
    states.map(|(user, s)| voice_state(world, guild, *user, Some(s.channel), &s.session_id)).collect()
}

/// A guild as GUILD_CREATE shows it.
#[must_use]
pub fn guild_create(world: &World, guild: u64) -> Value {
    let Some(g) = world.guilds.get(&guild) else { return Value::Null };
    let in_guild = |c: &&Channel| c.guild_id == guild;
    let channels: Vec<Value> =
        world.channels.values().filter(in_guild).filter(|c| !world::kind::is_thread(c.kind)).map(channel).collect();
    let threads: Vec<Value> = world
        .channels
        .values()
        .filter(in_guild)
        .filter(|c| world::kind::is_thread(c.kind) && !c.archived)
        .map(channel)
        .collect();
    let roles: Vec<Value> = world.roles.values().filter(|r| r.guild_id == guild).map(role).collect();
    let members: Vec<Value> = g.members.keys().map(|u| member(world, guild, *u)).collect();
    json!({
        "id": g.id.to_string(), "name": g.name, "icon": null, "owner_id": g.owner_id.to_string(),
        "afk_channel_id": null, "afk_timeout": 300, "verification_level": 0, "default_message_notifications": 0,
        "explicit_content_filter": 0, "roles": roles, "emojis": [], "stickers": [], "features": [], "mfa_level": 0,
        "system_channel_id": null, "system_channel_flags": 0, "rules_channel_id": null, "vanity_url_code": null,
        "description": null, "banner": null, "premium_tier": 0, "preferred_locale": "en-US",
        "public_updates_channel_id": null, "nsfw_level": 0, "premium_progress_bar_enabled": false,
        "joined_at": iso8601(world.now()), "large": false, "unavailable": false,
        "member_count": g.members.len(), "members": members, "channels": channels, "threads": threads,
        "presences": [], "voice_states": voice_states(world, guild), "stage_instances": [], "guild_scheduled_events": [],
    })
}
