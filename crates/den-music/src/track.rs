//! Tracks: what a queue entry plays and how people see it.

use serde::{Deserialize, Serialize};

/// Where a track's audio comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A file in the music library, by its path relative to the library folder.
    File {
        /// The relative path.
        path: String,
    },
    /// An audio file or a stream over HTTP(S) (a Discord attachment is one).
    Url {
        /// The address.
        url: String,
    },
    /// A page yt-dlp knows (YouTube, SoundCloud, Bandcamp ...); its stream is found again at play time.
    Ytdlp {
        /// The page.
        page: String,
    },
}

/// A track in a queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Track {
    /// Its title (the file's tag, or its name).
    pub title: String,
    /// Its artist, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artist: Option<String>,
    /// Its length; `None` for a live stream or when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Where to play it from.
    pub source: Source,
}

impl Track {
    /// "Title — Artist (3:05)", as answers show it.
    #[must_use]
    pub fn label(&self) -> String {
        let mut s = format!("**{}**", escape(&self.title));
        if let Some(a) = &self.artist {
            s.push_str(&format!(" — {}", escape(a)));
        }
        // A link's length is known only once it plays (and a stream has none): no length is shown then.
        if let Some(ms) = self.duration_ms {
            s.push_str(&format!(" ({})", clock(ms)));
        }
        s
    }
}

/// `m:ss`, or `h:mm:ss` from an hour.
#[must_use]
pub fn clock(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// Parses `90`, `1:30` or `1:02:03` into milliseconds.
#[must_use]
pub fn parse_clock(text: &str) -> Option<u64> {
    let parts: Vec<&str> = text.trim().split(':').collect();
    if parts.is_empty() || parts.len() > 3 {
        return None;
    }
    parts.iter().try_fold(0u64, |acc, p| Some(acc.checked_mul(60)? + p.parse::<u64>().ok()?)).map(|s| s * 1000)
}

/// Markdown that Discord would read in a title, shown as text.
fn escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = matches!(c, '*' | '_' | '~' | '`' | '|' | '>' | '[' | ']' | '\\');
            special.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_read_and_print_both_ways() {
        assert_eq!(clock(65_000), "1:05");
        assert_eq!(clock(3_723_000), "1:02:03");
        assert_eq!(parse_clock("90"), Some(90_000));
        assert_eq!(parse_clock("1:30"), Some(90_000));
        assert_eq!(parse_clock("1:02:03"), Some(3_723_000));
        assert_eq!(parse_clock("a:b"), None);
        assert_eq!(parse_clock("1:2:3:4"), None);
    }

    #[test]
    fn a_label_shows_markdown_in_titles_as_text() {
        let t = Track {
            title: "*bold*".into(),
            artist: Some("A_B".into()),
            duration_ms: Some(61_000),
            source: Source::Url { url: "http://x".into() },
        };
        assert_eq!(t.label(), "**\\*bold\\*** — A\\_B (1:01)");
    }
}
