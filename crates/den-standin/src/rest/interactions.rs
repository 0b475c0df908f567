//! Answering interactions: the first response within 3 seconds, the
//! original response's message, follow-ups; ephemeral answers are seen by
//! the person who asked alone.

use std::time::Duration;

use serde_json::Value;

use super::messages::{self, bot_author, check_content, edit_message, new_message};
use super::{Cx, OpResult, err};
use crate::json;
use crate::server::Shared;
use crate::world::{Interaction, World};

/// Interaction tokens work for 15 minutes.
const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// An interaction must get its first response within 3 seconds.
const FIRST_RESPONSE: Duration = Duration::from_secs(3);
/// Message flag: only the invoker sees it.
const EPHEMERAL: u64 = 64;
/// Message flag: "den is thinking…".
const LOADING: u64 = 128;

/// A live interaction by token, for the webhook-style routes.
pub(super) fn live<'w>(w: &'w mut World, app: u64, token: &str) -> Result<&'w mut Interaction, super::ApiError> {
    let now = w.now();
    if app != w.app_id {
        return Err(err(404, 10015, "Unknown Webhook"));
    }
    let i = w.interactions.get_mut(token).ok_or_else(|| err(401, 50027, "Invalid Webhook Token"))?;
    if now.duration_since(i.created).unwrap_or_default() > TOKEN_LIFETIME {
        return Err(err(401, 50027, "Invalid Webhook Token"));
    }
    Ok(i)
}

/// A message answering `i`, seen by its invoker alone when ephemeral; MESSAGE_CREATE otherwise.
fn answer(shared: &Shared, w: &mut World, i: &Interaction, data: &Value, loading: bool) -> u64 {
    let author = bot_author(w);
    let mut m = new_message(w, i.channel_id, author, data);
    if loading {
        m.flags |= LOADING;
    }
    if m.flags & EPHEMERAL != 0 {
        m.visible_to = Some(i.user_id);
    }
    m.interaction = Some((i.kind, i.name.clone(), i.user_id));
    let id = m.id;
    let json = json::message(&m, &shared.rest_url);
    let ephemeral = m.visible_to.is_some();
    w.messages.insert(id, m);
    if !ephemeral {
        shared.dispatch_message(&json, i.guild_id);
    }
    id
}

pub(super) fn callback(cx: &mut Cx<'_>) -> OpResult {
    let token = cx.param("interaction_token");
    let id = cx.param("interaction_id");
    respond(cx.shared, cx.world, &token, Some(&id), cx.body)
}

/// The first response to an interaction, whether the bot POSTed it to the
/// callback route (gateway interactions) or answered the stand-in's HTTP
/// request with it (`interaction_id` is then `None`: the stand-in knows which it sent).
pub(crate) fn respond(
    shared: &Shared,
    w: &mut World,
    token: &str,
    interaction_id: Option<&str>,
    body: &Value,
) -> OpResult {
    let now = w.now();
    let i = w.interactions.get(token).cloned().ok_or_else(|| err(404, 10062, "Unknown interaction"))?;
    if interaction_id.is_some_and(|id| id != i.id.to_string()) {
        return Err(err(404, 10062, "Unknown interaction"));
    }
    if i.callback.is_some() {
        return Err(err(400, 40060, "Interaction has already been acknowledged."));
    }
    if now.duration_since(i.created).unwrap_or_default() > FIRST_RESPONSE {
        return Err(err(404, 10062, "Unknown interaction"));
    }
    let kind = body["type"].as_u64().unwrap_or(0) as u8;
    let data = body.get("data").cloned().unwrap_or(Value::Null);
    let original = match kind {
        4 | 5 => {
            check_content(&data)?;
            Some(answer(shared, w, &i, &data, kind == 5))
        }
        // Components: the message the component is on is the one answered.
        6 => i.message,
        7 => {
            check_content(&data)?;
            let m = i.message.and_then(|mid| w.messages.get_mut(&mid));
            let m = m.ok_or_else(|| err(400, 50035, "Invalid Form Body: type: not a component interaction"))?;
            edit_message(m, &data);
            i.message
        }
        1 | 8 | 9 => None,
        _ => return Err(err(400, 50035, "Invalid Form Body: type")),
    };
    let entry = w.interactions.get_mut(token).ok_or_else(|| err(404, 10062, "Unknown interaction"))?;
    entry.callback = Some((kind, data));
    entry.responded_at = Some(now);
    entry.original = original;
    Ok((204, Value::Null))
}

/// `POST /webhooks/{application}/{token}`: a follow-up message.
pub(super) fn followup(cx: &mut Cx<'_>, token: &str) -> OpResult {
    let app = cx.world.app_id;
    let i = live(cx.world, app, token)?.clone();
    if i.callback.is_none() {
        return Err(err(400, 40060, "Interaction has not been acknowledged"));
    }
    let mid = answer(cx.shared, cx.world, &i, cx.body, false);
    if let Some(entry) = cx.world.interactions.get_mut(token) {
        entry.followups.push(mid);
    }
    let cdn = cx.cdn();
    Ok((200, cx.world.messages.get(&mid).map(|m| json::message(m, &cdn)).unwrap_or_default()))
}

fn original_id(cx: &mut Cx<'_>) -> Result<u64, super::ApiError> {
    let app = cx.id("webhook_id")?;
    let token = cx.param("webhook_token");
    live(cx.world, app, &token)?.original.ok_or_else(|| err(404, 10008, "Unknown Message"))
}

pub(super) fn get_original(cx: &mut Cx<'_>) -> OpResult {
    let id = original_id(cx)?;
    messages::read(cx, id)
}

pub(super) fn update_original(cx: &mut Cx<'_>) -> OpResult {
    let id = original_id(cx)?;
    messages::edit(cx, id)
}

pub(super) fn delete_original(cx: &mut Cx<'_>) -> OpResult {
    let id = original_id(cx)?;
    messages::remove(cx, id)
}
