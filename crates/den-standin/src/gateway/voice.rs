//! Voice states: a bot's op 4 and people joining or leaving voice channels
//! become VOICE_STATE_UPDATE for everyone with GUILD_VOICE_STATES, and a bot
//! that joins gets VOICE_SERVER_UPDATE naming the stand-in's voice server.

use serde_json::{Value, json};

use super::GUILD_VOICE_STATES;
use crate::events::Part;
use crate::server::Shared;
use crate::world::{VoiceState, kind};

fn id(v: &Value) -> Option<u64> {
    v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_u64())
}

/// Sets `user`'s voice state in `guild` (`None`: left) and tells every bot
/// that listens. `false` when `channel` is not a voice channel of `guild`.
pub(crate) fn set_state(shared: &Shared, guild: u64, user: u64, channel: Option<u64>, session_id: &str) -> bool {
    let data = {
        let mut w = shared.world();
        if let Some(c) = channel
            && !w.channels.get(&c).is_some_and(|ch| ch.guild_id == guild && ch.kind == kind::VOICE)
        {
            return false;
        }
        let states = w.voice_states.entry(guild).or_default();
        match channel {
            Some(c) => states.insert(user, VoiceState { channel: c, session_id: session_id.into(), speaking: false }),
            None => states.remove(&user),
        };
        crate::json::voice_state(&w, guild, user, channel, session_id)
    };
    shared.hub().dispatch("VOICE_STATE_UPDATE", &data, Some(guild), GUILD_VOICE_STATES, None);
    shared.touch(Part::Voice, channel);
    true
}

/// A bot's op 4 on gateway session `session`: joins (with a call granted on
/// the voice server and VOICE_SERVER_UPDATE to that session) or leaves.
pub(crate) fn bot_update(shared: &Shared, session: &str, account: u64, d: &Value) {
    let Some(guild) = id(&d["guild_id"]) else { return };
    let channel = id(&d["channel_id"]);
    let same = shared.world().voice_states.get(&guild).and_then(|s| s.get(&account)).cloned();
    let voice_session = match &same {
        Some(s) if Some(s.channel) == channel => s.session_id.clone(),
        _ => format!("{:032x}", rand::random::<u128>()),
    };
    if !set_state(shared, guild, account, channel, &voice_session) {
        return;
    }
    match channel {
        Some(c) => {
            let token = format!("{:016x}", rand::random::<u64>());
            shared.voice.grant(guild, c, account, &voice_session, &token);
            let data = json!({"token": token, "guild_id": guild.to_string(), "endpoint": shared.voice.endpoint()});
            shared.hub().dispatch_to(session, "VOICE_SERVER_UPDATE", &data);
        }
        None => shared.voice.end(guild),
    }
}

/// Discord moved `guild`'s call to another voice server: den's bot gets a
/// new token in VOICE_SERVER_UPDATE, and the connection it had is closed
/// (4015: the server went away). `false` when the bot is not in voice there.
pub(crate) fn move_server(shared: &Shared, guild: u64) -> bool {
    let bot = shared.world().bot.id;
    let Some(state) = shared.world().voice_states.get(&guild).and_then(|s| s.get(&bot)).cloned() else { return false };
    let token = format!("{:016x}", rand::random::<u64>());
    shared.voice.close(guild, 4015);
    shared.voice.grant(guild, state.channel, bot, &state.session_id, &token);
    let data = json!({"token": token, "guild_id": guild.to_string(), "endpoint": shared.voice.endpoint()});
    shared.hub().dispatch("VOICE_SERVER_UPDATE", &data, Some(guild), 0, Some(bot));
    true
}
