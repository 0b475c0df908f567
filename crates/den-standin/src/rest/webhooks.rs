//! Webhooks: create, list, delete, execute (a persona's name and avatar), and
//! their messages. Interaction follow-ups also use the execute route.

use serde_json::Value;

use super::messages::{self, check_content, new_message};
use super::{Cx, OpResult, err, interactions};
use crate::json;
use crate::people::store_file;
use crate::world::Webhook;

fn invalid_name(name: &str) -> bool {
    let lower = name.to_lowercase();
    lower.contains("clyde") || lower.contains("discord")
}

pub(super) fn create(cx: &mut Cx<'_>) -> OpResult {
    let channel = cx.id("channel_id")?;
    let guild = cx.world.guild_of(channel).ok_or_else(|| err(404, 10003, "Unknown Channel"))?;
    let name = cx.body["name"].as_str().unwrap_or("");
    if invalid_name(name) {
        return Err(err(400, 50035, "Invalid Form Body: name: Username cannot contain \"clyde\" or \"discord\""));
    }
    if cx.world.webhooks.values().filter(|w| w.channel_id == channel).count() >= 15 {
        return Err(err(400, 30007, "Maximum number of webhooks reached (15)"));
    }
    let w = Webhook {
        id: cx.world.snowflake(),
        token: format!("wh-token-{}", cx.world.snowflake()),
        channel_id: channel,
        guild_id: guild,
        name: name.to_owned(),
    };
    let json = json::webhook(&w, cx.world.app_id, &cx.world.bot);
    cx.world.webhooks.insert(w.id, w);
    Ok((200, json))
}

pub(super) fn list(cx: &mut Cx<'_>) -> OpResult {
    let channel = cx.id("channel_id")?;
    let w = &cx.world;
    let list: Vec<Value> =
        w.webhooks.values().filter(|h| h.channel_id == channel).map(|h| json::webhook(h, w.app_id, &w.bot)).collect();
    Ok((200, list.into()))
}

pub(super) fn get(cx: &mut Cx<'_>) -> OpResult {
    let w = &cx.world;
    let h = w.webhooks.get(&cx.id("webhook_id")?).ok_or_else(|| err(404, 10015, "Unknown Webhook"))?;
    Ok((200, json::webhook(h, w.app_id, &w.bot)))
}

pub(super) fn delete(cx: &mut Cx<'_>) -> OpResult {
    cx.world.webhooks.remove(&cx.id("webhook_id")?).ok_or_else(|| err(404, 10015, "Unknown Webhook"))?;
    Ok((204, Value::Null))
}

pub(super) fn execute(cx: &mut Cx<'_>) -> OpResult {
    check_content(cx.body)?;
    let webhook_id = cx.id("webhook_id")?;
    let token = cx.param("webhook_token");
    if webhook_id == cx.world.app_id {
        return interactions::followup(cx, &token);
    }
    let wait = cx.query.get("wait").is_some_and(|w| w == "true");
    let w = cx.world.webhooks.get(&webhook_id).cloned().ok_or_else(|| err(404, 10015, "Unknown Webhook"))?;
    if w.token != token {
        return Err(err(401, 50027, "Invalid Webhook Token"));
    }
    if let Some(name) = cx.body["username"].as_str()
        && (invalid_name(name) || name.is_empty() || name.chars().count() > 80)
    {
        return Err(err(400, 50035, "Invalid Form Body: username"));
    }
    let name = cx.body["username"].as_str().unwrap_or(&w.name).to_owned();
    let avatar = cx.body["avatar_url"].as_str().map(str::to_owned);
    let mut m = new_message(cx.world, w.channel_id, (w.id, name, avatar, true), cx.body);
    m.webhook_id = Some(w.id);
    for file in std::mem::take(&mut cx.files) {
        m.attachments.push(store_file(cx.world, file));
    }
    let json = json::message(&m, &cx.cdn());
    cx.world.messages.insert(m.id, m);
    cx.shared.dispatch_message(&json, w.guild_id);
    Ok(if wait { (200, json) } else { (204, Value::Null) })
}

/// The id of a message a webhook (or an interaction) posted, after checking the token.
fn own_message(cx: &mut Cx<'_>) -> Result<u64, super::ApiError> {
    let webhook_id = cx.id("webhook_id")?;
    let token = cx.param("webhook_token");
    if webhook_id == cx.world.app_id {
        interactions::live(cx.world, webhook_id, &token)?;
    } else {
        let w = cx.world.webhooks.get(&webhook_id).ok_or_else(|| err(404, 10015, "Unknown Webhook"))?;
        if w.token != token {
            return Err(err(401, 50027, "Invalid Webhook Token"));
        }
    }
    let mid = cx.id("message_id")?;
    match cx.world.messages.get(&mid) {
        Some(m) if m.webhook_id.is_none_or(|w| w == webhook_id) => Ok(mid),
        _ => Err(err(404, 10008, "Unknown Message")),
    }
}

pub(super) fn get_message(cx: &mut Cx<'_>) -> OpResult {
    let id = own_message(cx)?;
    messages::read(cx, id)
}

pub(super) fn update_message(cx: &mut Cx<'_>) -> OpResult {
    let id = own_message(cx)?;
    messages::edit(cx, id)
}

pub(super) fn delete_message(cx: &mut Cx<'_>) -> OpResult {
    let id = own_message(cx)?;
    messages::remove(cx, id)
}
