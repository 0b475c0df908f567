//! The playground's server and the people one can be in it.

use den_standin::Standin;
use den_standin::world::kind;

/// The guild's name; a saved world is recognised by it.
pub const GUILD: &str = "The Den";
/// The role of the people who run campaigns (den's `campaigns.manager_role`).
pub const GAME_MASTERS: &str = "Game Masters";
/// The channel where the coding agent takes tasks.
pub const WORKSHOP: &str = "workshop";
/// The role of the server's admins.
pub const ADMINS: &str = "Admins";

const ADMINISTRATOR: u64 = 1 << 3;

/// The people of the playground and the places they meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cast {
    /// The guild.
    pub guild: u64,
    /// Ada: owns the server, an admin.
    pub admin: u64,
    /// Ben: a member, nothing more.
    pub member: u64,
    /// Cleo: a game master.
    pub game_master: u64,
    /// The game masters' role.
    pub game_masters: u64,
    /// `#general`, where a page opens.
    pub general: u64,
    /// `#workshop`, where den's coding agent takes tasks (absent from worlds seeded before it).
    pub workshop: Option<u64>,
}

/// One person a page can switch to.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Persona {
    /// Snowflake as a string.
    pub id: String,
    /// Name.
    pub name: String,
    /// What they are in the server.
    pub title: &'static str,
}

impl Cast {
    /// The cast of the world in `standin`, seeding the world when it has none.
    pub fn ensure(standin: &Standin) -> Self {
        Self::find(standin).unwrap_or_else(|| Self::seed(standin))
    }

    /// The cast of a world seeded before (a playground started again).
    #[must_use]
    pub fn find(standin: &Standin) -> Option<Self> {
        standin.read(|w| {
            let guild = w.guilds.values().find(|g| g.name == GUILD)?;
            let user = |name: &str| w.users.values().find(|u| u.name == name && !u.bot).map(|u| u.id);
            let role = w.roles.values().find(|r| r.guild_id == guild.id && r.name == GAME_MASTERS)?;
            let general = w.channels.values().find(|c| c.guild_id == guild.id && c.name == "general")?;
            let workshop = w.channels.values().find(|c| c.guild_id == guild.id && c.name == WORKSHOP).map(|c| c.id);
            Some(Self {
                guild: guild.id,
                admin: user("Ada")?,
                member: user("Ben")?,
                game_master: user("Cleo")?,
                game_masters: role.id,
                general: general.id,
                workshop,
            })
        })
    }

    /// Builds the playground's server: three people, two roles, a few
    /// channels of each kind, one of them private, and a welcome.
    pub fn seed(standin: &Standin) -> Self {
        let admin = standin.add_user("Ada");
        let member = standin.add_user("Ben");
        let game_master = standin.add_user("Cleo");
        let guild = standin.add_guild(GUILD, admin);
        for u in [member, game_master] {
            standin.add_member(guild, u);
        }
        let admins = standin.add_role_with(guild, ADMINS, ADMINISTRATOR, 0xE7_4C_3C);
        let game_masters = standin.add_role_with(guild, GAME_MASTERS, 0, 0x9B_59_B6);
        standin.add_member_role(guild, admin, admins);
        standin.add_member_role(guild, game_master, game_masters);

        let text = standin.add_category(guild, "Text Channels");
        let general = standin.add_channel(guild, "general", kind::TEXT, Some(text));
        standin.add_channel(guild, "roast-pit", kind::TEXT, Some(text));
        standin.add_channel(guild, "ideas", kind::FORUM, Some(text));
        let workshop = standin.add_channel(guild, WORKSHOP, kind::TEXT, Some(text));
        let staff = standin.add_channel(guild, "staff-room", kind::TEXT, Some(text));
        standin.make_private(staff, admins);
        let voice = standin.add_category(guild, "Voice Channels");
        standin.add_channel(guild, "Lounge", kind::VOICE, Some(voice));

        standin.post_as(
            admin,
            general,
            "Welcome to den's playground! Say hello to a persona by name (try \"Gran, how was your day?\"), \
             type / for den's commands, or switch people at the bottom left.",
        );
        standin.post_as(
            admin,
            workshop,
            "This is where den's coding agent works: mention den with a task (\"@den add a README\"). It opens a \
             thread, works in a git workspace of its own, and asks before merging anything.",
        );
        Self { guild, admin, member, game_master, game_masters, general, workshop: Some(workshop) }
    }

    /// The people a page can be, in the order it lists them.
    #[must_use]
    pub fn people(&self) -> Vec<Persona> {
        let p = |id: u64, name: &str, title| Persona { id: id.to_string(), name: name.into(), title };
        vec![
            p(self.admin, "Ada", "admin, owns the server"),
            p(self.member, "Ben", "member"),
            p(self.game_master, "Cleo", "game master"),
        ]
    }

    /// Whether `user` is one of the cast.
    #[must_use]
    pub fn has(&self, user: u64) -> bool {
        [self.admin, self.member, self.game_master].contains(&user)
    }
}
