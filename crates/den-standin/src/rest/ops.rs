//! The operations the stand-in implements, by the spec's `operationId`.

use std::collections::HashMap;

use serde_json::Value;

use super::{Cx, OpResult, app, err, guilds, interactions, messages, snowflake, webhooks};
use crate::events::Part;
use crate::world::World;

type Handler = fn(&mut Cx<'_>) -> OpResult;

/// Every implemented operation and its handler.
pub(crate) const HANDLERS: &[(&str, Handler)] = &[
    ("get_gateway", app::gateway),
    ("get_bot_gateway", app::bot_gateway),
    ("get_my_user", app::my_user),
    ("get_user", app::user),
    ("get_my_application", app::my_application),
    ("get_my_oauth2_application", app::my_application),
    ("bulk_set_application_commands", app::set_commands),
    ("bulk_set_guild_application_commands", app::set_commands),
    ("list_application_commands", app::list_commands),
    ("list_guild_application_commands", app::list_commands),
    ("create_message", messages::create),
    ("get_message", messages::get),
    ("list_messages", messages::list),
    ("update_message", messages::update),
    ("delete_message", messages::delete),
    ("trigger_typing_indicator", messages::typing),
    ("add_my_message_reaction", messages::react),
    ("delete_my_message_reaction", messages::unreact),
    ("create_webhook", webhooks::create),
    ("list_channel_webhooks", webhooks::list),
    ("get_webhook", webhooks::get),
    ("delete_webhook", webhooks::delete),
    ("execute_webhook", webhooks::execute),
    ("get_webhook_message", webhooks::get_message),
    ("update_webhook_message", webhooks::update_message),
    ("delete_webhook_message", webhooks::delete_message),
    ("create_interaction_response", interactions::callback),
    ("get_original_webhook_message", interactions::get_original),
    ("update_original_webhook_message", interactions::update_original),
    ("delete_original_webhook_message", interactions::delete_original),
    ("get_channel", guilds::get_channel),
    ("list_guild_channels", guilds::list_channels),
    ("create_guild_channel", guilds::create_channel),
    ("update_channel", guilds::update_channel),
    ("delete_channel", guilds::delete_channel),
    ("create_thread", guilds::create_thread),
    ("create_thread_from_message", guilds::create_thread),
    ("list_guild_roles", guilds::list_roles),
    ("create_guild_role", guilds::create_role),
    ("delete_guild_role", guilds::delete_role),
    ("get_guild_member", guilds::member),
    ("add_guild_member_role", guilds::add_member_role),
    ("delete_guild_member_role", guilds::remove_member_role),
];

/// Runs operation `op`.
pub(crate) fn run(op: &str, cx: &mut Cx<'_>) -> OpResult {
    match HANDLERS.iter().find(|(id, _)| *id == op) {
        Some((_, handler)) => handler(cx),
        None => Err(err(501, 0, &format!("the Discord stand-in does not implement {op} yet"))),
    }
}

/// What part of the world a successful write of `op` changed.
pub(crate) fn changed(op: &str, params: &HashMap<String, String>, body: &Value, world: &World) -> (Part, Option<u64>) {
    // Where the message landed: the path, the answer, or what the token or webhook belongs to.
    let channel = || {
        params
            .get("channel_id")
            .and_then(|c| c.parse().ok())
            .or_else(|| snowflake(&body["channel_id"]))
            .or_else(|| {
                let token = params.get("interaction_token").or_else(|| params.get("webhook_token"))?;
                world.interactions.get(token).map(|i| i.channel_id)
            })
            .or_else(|| {
                let webhook = params.get("webhook_id")?.parse().ok()?;
                world.webhooks.get(&webhook).map(|w| w.channel_id)
            })
    };
    if op.contains("command") {
        (Part::Commands, None)
    } else if op.contains("role") && op.contains("member") {
        (Part::Members, None)
    } else if op.contains("role") {
        (Part::Roles, None)
    } else if op.contains("thread") || op.ends_with("channel") {
        (Part::Channels, None)
    } else {
        // Messages, webhooks posting them, interaction answers: a page looks at the channel again.
        (Part::Messages, channel())
    }
}
