//! Control commands: how each changes a queue (a table in one match), who may
//! give them (the DJ role), and skips by vote.

use super::Answer;
use crate::commands::Command;
use crate::queue::{Entry, LoopMode, Queue};
use crate::track::clock;

/// Who changes the queue, and where playback is.
pub(super) struct EditCx {
    /// Where the current track is now.
    pub(super) position: u64,
    /// Who asks.
    pub(super) user: u64,
    /// Whether they may do what the DJ role may.
    pub(super) dj: bool,
    /// Votes a skip needs from others, when vote-skip is on.
    pub(super) votes_needed: Option<usize>,
}

/// Commands only the DJ role may give (everyone, when the server has no DJ role).
fn needs_dj(command: &Command) -> bool {
    matches!(
        command,
        Command::Stop
            | Command::Leave
            | Command::Clear
            | Command::Move { .. }
            | Command::SkipTo { .. }
            | Command::Previous
            | Command::Shuffle
            | Command::Loop { .. }
            | Command::Seek { .. }
            | Command::Volume { .. }
            | Command::RemoveDupes
    )
}

/// A skip by someone who is neither a DJ nor the track's asker: a vote.
fn vote_to_skip(q: &mut Queue, cx: &EditCx, skipped: &Entry) -> Answer {
    let Some(needed) = cx.votes_needed else {
        return Err("Only the DJ role or whoever queued this track can skip it.".into());
    };
    if !q.skip_votes.contains(&cx.user) {
        q.skip_votes.push(cx.user);
    }
    let votes = q.skip_votes.len();
    if votes < needed {
        return Ok(format!("Vote to skip {}: {votes} of {needed}.", skipped.track.label()));
    }
    q.skip();
    Ok(format!("Skipped {} by vote ({votes} of {needed}).", skipped.track.label()))
}

/// Changes a queue for one control command.
pub(super) fn edit(q: &mut Queue, command: &Command, cx: &EditCx) -> Answer {
    let playing = q.current.clone();
    let need_current = || playing.clone().ok_or_else(|| "Nothing is playing.".to_owned());
    if needs_dj(command) && !cx.dj {
        return Err("Only the DJ role can do that here.".into());
    }
    let position = cx.position;
    match command {
        Command::Skip => {
            let skipped = need_current()?;
            if !cx.dj && skipped.requested_by != cx.user {
                return vote_to_skip(q, cx, &skipped);
            }
            q.skip();
            Ok(match &q.current {
                Some(next) => format!("Skipped {}. Now playing {}", skipped.track.label(), next.track.label()),
                None => format!("Skipped {}. The queue is empty.", skipped.track.label()),
            })
        }
        Command::SkipTo { position: n } => {
            if !q.skip_to(*n) {
                return Err(format!("There is no #{n} in the queue ({} queued).", q.upcoming.len()));
            }
            Ok(format!("Skipped to {}", q.current.as_ref().map(|e| e.track.label()).unwrap_or_default()))
        }
        Command::Previous => {
            if !q.previous() {
                return Err("Nothing played before this.".into());
            }
            Ok(format!("Playing {} again", q.current.as_ref().map(|e| e.track.label()).unwrap_or_default()))
        }
        Command::Toggle => {
            let next = if q.paused { Command::Resume } else { Command::Pause };
            edit(q, &next, cx)
        }
        Command::Pause => {
            need_current()?;
            if q.paused {
                return Err("Already paused: `/resume` plays on.".into());
            }
            q.paused = true;
            q.position_ms = position;
            Ok(format!("Paused at {}.", clock(position)))
        }
        Command::Resume => {
            need_current()?;
            if !q.paused {
                return Err("Not paused.".into());
            }
            q.paused = false;
            Ok("Playing on.".into())
        }
        Command::Stop => {
            q.stop();
            Ok("Stopped, and the queue is cleared.".into())
        }
        Command::Leave => {
            q.position_ms = position;
            q.voice_channel = None;
            Ok("Left the voice channel. The queue is kept: `/play` or `/resume` picks it up.".into())
        }
        Command::Clear => Ok(format!("Removed {} queued tracks.", q.clear())),
        Command::Remove { position: n } => {
            let owner = q.upcoming.get(n.wrapping_sub(1)).map(|e| e.requested_by);
            if owner.is_some_and(|o| o != cx.user) && !cx.dj {
                return Err("Only the DJ role can remove others' tracks.".into());
            }
            let e = q.remove(*n).ok_or_else(|| format!("There is no #{n} in the queue."))?;
            Ok(format!("Removed {}", e.track.label()))
        }
        Command::Move { from, to } => {
            let queued = q.upcoming.len();
            let e = q.move_entry(*from, *to).ok_or_else(|| format!("Both places must be between 1 and {queued}."))?;
            Ok(format!("Moved {} to #{to}", e.track.label()))
        }
        Command::Shuffle => {
            if q.upcoming.len() < 2 {
                return Err("There is nothing to shuffle.".into());
            }
            q.shuffle();
            Ok(format!("Shuffled {} tracks.", q.upcoming.len()))
        }
        Command::Loop { mode } => {
            q.loop_mode = mode.unwrap_or(match q.loop_mode {
                LoopMode::Off => LoopMode::Track,
                LoopMode::Track => LoopMode::Queue,
                LoopMode::Queue => LoopMode::Off,
            });
            Ok(format!("Loop: {}.", q.loop_mode.as_str()))
        }
        Command::Seek { to_ms } => {
            let e = need_current()?;
            match e.track.duration_ms {
                None => return Err("den does not know this track's length, so it cannot jump within it.".into()),
                Some(len) if *to_ms >= len => return Err(format!("The track is {} long.", clock(len))),
                Some(_) => {}
            }
            q.restart(*to_ms);
            Ok(format!("Jumped to {}.", clock(*to_ms)))
        }
        Command::Volume { percent } => {
            q.volume = *percent;
            Ok(format!("Volume {percent}%."))
        }
        Command::RemoveDupes => Ok(format!("Removed {} tracks queued twice.", q.remove_dupes())),
        Command::Play { .. }
        | Command::Queue { .. }
        | Command::NowPlaying
        | Command::Settings(_)
        | Command::Admin { .. }
        | Command::Search { .. }
        | Command::Pick { .. }
        | Command::Playlist { .. }
        | Command::Prefs(_) => Err("not a control".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Queue;
    use crate::track::Source;
    use crate::track::Track;

    fn track(name: &str, ms: Option<u64>) -> Track {
        Track { title: name.into(), artist: None, duration_ms: ms, source: Source::File { path: name.into() } }
    }

    fn cx(position: u64) -> EditCx {
        EditCx { position, user: 1, dj: true, votes_needed: None }
    }

    #[test]
    fn without_the_dj_role_others_tracks_are_skipped_by_vote_only() {
        let mut q = Queue::default();
        q.add(vec![track("a", Some(1000)), track("b", Some(1000))], 9);
        let mut ada = EditCx { position: 0, user: 1, dj: false, votes_needed: None };
        assert!(edit(&mut q, &Command::Skip, &ada).unwrap_err().contains("Only the DJ role or whoever queued"));
        assert!(edit(&mut q, &Command::Clear, &ada).is_err());
        ada.votes_needed = Some(2);
        assert_eq!(edit(&mut q, &Command::Skip, &ada), Ok("Vote to skip **a** (0:01): 1 of 2.".into()));
        assert_eq!(
            edit(&mut q, &Command::Skip, &ada),
            Ok("Vote to skip **a** (0:01): 1 of 2.".into()),
            "one vote each"
        );
        let bea = EditCx { user: 2, ..ada };
        assert!(edit(&mut q, &Command::Skip, &bea).unwrap().starts_with("Skipped **a** (0:01) by vote (2 of 2)"));
        assert!(q.skip_votes.is_empty(), "votes are for one track");
        let owner = EditCx { user: 9, dj: false, votes_needed: None, position: 0 };
        assert!(edit(&mut q, &Command::Skip, &owner).is_ok(), "whoever queued a track may skip it");
    }

    #[test]
    fn controls_change_the_queue_and_say_what_they_did() {
        let mut q = Queue::default();
        assert_eq!(edit(&mut q, &Command::Skip, &cx(0)), Err("Nothing is playing.".into()));
        q.add(vec![track("a", Some(60_000)), track("b", None)], 1);
        assert_eq!(edit(&mut q, &Command::Pause, &cx(12_000)), Ok("Paused at 0:12.".into()));
        assert_eq!(q.position_ms, 12_000);
        assert!(edit(&mut q, &Command::Pause, &cx(0)).is_err());
        assert!(edit(&mut q, &Command::Resume, &cx(0)).is_ok());
        assert_eq!(edit(&mut q, &Command::Seek { to_ms: 61_000 }, &cx(0)), Err("The track is 1:00 long.".into()));
        let g = q.generation;
        assert!(edit(&mut q, &Command::Seek { to_ms: 30_000 }, &cx(0)).is_ok());
        assert!(q.generation > g && q.position_ms == 30_000);
        assert_eq!(edit(&mut q, &Command::Loop { mode: None }, &cx(0)), Ok("Loop: track.".into()));
        assert!(edit(&mut q, &Command::Skip, &cx(0)).unwrap().ends_with("Now playing **b**"));
        assert_eq!(
            edit(&mut q, &Command::Seek { to_ms: 1 }, &cx(0)),
            Err("den does not know this track's length, so it cannot jump within it.".into())
        );
        assert!(edit(&mut q, &Command::Remove { position: 1 }, &cx(0)).is_err());
    }
}
