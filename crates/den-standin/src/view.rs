//! The world as one person sees it: the channels they may view, the
//! messages meant for them, the commands they may use. Pages draw these.
//!
//! Messages are Discord's own `MessageResponse` JSON plus a few fields a
//! client would work out for itself (`den_view`): whether it is ephemeral
//! and for whom, whether its answer is still loading, who used the command
//! it answers, and a glimpse of the message it replies to.

use serde::Serialize;
use serde_json::{Value, json};

use crate::json;
use crate::perms;
use crate::world::{Message, World, kind};

/// A person of the guild, as a member list shows them.
#[derive(Clone, Debug, Serialize)]
pub struct Person {
    /// Snowflake, as a string (JavaScript numbers lose snowflakes).
    pub id: String,
    /// Name.
    pub name: String,
    /// A bot account.
    pub bot: bool,
    /// Names of their roles, highest first.
    pub roles: Vec<String>,
    /// Owns the guild.
    pub owner: bool,
}

/// A channel in the list.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelView {
    /// Snowflake.
    pub id: String,
    /// Name.
    pub name: String,
    /// Discord channel type.
    pub kind: u8,
    /// Category or, for a thread, its channel.
    pub parent_id: Option<String>,
    /// Sort position.
    pub position: i64,
    /// Hidden from @everyone.
    pub private: bool,
    /// Topic.
    pub topic: Option<String>,
    /// Names of who is in it, for a voice channel.
    pub voice: Vec<String>,
    /// Names of those sending audio there now (den playing).
    pub speaking: Vec<String>,
}

/// A guild as one person sees it.
#[derive(Clone, Debug, Serialize)]
pub struct GuildView {
    /// Guild snowflake.
    pub id: String,
    /// Guild name.
    pub name: String,
    /// The viewer.
    pub me: Person,
    /// Everyone in the guild.
    pub people: Vec<Person>,
    /// Channels, categories and live threads the viewer can see, sorted.
    pub channels: Vec<ChannelView>,
    /// Commands the viewer may use here (`default_member_permissions` honoured).
    pub commands: Vec<Value>,
}

fn person(world: &World, guild: u64, user: u64) -> Option<Person> {
    let u = world.users.get(&user).cloned().or_else(|| (world.bot.id == user).then(|| world.bot.clone()))?;
    let g = world.guilds.get(&guild)?;
    let mut roles: Vec<_> = g.members.get(&user).into_iter().flatten().filter_map(|r| world.roles.get(r)).collect();
    roles.sort_by_key(|r| std::cmp::Reverse(r.position));
    Some(Person {
        id: u.id.to_string(),
        name: u.name,
        bot: u.bot,
        roles: roles.iter().map(|r| r.name.clone()).collect(),
        owner: g.owner_id == user,
    })
}

/// Names of those in voice channel `channel` (only those sending audio, with `speaking`).
fn in_voice(world: &World, guild: u64, channel: u64, speaking: bool) -> Vec<String> {
    let states = world.voice_states.get(&guild).into_iter().flatten();
    states
        .filter(|(_, s)| s.channel == channel && (s.speaking || !speaking))
        .filter_map(|(u, _)| world.users.get(u).or_else(|| (world.bot.id == *u).then_some(&world.bot)))
        .map(|u| u.name.clone())
        .collect()
}

/// Channels sorted as Discord lists them: categories by position, each
/// followed by its channels (text before voice), threads under their channel.
fn sorted_channels(world: &World, guild: u64, viewer: u64) -> Vec<ChannelView> {
    let view = |c: &crate::world::Channel| ChannelView {
        id: c.id.to_string(),
        name: c.name.clone(),
        kind: c.kind,
        parent_id: c.parent_id.map(|p| p.to_string()),
        position: c.position,
        private: perms::is_private(world, c.id),
        topic: c.topic.clone(),
        voice: in_voice(world, guild, c.id, false),
        speaking: in_voice(world, guild, c.id, true),
    };
    let visible: Vec<_> = world
        .channels
        .values()
        .filter(|c| c.guild_id == guild && !c.archived && perms::can_view(world, c.id, viewer))
        .collect();
    let order = |c: &&crate::world::Channel| (u8::from(c.kind == kind::VOICE), c.position, c.id);
    let children = |parent: Option<u64>| {
        let mut v: Vec<_> = visible
            .iter()
            .copied()
            .filter(|c| c.parent_id == parent && c.kind != kind::CATEGORY && !kind::is_thread(c.kind))
            .collect();
        v.sort_by_key(order);
        v
    };
    let mut out = Vec::new();
    let push_with_threads = |c: &crate::world::Channel, out: &mut Vec<ChannelView>| {
        out.push(view(c));
        let mut threads: Vec<_> =
            visible.iter().filter(|t| kind::is_thread(t.kind) && t.parent_id == Some(c.id)).collect();
        threads.sort_by_key(|t| t.id);
        out.extend(threads.into_iter().map(|t| view(t)));
    };
    for c in children(None) {
        push_with_threads(c, &mut out);
    }
    let mut categories: Vec<_> = visible.iter().copied().filter(|c| c.kind == kind::CATEGORY).collect();
    categories.sort_by_key(|c| (c.position, c.id));
    for cat in categories {
        let inside = children(Some(cat.id));
        // Discord hides a category whose channels are all hidden, unless one may manage it.
        if inside.is_empty() && perms::in_channel(world, cat.id, viewer) & perms::MANAGE_CHANNELS == 0 {
            continue;
        }
        out.push(view(cat));
        for c in inside {
            push_with_threads(c, &mut out);
        }
    }
    out
}

fn command_allowed(command: &Value, allowed: u64) -> bool {
    let needed = match &command["default_member_permissions"] {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    };
    needed & allowed == needed
}

/// `guild` as `viewer` sees it; `None` when either is unknown.
#[must_use]
pub fn guild(world: &World, guild: u64, viewer: u64) -> Option<GuildView> {
    let g = world.guilds.get(&guild)?;
    let me = person(world, guild, viewer)?;
    let mut people: Vec<_> = g.members.keys().filter_map(|u| person(world, guild, *u)).collect();
    people.sort_by(|a, b| (a.bot, &a.name).cmp(&(b.bot, &b.name)));
    let allowed = perms::base(world, guild, viewer);
    let commands = world.commands.visible_in(guild).into_iter().filter(|c| command_allowed(c, allowed)).collect();
    Some(GuildView {
        id: guild.to_string(),
        name: g.name.clone(),
        me,
        people,
        channels: sorted_channels(world, guild, viewer),
        commands,
    })
}

fn seen_by(m: &Message, viewer: u64) -> bool {
    m.visible_to.is_none_or(|u| u == viewer)
}

/// One message with the fields a client works out for itself.
fn message(world: &World, m: &Message, viewer: u64, cdn: &str) -> Value {
    let mut v = json::message(m, cdn);
    let used_by = m.interaction.as_ref().map(|(k, name, user)| {
        let who = world.users.get(user).map_or("someone", |u| u.name.as_str());
        json!({"type": k, "name": name, "user": who})
    });
    let replied = m.reply_to.and_then(|r| world.messages.get(&r)).map(|r| {
        let glimpse: String = r.content.chars().take(80).collect();
        json!({"author": r.author_name, "content": glimpse})
    });
    v["den_view"] = json!({
        "ephemeral": m.visible_to.is_some(),
        "loading": m.flags & 128 != 0,
        "edits": m.edits,
        "interaction": used_by,
        "replied": replied,
        "reactions": m.reactions.iter().map(|(emoji, users)| {
            json!({"emoji": emoji, "count": users.len(), "mine": users.contains(&viewer)})
        }).collect::<Vec<_>>(),
    });
    v
}

/// The last `limit` messages of `channel` that `viewer` may read, oldest
/// first; `None` when they may not view the channel.
#[must_use]
pub fn messages(world: &World, channel: u64, viewer: u64, limit: usize, cdn: &str) -> Option<Vec<Value>> {
    if !perms::can_view(world, channel, viewer) {
        return None;
    }
    let mine: Vec<&Message> =
        world.messages.values().filter(|m| m.channel_id == channel && seen_by(m, viewer)).collect();
    let skip = mine.len().saturating_sub(limit);
    Some(mine[skip..].iter().map(|m| message(world, m, viewer, cdn)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_needing_manage_guild_is_hidden_from_a_member() {
        let c = json!({"name": "x", "default_member_permissions": "32"});
        assert!(!command_allowed(&c, perms::EVERYONE_DEFAULT));
        assert!(command_allowed(&c, perms::ALL));
        assert!(command_allowed(&json!({"name": "y"}), 0));
    }
}
