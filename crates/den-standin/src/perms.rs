//! Discord's permission arithmetic: a member's roles, then a channel's
//! overwrites for @everyone, for the member's roles and for the member.

use serde_json::Value;

use crate::world::{self, World};

/// Every permission (`ADMINISTRATOR` grants it).
pub const ALL: u64 = 2_251_799_813_685_247;
/// Administrator.
pub const ADMINISTRATOR: u64 = 1 << 3;
/// View Channel.
pub const VIEW_CHANNEL: u64 = 1 << 10;
/// Manage Channels.
pub const MANAGE_CHANNELS: u64 = 1 << 4;
/// What @everyone may do in a new guild: view, send, read history, and the like.
pub const EVERYONE_DEFAULT: u64 = 104_324_673;

fn bits(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn snowflake(v: &Value) -> u64 {
    bits(v)
}

/// What `user` may do anywhere in `guild`.
#[must_use]
pub fn base(world: &World, guild: u64, user: u64) -> u64 {
    let Some(g) = world.guilds.get(&guild) else { return 0 };
    if g.owner_id == user {
        return ALL;
    }
    let role_bits = |id: u64| world.roles.get(&id).map_or(0, |r| r.permissions.parse::<u64>().unwrap_or(0));
    let mut p = role_bits(guild);
    for r in g.members.get(&user).into_iter().flatten() {
        p |= role_bits(*r);
    }
    if p & ADMINISTRATOR != 0 { ALL } else { p }
}

/// What `user` may do in `channel` (a thread follows its parent).
#[must_use]
pub fn in_channel(world: &World, channel: u64, user: u64) -> u64 {
    let Some(mut c) = world.channels.get(&channel) else { return 0 };
    if world::kind::is_thread(c.kind)
        && let Some(parent) = c.parent_id.and_then(|p| world.channels.get(&p))
    {
        c = parent;
    }
    let guild = c.guild_id;
    let mut p = base(world, guild, user);
    if p & ADMINISTRATOR != 0 {
        return ALL;
    }
    let roles: Vec<u64> = world.guilds.get(&guild).and_then(|g| g.members.get(&user)).cloned().unwrap_or_default();
    let mut apply = |allow: u64, deny: u64| p = (p & !deny) | allow;
    let of = |pred: &dyn Fn(&Value) -> bool| -> (u64, u64) {
        c.overwrites.iter().filter(|o| pred(o)).fold((0, 0), |(a, d), o| (a | bits(&o["allow"]), d | bits(&o["deny"])))
    };
    let (a, d) = of(&|o| snowflake(&o["id"]) == guild);
    apply(a, d);
    let (a, d) = of(&|o| bits(&o["type"]) == 0 && roles.contains(&snowflake(&o["id"])));
    apply(a, d);
    let (a, d) = of(&|o| bits(&o["type"]) == 1 && snowflake(&o["id"]) == user);
    apply(a, d);
    p
}

/// Whether `user` sees `channel`: View Channel there, and for a channel in a
/// category, nothing more (categories only group).
#[must_use]
pub fn can_view(world: &World, channel: u64, user: u64) -> bool {
    in_channel(world, channel, user) & VIEW_CHANNEL != 0
}

/// Whether @everyone is denied the channel: a private channel, as Discord marks one with a lock.
#[must_use]
pub fn is_private(world: &World, channel: u64) -> bool {
    let Some(c) = world.channels.get(&channel) else { return false };
    if c.kind == world::kind::PRIVATE_THREAD {
        return true;
    }
    c.overwrites.iter().any(|o| snowflake(&o["id"]) == c.guild_id && bits(&o["deny"]) & VIEW_CHANNEL != 0)
}
