//! What people do for themselves: search the library and pick, keep
//! playlists, set their preferences.

use den_discord::egress::SelectMenu;
use den_worker::JobError;

use super::{Answer, Music, Request, Rows, store};
use crate::commands::{BUTTON_PREFIX, PlaylistAction, PrefsChange};
use crate::prefs::PreferredSource;
use crate::settings::Settings;
use crate::track::Track;

/// Matches a search offers.
const SEARCH_RESULTS: usize = 5;

impl Music {
    async fn matches(&self, query: &str) -> Vec<Track> {
        let Some(library) = self.player.sources().library().cloned() else { return Vec::new() };
        let query = query.to_owned();
        tokio::task::spawn_blocking(move || library.search(&query, SEARCH_RESULTS)).await.unwrap_or_default()
    }

    /// The answer to `/search`: the matches, numbered.
    pub(super) async fn search(&self, query: &str) -> Answer {
        if self.player.sources().library().is_none() {
            return Err(crate::sources::ResolveError::NoLibrary.to_string());
        }
        let found = self.matches(query).await;
        if found.is_empty() {
            return Err(crate::sources::ResolveError::NotFound(query.to_owned()).to_string());
        }
        let lines: Vec<String> = found.iter().enumerate().map(|(n, t)| format!("{}. {}", n + 1, t.label())).collect();
        Ok(format!("Pick one to play:\n{}", lines.join("\n")))
    }

    /// The menu under a search's answer.
    pub(super) async fn search_menu(&self, query: &str) -> Rows {
        let found = self.matches(query).await;
        if found.is_empty() {
            return Rows::Buttons(Vec::new());
        }
        let options = found
            .iter()
            .enumerate()
            .map(|(n, t)| (format!("{}. {}", n + 1, t.title), (n + 1).to_string(), t.artist.clone()))
            .collect();
        Rows::Menu(SelectMenu {
            custom_id: format!("{BUTTON_PREFIX}pick:{query}"),
            placeholder: "Play…".into(),
            options,
        })
    }

    /// The `n`th match of a search, searched again.
    pub(super) async fn pick(&self, query: &str, n: usize) -> Option<Track> {
        self.matches(query).await.into_iter().nth(n.checked_sub(1)?)
    }

    pub(super) async fn playlist(
        &self,
        req: &Request,
        settings: &Settings,
        key: &str,
        action: PlaylistAction,
        name: Option<&str>,
    ) -> Result<Answer, JobError> {
        let people = &self.player.tables().people;
        let name = name.unwrap_or_default();
        Ok(match action {
            PlaylistAction::List => {
                let lists = people.playlists(req.user).await.map_err(store)?;
                if lists.is_empty() {
                    Ok("You have no playlists yet: `/playlist save` keeps what plays and what is queued.".into())
                } else {
                    Ok(lists.iter().map(|(n, c)| format!("{n}: {c} tracks")).collect::<Vec<_>>().join("\n"))
                }
            }
            PlaylistAction::Save => {
                let q = self.player.queues().get(req.guild).await.map_err(store)?;
                let tracks: Vec<Track> = q.current.iter().chain(&q.upcoming).map(|e| e.track.clone()).collect();
                if tracks.is_empty() {
                    return Ok(Err("Nothing plays and nothing is queued: there is nothing to save.".into()));
                }
                match people.save_playlist(req.user, name, tracks).await.map_err(store)? {
                    Ok(n) => Ok(format!("Saved {n} tracks as \"{}\".", crate::prefs::playlist_key(name))),
                    Err(line) => Err(line),
                }
            }
            PlaylistAction::Load => match people.playlist(req.user, name).await.map_err(store)? {
                Some(list) if !list.tracks.is_empty() => {
                    return self.play(req, settings, &self.prefs_of(req.user).await?, key, list.tracks).await;
                }
                _ => Err(format!("You have no playlist called \"{}\".", crate::prefs::playlist_key(name))),
            },
            PlaylistAction::Delete => match people.delete_playlist(req.user, name).await.map_err(store)? {
                true => Ok(format!("Deleted \"{}\".", crate::prefs::playlist_key(name))),
                false => Err(format!("You have no playlist called \"{}\".", crate::prefs::playlist_key(name))),
            },
        })
    }

    pub(super) async fn prefs(&self, req: &Request, change: &PrefsChange) -> Result<Answer, JobError> {
        let people = &self.player.tables().people;
        let mut prefs = people.prefs(req.user).await.map_err(store)?;
        let changed = *change != PrefsChange::default();
        if let Some(source) = &change.source {
            prefs.source = PreferredSource::parse(source).ok_or_else(|| JobError::permanent("unknown source"))?;
        }
        prefs.volume = change.volume.or(prefs.volume);
        prefs.announce = change.announce.or(prefs.announce);
        if changed {
            people.save_prefs(req.user, &prefs).await.map_err(store)?;
        }
        let lists = people.playlists(req.user).await.map_err(store)?;
        Ok(Ok(format!("{}{}", if changed { "Saved.\n" } else { "" }, prefs.describe(&lists))))
    }
}
