//! The application: its gateway, its bot user, its commands.

use serde_json::{Value, json};

use super::{Cx, OpResult, err};
use crate::json;

pub(super) fn gateway(cx: &mut Cx<'_>) -> OpResult {
    Ok((200, json!({"url": cx.shared.gateway_url})))
}

pub(super) fn bot_gateway(cx: &mut Cx<'_>) -> OpResult {
    let shared = cx.shared;
    let identifies = shared.hub().identifies.len() as u64;
    Ok((
        200,
        json!({
            "url": shared.gateway_url,
            "shards": shared.config.shards,
            "session_start_limit": {
                "total": 1000, "remaining": 1000u64.saturating_sub(identifies),
                "reset_after": 86_400_000, "max_concurrency": shared.config.max_concurrency,
            },
        }),
    ))
}

pub(super) fn my_user(cx: &mut Cx<'_>) -> OpResult {
    let mut me = json::account(&cx.world.bot);
    me["mfa_enabled"] = false.into();
    me["locale"] = "en-US".into();
    Ok((200, me))
}

pub(super) fn user(cx: &mut Cx<'_>) -> OpResult {
    let u = cx.world.users.get(&cx.id("user_id")?).ok_or_else(|| err(404, 10013, "Unknown User"))?;
    Ok((200, json::account(u)))
}

/// `GET /applications/@me` and `/oauth2/applications/@me`: the caller's application
/// (another bot's application id is its user id, as for applications made since 2019).
pub(super) fn my_application(cx: &mut Cx<'_>) -> OpResult {
    let w = &cx.world;
    let id = if w.other_bots.values().any(|b| b.id == w.bot.id) { w.bot.id } else { w.app_id };
    Ok((
        200,
        json!({
            "id": id.to_string(), "name": w.bot.name, "icon": null, "description": "", "bot_public": true, "bot_require_code_grant": false, "type": null,
            "verify_key": cx.shared.public_key_hex, "flags": 0, "flags_new": "0", "redirect_uris": [],
            "interactions_endpoint_url": null, "role_connections_verification_url": null,
            "owner": {
                "id": "1", "username": "owner", "avatar": null, "discriminator": "0000", "public_flags": 0, "flags": 0,
                "global_name": null, "mfa_enabled": false, "locale": "en-US", "primary_guild": null,
            },
            "approximate_guild_count": w.guilds.len(), "approximate_user_install_count": 0,
            "approximate_user_authorization_count": 0, "explicit_content_filter": 0, "team": null,
            "eligible_oauth2_scopes": [],
        }),
    ))
}

fn guild_param(cx: &Cx<'_>) -> Option<u64> {
    cx.params.get("guild_id").and_then(|g| g.parse().ok())
}

pub(super) fn set_commands(cx: &mut Cx<'_>) -> OpResult {
    let guild = guild_param(cx);
    let mut out = Vec::new();
    for c in cx.body.as_array().cloned().unwrap_or_default() {
        let mut v = json!({
            "id": cx.world.snowflake().to_string(), "application_id": cx.world.app_id.to_string(), "version": "1",
            // Taken as an integer (or a string), answered as a string, like Discord.
            "default_member_permissions": match c.get("default_member_permissions") {
                Some(Value::Number(n)) => Value::String(n.to_string()),
                Some(v) => v.clone(),
                None => Value::Null,
            },
            "type": c.get("type").cloned().unwrap_or(1.into()), "name": c["name"],
            "description": c.get("description").cloned().unwrap_or("".into()),
        });
        if let Some(o) = c.get("options") {
            v["options"] = o.clone();
        }
        if let Some(g) = guild {
            v["guild_id"] = g.to_string().into();
        }
        out.push(v);
    }
    cx.world.commands.set(guild, out.clone());
    Ok((200, out.into()))
}

pub(super) fn list_commands(cx: &mut Cx<'_>) -> OpResult {
    Ok((200, cx.world.commands.of(guild_param(cx)).to_vec().into()))
}
