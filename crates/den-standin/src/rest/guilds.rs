//! Guild structure: channels, categories, forums, threads, roles, members.

use serde_json::{Value, json};

use super::messages::{bot_author, new_message};
use super::{Cx, OpResult, err, snowflake};
use crate::gateway;
use crate::json;
use crate::world::{Channel, Role, kind};

/// Overwrites as Discord keeps and answers them: permission bits as strings
/// (requests may send integers).
fn stored_overwrites(v: &Value) -> Vec<Value> {
    let text = |x: &Value| match x {
        Value::Number(n) => Value::String(n.to_string()),
        other => other.clone(),
    };
    v.as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            let mut o = o.clone();
            for k in ["allow", "deny"] {
                o[k] = text(&o[k]);
            }
            o
        })
        .collect()
}

pub(super) fn get_channel(cx: &mut Cx<'_>) -> OpResult {
    let c = cx.world.channels.get(&cx.id("channel_id")?).ok_or_else(|| err(404, 10003, "Unknown Channel"))?;
    Ok((200, json::channel(c)))
}

pub(super) fn list_channels(cx: &mut Cx<'_>) -> OpResult {
    let guild = cx.id("guild_id")?;
    let list: Vec<Value> = cx
        .world
        .channels
        .values()
        .filter(|c| c.guild_id == guild && !kind::is_thread(c.kind))
        .map(json::channel)
        .collect();
    Ok((200, list.into()))
}

pub(super) fn create_channel(cx: &mut Cx<'_>) -> OpResult {
    let guild = cx.id("guild_id")?;
    let w = &mut *cx.world;
    if !w.guilds.contains_key(&guild) {
        return Err(err(404, 10004, "Unknown Guild"));
    }
    if w.channels.values().filter(|c| c.guild_id == guild).count() >= 500 {
        return Err(err(400, 30013, "Maximum number of guild channels reached (500)"));
    }
    let body = cx.body;
    let parent_id = snowflake(&body["parent_id"]);
    if let Some(p) = parent_id {
        if w.channels.get(&p).is_none_or(|c| c.kind != kind::CATEGORY) {
            return Err(err(400, 50035, "Invalid Form Body: parent_id"));
        }
        if w.channels.values().filter(|c| c.parent_id == Some(p)).count() >= 50 {
            return Err(err(
                400,
                50035,
                "Invalid Form Body: parent_id: Maximum number of channels in category reached (50)",
            ));
        }
    }
    // Like Discord: each forum tag gets an id, and its emoji fields are answered as null.
    let tags: Vec<Value> = body["available_tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            json!({"id": w.snowflake().to_string(), "name": t["name"],
                "moderated": t["moderated"].as_bool().unwrap_or(false),
                "emoji_id": t.get("emoji_id").cloned().unwrap_or(Value::Null),
                "emoji_name": t.get("emoji_name").cloned().unwrap_or(Value::Null)})
        })
        .collect();
    let c = Channel {
        id: w.snowflake(),
        guild_id: guild,
        kind: body["type"].as_u64().unwrap_or(0) as u8,
        name: body["name"].as_str().unwrap_or("").to_owned(),
        topic: body["topic"].as_str().map(str::to_owned),
        parent_id,
        position: body["position"].as_i64().unwrap_or(0),
        overwrites: stored_overwrites(&body["permission_overwrites"]),
        tags,
        owner_id: None,
        archived: false,
    };
    let json = json::channel(&c);
    w.channels.insert(c.id, c);
    cx.shared.hub().dispatch("CHANNEL_CREATE", &json, Some(guild), gateway::GUILDS, None);
    Ok((201, json))
}

pub(super) fn update_channel(cx: &mut Cx<'_>) -> OpResult {
    let body = cx.body;
    let c = cx.world.channels.get_mut(&cx.id("channel_id")?).ok_or_else(|| err(404, 10003, "Unknown Channel"))?;
    if let Some(n) = body["name"].as_str() {
        c.name = n.to_owned();
    }
    if body.get("topic").is_some() {
        c.topic = body["topic"].as_str().map(str::to_owned);
    }
    if body.get("parent_id").is_some() {
        c.parent_id = snowflake(&body["parent_id"]);
    }
    if body["permission_overwrites"].is_array() {
        c.overwrites = stored_overwrites(&body["permission_overwrites"]);
    }
    if let Some(a) = body["archived"].as_bool() {
        c.archived = a;
    }
    Ok((200, json::channel(c)))
}

pub(super) fn delete_channel(cx: &mut Cx<'_>) -> OpResult {
    let c = cx.world.channels.remove(&cx.id("channel_id")?).ok_or_else(|| err(404, 10003, "Unknown Channel"))?;
    cx.world.messages.retain(|_, m| m.channel_id != c.id);
    cx.world.webhooks.retain(|_, w| w.channel_id != c.id);
    cx.world.channels.retain(|_, t| !(kind::is_thread(t.kind) && t.parent_id == Some(c.id)));
    Ok((200, json::channel(&c)))
}

/// `POST /channels/{id}/threads` (in a forum, with its first message) and
/// `POST /channels/{id}/messages/{id}/threads`.
pub(super) fn create_thread(cx: &mut Cx<'_>) -> OpResult {
    let parent_id = cx.id("channel_id")?;
    let from_message = cx.params.get("message_id").and_then(|m| m.parse::<u64>().ok());
    let parent = cx.world.channels.get(&parent_id).cloned().ok_or_else(|| err(404, 10003, "Unknown Channel"))?;
    if kind::is_thread(parent.kind) || parent.kind == kind::CATEGORY || parent.kind == kind::VOICE {
        return Err(err(400, 50024, "Cannot execute action on this channel type"));
    }
    if from_message.is_some_and(|m| !cx.world.messages.contains_key(&m)) {
        return Err(err(404, 10008, "Unknown Message"));
    }
    let name = cx.body["name"].as_str().unwrap_or("").to_owned();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(err(400, 50035, "Invalid Form Body: name"));
    }
    let private = from_message.is_none() && parent.kind != kind::FORUM && cx.body["type"].as_u64() == Some(12);
    // A thread started from a message takes the message's id, as on Discord.
    let id = from_message.unwrap_or_else(|| cx.world.snowflake());
    let thread = Channel {
        id,
        guild_id: parent.guild_id,
        kind: if private { kind::PRIVATE_THREAD } else { kind::PUBLIC_THREAD },
        name,
        topic: None,
        parent_id: Some(parent_id),
        position: 0,
        overwrites: vec![],
        tags: vec![],
        owner_id: Some(cx.world.bot.id),
        archived: false,
    };
    let mut json = json::channel(&thread);
    cx.world.channels.insert(id, thread);
    // A forum post starts with its message.
    if parent.kind == kind::FORUM {
        let author = bot_author(cx.world);
        let m = new_message(cx.world, id, author, &cx.body["message"]);
        let message = json::message(&m, &cx.cdn());
        cx.world.messages.insert(m.id, m);
        cx.shared.dispatch_message(&message, parent.guild_id);
        json["message"] = message;
    }
    json["newly_created"] = true.into();
    cx.shared.hub().dispatch("THREAD_CREATE", &json, Some(parent.guild_id), gateway::GUILDS, None);
    Ok((201, json))
}

pub(super) fn list_roles(cx: &mut Cx<'_>) -> OpResult {
    let guild = cx.id("guild_id")?;
    let list: Vec<Value> = cx.world.roles.values().filter(|r| r.guild_id == guild).map(json::role).collect();
    Ok((200, list.into()))
}

pub(super) fn create_role(cx: &mut Cx<'_>) -> OpResult {
    let guild = cx.id("guild_id")?;
    let w = &mut *cx.world;
    if w.roles.values().filter(|r| r.guild_id == guild).count() >= 250 {
        return Err(err(400, 30005, "Maximum number of guild roles reached (250)"));
    }
    let position = w.roles.values().filter(|r| r.guild_id == guild).count() as i64;
    let everyone = w.roles.get(&guild).map(|r| r.permissions.clone()).unwrap_or_else(|| "0".into());
    let r = Role {
        id: w.snowflake(),
        guild_id: guild,
        name: cx.body["name"].as_str().unwrap_or("new role").to_owned(),
        // Like Discord: without explicit permissions a role copies @everyone's.
        permissions: match &cx.body["permissions"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => everyone,
        },
        position,
        color: cx.body["color"].as_u64().unwrap_or(0) as u32,
    };
    let json = json::role(&r);
    w.roles.insert(r.id, r);
    Ok((200, json))
}

pub(super) fn delete_role(cx: &mut Cx<'_>) -> OpResult {
    let role = cx.id("role_id")?;
    cx.world.roles.remove(&role).ok_or_else(|| err(404, 10011, "Unknown Role"))?;
    for g in cx.world.guilds.values_mut() {
        for roles in g.members.values_mut() {
            roles.retain(|r| *r != role);
        }
    }
    Ok((204, Value::Null))
}

pub(super) fn member(cx: &mut Cx<'_>) -> OpResult {
    let (guild, user) = (cx.id("guild_id")?, cx.id("user_id")?);
    if !cx.world.guilds.get(&guild).is_some_and(|g| g.members.contains_key(&user)) {
        return Err(err(404, 10007, "Unknown Member"));
    }
    Ok((200, json::member(cx.world, guild, user)))
}

pub(super) fn add_member_role(cx: &mut Cx<'_>) -> OpResult {
    set_member_role(cx, true)
}

pub(super) fn remove_member_role(cx: &mut Cx<'_>) -> OpResult {
    set_member_role(cx, false)
}

fn set_member_role(cx: &mut Cx<'_>, adding: bool) -> OpResult {
    let (guild, user, role) = (cx.id("guild_id")?, cx.id("user_id")?, cx.id("role_id")?);
    if !cx.world.roles.contains_key(&role) {
        return Err(err(404, 10011, "Unknown Role"));
    }
    let roles = cx
        .world
        .guilds
        .get_mut(&guild)
        .and_then(|g| g.members.get_mut(&user))
        .ok_or_else(|| err(404, 10007, "Unknown Member"))?;
    roles.retain(|r| *r != role);
    if adding {
        roles.push(role);
    }
    Ok((204, Value::Null))
}
