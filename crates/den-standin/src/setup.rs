//! Building the world, as a server's owner would: people, bots, guilds,
//! roles, channels.

use crate::events::Part;
use crate::perms;
use crate::server::Standin;
use crate::world::{Channel, Guild, Role, User, kind};

impl Standin {
    /// Adds a person.
    pub fn add_user(&self, name: &str) -> u64 {
        let mut w = self.shared.world();
        let id = w.snowflake();
        w.users.insert(id, User { id, name: name.into(), bot: false });
        id
    }

    /// Adds another bot account a bot may post as (a persona's own bot), a
    /// member of every guild; returns its user id and token.
    pub fn add_bot_account(&self, name: &str) -> (u64, String) {
        let mut w = self.shared.world();
        let token = format!("bot-token-{}", w.snowflake());
        let user = w.add_bot(name, &token);
        (user.id, token)
    }

    /// Adds a bot account of another application, seen in channels but never connected.
    pub fn add_bot_user(&self, name: &str) -> u64 {
        let mut w = self.shared.world();
        let id = w.snowflake();
        w.users.insert(id, User { id, name: name.into(), bot: true });
        id
    }

    /// Adds a guild owned by `owner`, with its @everyone role and the
    /// application's bot and other bot accounts as members.
    pub fn add_guild(&self, name: &str, owner: u64) -> u64 {
        let id = {
            let mut w = self.shared.world();
            let id = w.snowflake();
            let everyone = Role {
                id,
                guild_id: id,
                name: "@everyone".into(),
                permissions: perms::EVERYONE_DEFAULT.to_string(),
                position: 0,
                color: 0,
            };
            w.roles.insert(id, everyone);
            let bots = std::iter::once(w.bot.id).chain(w.other_bots.values().map(|b| b.id));
            let members = std::iter::once(owner).chain(bots).map(|u| (u, vec![])).collect();
            w.guilds.insert(id, Guild { id, name: name.into(), owner_id: owner, members });
            id
        };
        self.shared.touch(Part::All, None);
        id
    }

    /// Adds `user` to `guild`.
    pub fn add_member(&self, guild: u64, user: u64) {
        if let Some(g) = self.shared.world().guilds.get_mut(&guild) {
            g.members.insert(user, Vec::new());
        }
        self.shared.touch(Part::Members, None);
    }

    /// Gives a member a role.
    pub fn add_member_role(&self, guild: u64, user: u64, role: u64) {
        if let Some(g) = self.shared.world().guilds.get_mut(&guild) {
            g.members.entry(user).or_default().push(role);
        }
        self.shared.touch(Part::Members, None);
    }

    /// Adds a guild that lands on shard `shard` of `total` (`(id >> 22) % total`).
    pub fn add_guild_on_shard(&self, name: &str, owner: u64, shard: u64, total: u64) -> u64 {
        loop {
            let id = self.add_guild(name, owner);
            if (id >> 22) % total == shard {
                return id;
            }
            // Not on that shard: drop it and draw another id.
            let mut w = self.shared.world();
            w.guilds.remove(&id);
            w.roles.remove(&id);
            drop(w);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Adds a text channel.
    pub fn add_text_channel(&self, guild: u64, name: &str) -> u64 {
        self.add_channel(guild, name, kind::TEXT, None)
    }

    /// Adds a category, as servers have ("Text Channels").
    pub fn add_category(&self, guild: u64, name: &str) -> u64 {
        self.add_channel(guild, name, kind::CATEGORY, None)
    }

    /// Adds a channel of type `kind` (see [`kind`]) under `parent`.
    pub fn add_channel(&self, guild: u64, name: &str, kind: u8, parent: Option<u64>) -> u64 {
        let id = {
            let mut w = self.shared.world();
            let id = w.snowflake();
            let position = w.channels.values().filter(|c| c.guild_id == guild).count() as i64;
            w.channels.insert(
                id,
                Channel {
                    id,
                    guild_id: guild,
                    kind,
                    name: name.into(),
                    topic: None,
                    parent_id: parent,
                    position,
                    overwrites: vec![],
                    tags: vec![],
                    owner_id: None,
                    archived: false,
                },
            );
            id
        };
        self.shared.touch(Part::Channels, None);
        id
    }

    /// Adds a role to a guild, as its admins would.
    pub fn add_role(&self, guild: u64, name: &str) -> u64 {
        self.add_role_with(guild, name, 0, 0)
    }

    /// Adds a role with permission bits and a colour.
    pub fn add_role_with(&self, guild: u64, name: &str, permissions: u64, color: u32) -> u64 {
        let id = {
            let mut w = self.shared.world();
            let id = w.snowflake();
            let position = w.roles.values().filter(|r| r.guild_id == guild).count() as i64;
            let role =
                Role { id, guild_id: guild, name: name.into(), permissions: permissions.to_string(), position, color };
            w.roles.insert(id, role);
            id
        };
        self.shared.touch(Part::Roles, None);
        id
    }

    /// Hides `channel` from @everyone and shows it to `role`, as a server's
    /// admin does for a staff channel.
    pub fn make_private(&self, channel: u64, role: u64) {
        {
            let mut w = self.shared.world();
            let Some(guild) = w.guild_of(channel) else { return };
            let view = perms::VIEW_CHANNEL.to_string();
            if let Some(c) = w.channels.get_mut(&channel) {
                c.overwrites = vec![
                    serde_json::json!({"id": guild.to_string(), "type": 0, "allow": "0", "deny": view}),
                    serde_json::json!({"id": role.to_string(), "type": 0, "allow": view, "deny": "0"}),
                ];
            }
        }
        self.shared.touch(Part::Channels, None);
    }
}
