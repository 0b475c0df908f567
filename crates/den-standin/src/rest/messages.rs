//! Messages: create (with files), read, list, edit, delete; typing.

use std::time::Duration;

use serde_json::Value;

use super::{Cx, OpResult, err, snowflake};
use crate::json;
use crate::people::store_file;
use crate::world::{Message, World};

/// How long Discord remembers an enforced nonce ("a few minutes").
const NONCE_WINDOW: Duration = Duration::from_secs(5 * 60);

/// Who a message is by: id, name, avatar, whether a bot.
pub(super) type Author = (u64, String, Option<String>, bool);

pub(super) fn bot_author(w: &World) -> Author {
    (w.bot.id, w.bot.name.clone(), None, true)
}

/// Discord's documented 2,000-character limit (the spec says 4,000).
pub(super) fn check_content(body: &Value) -> Result<(), super::ApiError> {
    if body["content"].as_str().is_some_and(|c| c.chars().count() > 2000) {
        return Err(err(400, 50035, "Invalid Form Body: content: Must be 2000 or fewer in length."));
    }
    Ok(())
}

/// Which users and whether @everyone a message pings, after `allowed_mentions`.
pub(crate) fn pings(body: &Value) -> (Vec<u64>, bool) {
    let content = body["content"].as_str().unwrap_or("");
    let mut users = Vec::new();
    let mut rest = content;
    while let Some(start) = rest.find("<@") {
        rest = &rest[start + 2..];
        let digits: String = rest.trim_start_matches('!').chars().take_while(char::is_ascii_digit).collect();
        if let Ok(id) = digits.parse() {
            users.push(id);
        }
    }
    let everyone = content.contains("@everyone") || content.contains("@here");
    let allowed = &body["allowed_mentions"];
    if allowed.is_null() {
        return (users, everyone);
    }
    let parse: Vec<&str> =
        allowed["parse"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let listed: Vec<u64> =
        allowed["users"].as_array().map(|a| a.iter().filter_map(snowflake).collect()).unwrap_or_default();
    let users = users.into_iter().filter(|u| parse.contains(&"users") || listed.contains(u)).collect();
    (users, everyone && parse.contains(&"everyone"))
}

/// A message made of a request body (not yet stored).
pub(super) fn new_message(w: &mut World, channel_id: u64, author: Author, body: &Value) -> Message {
    let (pinged_users, pinged_everyone) = pings(body);
    Message {
        id: w.snowflake(),
        channel_id,
        author_id: author.0,
        author_name: author.1,
        author_avatar: author.2,
        author_bot: author.3,
        content: body["content"].as_str().unwrap_or("").to_owned(),
        webhook_id: None,
        reply_to: snowflake(&body["message_reference"]["message_id"]),
        flags: body["flags"].as_u64().unwrap_or(0),
        embeds: body["embeds"].as_array().cloned().unwrap_or_default(),
        components: numbered(body["components"].as_array().cloned().unwrap_or_default()),
        attachments: Vec::new(),
        pinged_users,
        pinged_everyone,
        edits: 0,
        created: w.now(),
        nonce: None,
        visible_to: None,
        interaction: None,
        reactions: vec![],
    }
}

/// Components as Discord stores them: each numbered in order (`id`, unless
/// the bot chose one) and select menus with their default value counts.
fn numbered(mut rows: Vec<Value>) -> Vec<Value> {
    fn walk(c: &mut Value, next: &mut u64) {
        let Some(obj) = c.as_object_mut() else { return };
        if !obj.contains_key("id") {
            obj.insert("id".into(), (*next).into());
        }
        *next += 1;
        if matches!(obj.get("type").and_then(Value::as_u64), Some(3 | 5..=8)) {
            obj.entry("min_values").or_insert(1.into());
            obj.entry("max_values").or_insert(1.into());
        }
        if let Some(children) = obj.get_mut("components").and_then(Value::as_array_mut) {
            for child in children {
                walk(child, next);
            }
        }
    }
    let mut next = 1;
    for row in &mut rows {
        walk(row, &mut next);
    }
    rows
}

/// Applies an edit's fields.
pub(super) fn edit_message(m: &mut Message, body: &Value) {
    if let Some(c) = body.get("content").and_then(Value::as_str) {
        m.content = c.to_owned();
        let (users, everyone) = pings(body);
        m.pinged_users = users;
        m.pinged_everyone = everyone;
    }
    if let Some(e) = body.get("embeds").and_then(Value::as_array) {
        m.embeds = e.clone();
    }
    if let Some(c) = body.get("components").and_then(Value::as_array) {
        m.components = numbered(c.clone());
    }
    m.flags &= !128; // no longer "thinking"
    m.edits += 1;
}

pub(super) fn create(cx: &mut Cx<'_>) -> OpResult {
    let channel = cx.id("channel_id")?;
    let guild = cx.world.guild_of(channel).ok_or_else(|| err(404, 10003, "Unknown Channel"))?;
    check_content(cx.body)?;
    let author = bot_author(cx.world);
    let nonce = match &cx.body["nonce"] {
        Value::String(n) => Some(n.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let cdn = cx.cdn();
    // `enforce_nonce`: a second create with the same nonce by the same
    // author in the same channel within minutes answers the first message.
    if let Some(n) = nonce.as_ref().filter(|_| cx.body["enforce_nonce"] == true) {
        let now = cx.world.now();
        if let Some(first) = cx.world.messages.values().find(|m| {
            m.channel_id == channel
                && m.author_id == author.0
                && m.nonce.as_ref() == Some(n)
                && now.duration_since(m.created).unwrap_or_default() < NONCE_WINDOW
        }) {
            return Ok((200, json::message(first, &cdn)));
        }
    }
    let mut m = new_message(cx.world, channel, author, cx.body);
    m.nonce = nonce;
    for file in std::mem::take(&mut cx.files) {
        m.attachments.push(store_file(cx.world, file));
    }
    let json = json::message(&m, &cdn);
    cx.world.messages.insert(m.id, m);
    cx.shared.dispatch_message(&json, guild);
    Ok((200, json))
}

/// Answers message `id` (channel routes, webhook routes and interaction routes alike).
pub(super) fn read(cx: &Cx<'_>, id: u64) -> OpResult {
    let m = cx.world.messages.get(&id).ok_or_else(|| err(404, 10008, "Unknown Message"))?;
    Ok((200, json::message(m, &cx.cdn())))
}

/// Applies the request's edit to message `id` and answers it.
pub(super) fn edit(cx: &mut Cx<'_>, id: u64) -> OpResult {
    check_content(cx.body)?;
    let cdn = cx.cdn();
    let m = cx.world.messages.get_mut(&id).ok_or_else(|| err(404, 10008, "Unknown Message"))?;
    edit_message(m, cx.body);
    Ok((200, json::message(m, &cdn)))
}

/// Deletes message `id`.
pub(super) fn remove(cx: &mut Cx<'_>, id: u64) -> OpResult {
    cx.world.messages.remove(&id).ok_or_else(|| err(404, 10008, "Unknown Message"))?;
    Ok((204, Value::Null))
}

pub(super) fn get(cx: &mut Cx<'_>) -> OpResult {
    let id = cx.id("message_id")?;
    read(cx, id)
}

pub(super) fn list(cx: &mut Cx<'_>) -> OpResult {
    let channel = cx.id("channel_id")?;
    let number = |k: &str| cx.query.get(k).and_then(|v| v.parse::<u64>().ok());
    let limit = number("limit").unwrap_or(50).clamp(1, 100) as usize;
    let (before, after) = (number("before"), number("after"));
    let cdn = cx.cdn();
    // Ephemeral messages belong to one person's screen: channel reads never show them.
    let list: Vec<Value> = cx
        .world
        .messages
        .values()
        .rev()
        .filter(|m| m.channel_id == channel && m.visible_to.is_none())
        .filter(|m| before.is_none_or(|b| m.id < b) && after.is_none_or(|a| m.id > a))
        .take(limit)
        .map(|m| json::message(m, &cdn))
        .collect();
    Ok((200, list.into()))
}

pub(super) fn update(cx: &mut Cx<'_>) -> OpResult {
    let id = cx.id("message_id")?;
    if cx.world.messages.get(&id).is_some_and(|m| m.author_id != cx.world.bot.id) {
        return Err(err(403, 50005, "Cannot edit a message authored by another user"));
    }
    edit(cx, id)
}

pub(super) fn delete(cx: &mut Cx<'_>) -> OpResult {
    let id = cx.id("message_id")?;
    remove(cx, id)
}

/// `PUT .../reactions/{emoji}/@me`: the bot reacts.
pub(super) fn react(cx: &mut Cx<'_>) -> OpResult {
    let (channel, message) = (cx.id("channel_id")?, cx.id("message_id")?);
    let emoji = crate::people::decode_emoji(&cx.param("emoji_name"))?;
    let bot = cx.world.bot.id;
    crate::people::add_reaction(cx.shared, cx.world, bot, channel, message, &emoji)?;
    Ok((204, Value::Null))
}

/// `DELETE .../reactions/{emoji}/@me`.
pub(super) fn unreact(cx: &mut Cx<'_>) -> OpResult {
    let message = cx.id("message_id")?;
    let emoji = crate::people::decode_emoji(&cx.param("emoji_name"))?;
    let bot = cx.world.bot.id;
    let m = cx.world.messages.get_mut(&message).ok_or_else(|| err(404, 10008, "Unknown Message"))?;
    m.unreact(bot, &emoji);
    Ok((204, Value::Null))
}

pub(super) fn typing(cx: &mut Cx<'_>) -> OpResult {
    cx.world.guild_of(cx.id("channel_id")?).ok_or_else(|| err(404, 10003, "Unknown Channel"))?;
    Ok((204, Value::Null))
}
