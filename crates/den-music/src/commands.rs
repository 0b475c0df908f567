//! What people ask of the music module, read from slash commands, buttons
//! and `!` prefix messages into one [`Command`], which a job then runs.

use den_discord::events::{InboundInteraction, InboundMessage};
use den_discord::{CommandSpec, OptionKind, OptionSpec};
use serde::{Deserialize, Serialize};

use crate::queue::LoopMode;
use crate::track::parse_clock;

/// Custom ids of the buttons under now-playing and queue answers start with this.
pub const BUTTON_PREFIX: &str = "music:";

/// A file someone attached to `/play`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    /// Its CDN address.
    pub url: String,
    /// Its name.
    pub filename: String,
}

/// One thing asked of the music module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case")]
pub enum Command {
    /// Queue a link, an attachment, or the library's best match for words.
    Play {
        /// A link or words.
        query: Option<String>,
        /// An attached file.
        file: Option<Attached>,
    },
    /// Show the library's five best matches to pick from.
    Search {
        /// Words.
        query: String,
    },
    /// Play the `n`th (1-based) match of a search.
    Pick {
        /// The words searched for.
        query: String,
        /// Which match.
        n: usize,
    },
    /// Save, load, list or delete one's own playlists.
    Playlist {
        /// What to do.
        action: PlaylistAction,
        /// Its name (save, load, delete).
        name: Option<String>,
    },
    /// Show or change one's own preferences.
    Prefs(PrefsChange),
    /// Show the queue, a page of ten.
    Queue {
        /// 1-based page.
        page: usize,
    },
    /// Show what plays, where in it, and the controls.
    NowPlaying,
    /// Skip the current track.
    Skip,
    /// Skip to the nth queued track.
    SkipTo {
        /// 1-based position in the queue.
        position: usize,
    },
    /// Play the previous track again.
    Previous,
    /// Pause.
    Pause,
    /// Pause, or resume when paused (the play/pause button).
    Toggle,
    /// Resume.
    Resume,
    /// Stop: clear the queue and leave after a while.
    Stop,
    /// Leave the voice channel now (the queue is kept).
    Leave,
    /// Empty the queue.
    Clear,
    /// Remove the nth queued track.
    Remove {
        /// 1-based position.
        position: usize,
    },
    /// Move a queued track.
    Move {
        /// 1-based position it is at.
        from: usize,
        /// 1-based position it goes to.
        to: usize,
    },
    /// Shuffle the queue.
    Shuffle,
    /// Set (or cycle, without a mode) how the queue repeats.
    Loop {
        /// The mode; `None` cycles off → track → queue.
        mode: Option<LoopMode>,
    },
    /// Jump within the current track.
    Seek {
        /// Where, from the start.
        to_ms: u64,
    },
    /// Set the volume.
    Volume {
        /// Percent, 0 to 200.
        percent: u16,
    },
    /// Drop queued tracks that are already queued or playing.
    RemoveDupes,
    /// Show or change the server's music settings.
    Settings(SettingsChange),
    /// The operator approves, revokes or lists servers that may use music.
    Admin {
        /// What to do.
        action: AdminAction,
        /// The server it is about (allow and revoke).
        guild: Option<u64>,
    },
}

/// What `/music-settings` changes; nothing given shows the settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SettingsChange {
    /// The DJ role.
    pub dj_role: Option<u64>,
    /// Vote-skip percentage (0 turns it off).
    pub vote_skip: Option<u8>,
    /// Seconds idle or alone before leaving (0 stays).
    pub leave_after_secs: Option<u64>,
    /// Longest track, in seconds (0: any).
    pub max_track_secs: Option<u64>,
    /// Most queued tracks per person (0: any).
    pub max_per_person: Option<usize>,
    /// Volume new queues start at.
    pub default_volume: Option<u16>,
    /// Announce each track.
    pub announce: Option<bool>,
    /// The music channel.
    pub channel: Option<u64>,
    /// Settings to put back as they were: `dj-role`, `channel` or `all`.
    pub reset: Option<String>,
}

impl SettingsChange {
    /// Whether it changes nothing (so it only shows the settings).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What `/playlist` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlaylistAction {
    /// Save what plays and what is queued.
    Save,
    /// Queue a saved playlist.
    Load,
    /// List one's playlists.
    List,
    /// Delete one.
    Delete,
}

/// What `/music-prefs` changes; nothing given shows the preferences.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrefsChange {
    /// Volume a queue one starts plays at.
    pub volume: Option<u16>,
    /// Announce one's tracks.
    pub announce: Option<bool>,
    /// Where words are looked up: `library` or `ytdlp`.
    pub source: Option<String>,
}

/// What the operator does with `/music-admin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminAction {
    /// Approve a server.
    Allow,
    /// Withdraw a server's approval.
    Revoke,
    /// List approved servers.
    List,
}

fn int(name: &str, description: &str, min: i64, max: i64) -> OptionSpec {
    OptionSpec::integer(name, description, true, min, max)
}

/// The slash commands.
#[must_use]
pub fn specs() -> Vec<CommandSpec> {
    let loop_mode = OptionSpec {
        choices: ["off", "track", "queue"].iter().map(|m| ((*m).to_owned(), (*m).to_owned())).collect(),
        ..OptionSpec::new("mode", "How to repeat", OptionKind::String, true)
    };
    vec![
        CommandSpec::new("play", "Play a link, a file, or the library's best match for words")
            .option(OptionSpec::new(
                "query",
                "A link to audio or a stream, or words to search the library",
                OptionKind::String,
                false,
            ))
            .option(OptionSpec::new("file", "An audio file to play", OptionKind::Attachment, false)),
        CommandSpec::new("queue", "Show what is queued").option(OptionSpec::integer("page", "Page", false, 1, 1000)),
        CommandSpec::new("now-playing", "Show what plays, with controls"),
        CommandSpec::new("skip", "Skip the current track"),
        CommandSpec::new("skip-to", "Skip to a track in the queue").option(int(
            "position",
            "Its place in the queue",
            1,
            10_000,
        )),
        CommandSpec::new("previous", "Play the previous track again"),
        CommandSpec::new("pause", "Pause"),
        CommandSpec::new("resume", "Resume"),
        CommandSpec::new("stop", "Stop and clear the queue"),
        CommandSpec::new("leave", "Leave the voice channel (the queue is kept)"),
        CommandSpec::new("clear", "Empty the queue (the current track plays on)"),
        CommandSpec::new("remove", "Remove a track from the queue").option(int(
            "position",
            "Its place in the queue",
            1,
            10_000,
        )),
        CommandSpec::new("move", "Move a track in the queue")
            .option(int("from", "Its place now", 1, 10_000))
            .option(int("to", "Its new place", 1, 10_000)),
        CommandSpec::new("shuffle", "Shuffle the queue"),
        CommandSpec::new("loop", "Repeat the track or the queue, or stop repeating").option(loop_mode),
        CommandSpec::new("seek", "Jump within the current track").option(OptionSpec::new(
            "time",
            "Where: 90, 1:30 or 1:02:03",
            OptionKind::String,
            true,
        )),
        CommandSpec::new("volume", "Set the volume").option(int("percent", "0 to 200", 0, 200)),
        CommandSpec::new("remove-dupes", "Remove tracks queued twice"),
        CommandSpec::new("search", "Pick from the library's five best matches").option(OptionSpec::new(
            "query",
            "Words to look for",
            OptionKind::String,
            true,
        )),
        playlist_spec(),
        CommandSpec::new("music-prefs", "Show or change your own music preferences")
            .option(OptionSpec::integer("volume", "Volume when you start the music", false, 0, 200))
            .option(OptionSpec::new("announce", "Announce your tracks as they start", OptionKind::Boolean, false))
            .option(OptionSpec {
                choices: ["library", "ytdlp"].iter().map(|m| ((*m).to_owned(), (*m).to_owned())).collect(),
                ..OptionSpec::new("source", "Where your words are looked up", OptionKind::String, false)
            }),
        settings_spec(),
        admin_spec(),
    ]
}

fn playlist_spec() -> CommandSpec {
    let name = || OptionSpec::new("name", "The playlist's name", OptionKind::String, true);
    let sub = |n: &str, d: &str, named: bool| OptionSpec {
        options: if named { vec![name()] } else { vec![] },
        ..OptionSpec::new(n, d, OptionKind::SubCommand, false)
    };
    CommandSpec::new("playlist", "Your own playlists")
        .option(sub("save", "Save what plays and what is queued", true))
        .option(sub("load", "Queue one of your playlists", true))
        .option(sub("list", "Your playlists", false))
        .option(sub("delete", "Delete one of your playlists", true))
}

fn playlist(i: &InboundInteraction) -> Result<Command, String> {
    let actions = [
        ("save", PlaylistAction::Save),
        ("load", PlaylistAction::Load),
        ("list", PlaylistAction::List),
        ("delete", PlaylistAction::Delete),
    ];
    let (sub, action) =
        actions.into_iter().find(|(s, _)| i.options.contains_key(*s)).ok_or("Choose save, load, list or delete.")?;
    let name = i.option_str(&format!("{sub}.name")).map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned);
    if action != PlaylistAction::List && name.is_none() {
        return Err("Name the playlist.".into());
    }
    Ok(Command::Playlist { action, name })
}

fn settings_spec() -> CommandSpec {
    let reset = OptionSpec {
        choices: ["dj-role", "channel", "all"].iter().map(|m| ((*m).to_owned(), (*m).to_owned())).collect(),
        ..OptionSpec::new("reset", "Put a setting back as it was", OptionKind::String, false)
    };
    CommandSpec::new("music-settings", "Show or change this server's music settings")
        .option(OptionSpec::new(
            "dj-role",
            "Who may skip others' tracks, clear, stop and change settings",
            OptionKind::Role,
            false,
        ))
        .option(OptionSpec::integer("vote-skip", "Percent of listeners needed to skip (0: off)", false, 0, 100))
        .option(OptionSpec::integer(
            "leave-after",
            "Seconds idle or alone before den leaves (0: stay)",
            false,
            0,
            86_400,
        ))
        .option(OptionSpec::integer("max-length", "Longest track in minutes (0: any)", false, 0, 1440))
        .option(OptionSpec::integer("max-per-person", "Most tracks one person may queue (0: any)", false, 0, 1000))
        .option(OptionSpec::integer("volume", "Volume new queues start at", false, 0, 200))
        .option(OptionSpec::new("announce", "Post each track as it starts", OptionKind::Boolean, false))
        .option(OptionSpec::new("channel", "The only channel music commands are taken in", OptionKind::Channel, false))
        .option(reset)
}

fn admin_spec() -> CommandSpec {
    let guild = || OptionSpec::new("server", "The server's id", OptionKind::String, true);
    let sub = |name: &str, description: &str, with_guild: bool| OptionSpec {
        options: if with_guild { vec![guild()] } else { vec![] },
        ..OptionSpec::new(name, description, OptionKind::SubCommand, false)
    };
    CommandSpec {
        default_member_permissions: Some(den_discord::events::ADMINISTRATOR),
        ..CommandSpec::new("music-admin", "den's operator: which servers may use music")
    }
    .option(sub("allow", "Let a server use music", true))
    .option(sub("revoke", "Stop a server using music", true))
    .option(sub("list", "The servers that may use music", false))
}

fn settings_change(i: &InboundInteraction) -> SettingsChange {
    let int = |name: &str| i.options.get(name).and_then(serde_json::Value::as_u64);
    let id = |name: &str| i.options.get(name).and_then(|v| v.as_str()?.parse().ok());
    SettingsChange {
        dj_role: id("dj-role"),
        vote_skip: int("vote-skip").and_then(|n| u8::try_from(n.min(100)).ok()),
        leave_after_secs: int("leave-after"),
        max_track_secs: int("max-length").map(|m| m * 60),
        max_per_person: int("max-per-person").and_then(|n| usize::try_from(n).ok()),
        default_volume: int("volume").and_then(|n| u16::try_from(n.min(200)).ok()),
        announce: i.options.get("announce").and_then(serde_json::Value::as_bool),
        channel: id("channel"),
        reset: i.option_str("reset").map(str::to_owned),
    }
}

fn admin(i: &InboundInteraction) -> Result<Command, String> {
    let guild = |sub: &str| {
        let text = i.option_str(&format!("{sub}.server")).unwrap_or_default().trim();
        text.parse::<u64>().map(Some).map_err(|_| format!("\"{text}\" is not a server id"))
    };
    if i.options.contains_key("allow") {
        Ok(Command::Admin { action: AdminAction::Allow, guild: guild("allow")? })
    } else if i.options.contains_key("revoke") {
        Ok(Command::Admin { action: AdminAction::Revoke, guild: guild("revoke")? })
    } else {
        Ok(Command::Admin { action: AdminAction::List, guild: None })
    }
}

fn usize_option(i: &InboundInteraction, name: &str) -> Option<usize> {
    i.options.get(name).and_then(serde_json::Value::as_u64).and_then(|n| usize::try_from(n).ok())
}

/// The command an interaction asks for: `None` when it is not music's,
/// `Some(Err)` with a line to show when it is malformed.
#[must_use]
pub fn from_interaction(i: &InboundInteraction) -> Option<Result<Command, String>> {
    if let Some(id) = i.custom_id.as_deref() {
        let control = id.strip_prefix(BUTTON_PREFIX)?;
        if let Some(query) = control.strip_prefix("pick:") {
            let n = i.values.first().and_then(|v| v.parse().ok()).unwrap_or(1);
            return Some(Ok(Command::Pick { query: query.to_owned(), n }));
        }
        let (word, rest) = control.split_once(':').unwrap_or((control, ""));
        return Some(from_words(word, rest).unwrap_or_else(|| Err(format!("unknown control {word}"))));
    }
    let need = |name: &str| usize_option(i, name).ok_or_else(|| format!("{name} is missing"));
    let command = match i.command.as_deref()? {
        "play" => {
            let file = i.options.get("file").and_then(serde_json::Value::as_str).and_then(|id| {
                let a = i.resolved_attachments.iter().find(|a| a.id.to_string() == id)?;
                Some(Attached { url: a.url.clone(), filename: a.filename.clone() })
            });
            let query = i.option_str("query").map(str::to_owned).filter(|q| !q.trim().is_empty());
            if query.is_none() && file.is_none() {
                return Some(Err("Give a link or words to search for, or attach a file.".into()));
            }
            Ok(Command::Play { query, file })
        }
        "queue" => Ok(Command::Queue { page: usize_option(i, "page").unwrap_or(1) }),
        "skip-to" => need("position").map(|position| Command::SkipTo { position }),
        "remove" => need("position").map(|position| Command::Remove { position }),
        "move" => need("from").and_then(|from| need("to").map(|to| Command::Move { from, to })),
        "loop" => Ok(Command::Loop { mode: i.option_str("mode").and_then(LoopMode::parse) }),
        "seek" => seek(i.option_str("time").unwrap_or_default()),
        "volume" => need("percent").map(|p| Command::Volume { percent: u16::try_from(p.min(200)).unwrap_or(200) }),
        "music-settings" => Ok(Command::Settings(settings_change(i))),
        "search" => match i.option_str("query").map(str::trim).filter(|q| !q.is_empty()) {
            Some(q) => Ok(Command::Search { query: q.chars().take(80).collect() }),
            None => Err("Give words to search for.".into()),
        },
        "playlist" => playlist(i),
        "music-prefs" => Ok(Command::Prefs(PrefsChange {
            volume: i
                .options
                .get("volume")
                .and_then(serde_json::Value::as_u64)
                .and_then(|v| u16::try_from(v.min(200)).ok()),
            announce: i.options.get("announce").and_then(serde_json::Value::as_bool),
            source: i.option_str("source").map(str::to_owned),
        })),
        "music-admin" => admin(i),
        other => return from_words(other, "").filter(|c| !matches!(c, Ok(Command::Play { .. }))),
    };
    Some(command)
}

fn seek(text: &str) -> Result<Command, String> {
    parse_clock(text)
        .map(|to_ms| Command::Seek { to_ms })
        .ok_or_else(|| format!("\"{text}\" is not a time: try 90, 1:30 or 1:02:03"))
}

/// The command a `!` message asks for (`!play`, `!skip`, `!np` ...).
#[must_use]
pub fn from_message(m: &InboundMessage) -> Option<Result<Command, String>> {
    let text = m.content.trim().strip_prefix('!')?;
    let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    if word == "play" || word == "p" {
        let file = m.attachments.first().map(|a| Attached { url: a.url.clone(), filename: a.filename.clone() });
        let query = Some(rest.trim().to_owned()).filter(|q| !q.is_empty());
        if query.is_none() && file.is_none() {
            return Some(Err("`!play` needs a link, words to search for, or a file.".into()));
        }
        return Some(Ok(Command::Play { query, file }));
    }
    from_words(&word.to_lowercase(), rest.trim())
}

/// Commands named by a word (a prefix message, a button, a slash command
/// without options) with the rest of the line as their argument.
fn from_words(word: &str, rest: &str) -> Option<Result<Command, String>> {
    let number = |what: &str| {
        rest.split_whitespace().next().and_then(|n| n.parse::<usize>().ok()).ok_or(format!("`!{word}` needs {what}"))
    };
    Some(match word {
        "queue" | "q" => Ok(Command::Queue { page: rest.parse().unwrap_or(1) }),
        "now-playing" | "np" | "nowplaying" => Ok(Command::NowPlaying),
        "skip" | "s" | "next" => Ok(Command::Skip),
        "skip-to" | "skipto" => number("a place in the queue").map(|position| Command::SkipTo { position }),
        "previous" | "prev" | "back" | "replay" => Ok(Command::Previous),
        "pause" => Ok(Command::Pause),
        "resume" | "unpause" => Ok(Command::Resume),
        "stop" => Ok(Command::Stop),
        "leave" | "disconnect" | "dc" => Ok(Command::Leave),
        "clear" => Ok(Command::Clear),
        "remove" | "rm" => number("a place in the queue").map(|position| Command::Remove { position }),
        "move" | "mv" => {
            let n: Vec<usize> = rest.split_whitespace().filter_map(|w| w.parse().ok()).collect();
            match n[..] {
                [from, to] => Ok(Command::Move { from, to }),
                _ => Err("`!move` needs two places: `!move 5 1`".into()),
            }
        }
        "shuffle" => Ok(Command::Shuffle),
        "loop" | "repeat" => match rest {
            "" => Ok(Command::Loop { mode: None }),
            m => LoopMode::parse(m)
                .map(|mode| Command::Loop { mode: Some(mode) })
                .ok_or_else(|| "loop is off, track or queue".into()),
        },
        "seek" => seek(rest),
        "volume" | "vol" => {
            number("a percentage").map(|p| Command::Volume { percent: u16::try_from(p.min(200)).unwrap_or(200) })
        }
        "remove-dupes" | "removedupes" | "dedupe" => Ok(Command::RemoveDupes),
        "toggle" => Ok(Command::Toggle),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> InboundMessage {
        InboundMessage::parse(
            &serde_json::json!({
                "id": "1", "channel_id": "2", "guild_id": "3", "content": text,
                "author": {"id": "4", "username": "ada"},
            })
            .to_string(),
        )
        .unwrap()
    }

    #[test]
    fn prefix_messages_read_as_commands() {
        let read = |t: &str| from_message(&message(t));
        assert_eq!(
            read("!play never gonna"),
            Some(Ok(Command::Play { query: Some("never gonna".into()), file: None }))
        );
        assert_eq!(read("!np"), Some(Ok(Command::NowPlaying)));
        assert_eq!(read("!move 5 1"), Some(Ok(Command::Move { from: 5, to: 1 })));
        assert_eq!(read("!seek 1:30"), Some(Ok(Command::Seek { to_ms: 90_000 })));
        assert_eq!(read("!loop queue"), Some(Ok(Command::Loop { mode: Some(LoopMode::Queue) })));
        assert_eq!(read("!volume 500"), Some(Ok(Command::Volume { percent: 200 })));
        assert!(matches!(read("!remove"), Some(Err(_))));
        assert!(matches!(read("!play"), Some(Err(_))));
        assert_eq!(read("!ping"), None, "other modules' commands are not music's");
        assert_eq!(read("play this"), None);
    }

    #[test]
    fn buttons_read_as_commands() {
        let press = |id: &str| {
            let i = InboundInteraction::parse(
                &serde_json::json!({
                    "id": "1", "application_id": "2", "type": 3, "token": "t", "guild_id": "3", "channel_id": "4",
                    "member": {"user": {"id": "5", "username": "ada"}, "permissions": "0", "roles": []},
                    "data": {"custom_id": id, "component_type": 2},
                })
                .to_string(),
            )
            .unwrap();
            from_interaction(&i)
        };
        assert_eq!(press("music:toggle"), Some(Ok(Command::Toggle)));
        assert_eq!(press("music:queue:3"), Some(Ok(Command::Queue { page: 3 })));
        assert!(matches!(press("music:nonsense"), Some(Err(_))));
        assert_eq!(press("agent:stop"), None, "other modules' buttons are theirs");
    }

    #[test]
    fn every_slash_command_reads_back() {
        for spec in specs() {
            let i = InboundInteraction::parse(&serde_json::json!({
                "id": "1", "application_id": "2", "type": 2, "token": "t", "guild_id": "3", "channel_id": "4",
                "member": {"user": {"id": "5", "username": "ada"}, "permissions": "0", "roles": []},
                "data": {"name": spec.name, "options": [
                    {"name": "query", "type": 3, "value": "x"}, {"name": "position", "type": 4, "value": 2},
                    {"name": "from", "type": 4, "value": 2}, {"name": "to", "type": 4, "value": 1}, {"name": "time", "type": 3, "value": "1:00"},
                    {"name": "mode", "type": 3, "value": "track"}, {"name": "percent", "type": 4, "value": 50},
                    {"name": "vote-skip", "type": 4, "value": 50},
                    {"name": "list", "type": 1, "options": []},
                ]},
            }).to_string())
            .unwrap();
            assert!(
                matches!(from_interaction(&i), Some(Ok(_))),
                "/{} does not read: {:?}",
                spec.name,
                from_interaction(&i)
            );
        }
    }
}
