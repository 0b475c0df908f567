//! Sources: what `/play` accepts (a link, an attachment, words to search
//! the library for) turned into tracks, and tracks into audio for the driver.
//!
//! Links are fetched by den's server, so they may not reach den's own
//! network: every address a link's host resolves to (and every redirect's)
//! must be public unless the operator allows private ones.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use songbird::input::{File, HlsRequest, HttpRequest, Input, YoutubeDl};

use crate::library::Library;
use crate::track::{Source, Track};

/// Why a request could not become a track.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    /// yt-dlp could not get it (the line it printed).
    #[error("yt-dlp could not get that: {0}")]
    Ytdlp(String),
    /// Nothing in the library matches.
    #[error("nothing in the library matches \"{0}\"")]
    NotFound(String),
    /// Words were given but there is no library to search.
    #[error("den has no music library to search: give a link to an audio file or stream, or attach one")]
    NoLibrary,
    /// A link den will not fetch.
    #[error("den will not play {0}: {1}")]
    Refused(String, &'static str),
    /// A file that left the library (moved or deleted since it was queued).
    #[error("{0} is no longer in the music library")]
    Gone(String),
}

/// Where tracks come from.
#[derive(Clone, Debug)]
pub struct Sources {
    library: Option<Arc<Library>>,
    http: reqwest::Client,
    allow_private: bool,
    /// The yt-dlp program, when the operator enabled it.
    ytdlp: Option<&'static str>,
}

/// Sites whose links go through yt-dlp (when enabled) rather than being fetched as audio.
const YTDLP_SITES: &[&str] =
    &["youtube.com", "youtu.be", "soundcloud.com", "bandcamp.com", "vimeo.com", "mixcloud.com", "twitch.tv"];
/// How long yt-dlp may take to look something up.
const YTDLP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Sources {
    /// Sources over `library` (if any); `allow_private` lets links reach
    /// private and loopback addresses (tests, a LAN radio).
    #[must_use]
    pub fn new(library: Option<Arc<Library>>, allow_private: bool) -> Self {
        let mut http = reqwest::Client::builder()
            .user_agent(concat!("den/", env!("CARGO_PKG_VERSION"), " (music)"))
            .connect_timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5 {
                    attempt.error("too many redirects")
                } else if !allow_private && attempt.url().host_str().is_some_and(names_private_host) {
                    attempt.error("redirected to a private address")
                } else {
                    attempt.follow()
                }
            }));
        if !allow_private {
            http = http.dns_resolver(Arc::new(PublicOnly));
        }
        Self { library, http: http.build().unwrap_or_default(), allow_private, ytdlp: None }
    }

    /// With yt-dlp (`program`, found on the PATH when it has no slash) for
    /// pages of the sites it knows and for searches people prefer it for.
    #[must_use]
    pub fn with_ytdlp(mut self, program: &str) -> Self {
        // songbird keeps the program's name for as long as inputs live: one string, kept for the process.
        self.ytdlp = Some(Box::leak(program.to_owned().into_boxed_str()));
        self
    }

    /// Whether yt-dlp is on.
    #[must_use]
    pub fn has_ytdlp(&self) -> bool {
        self.ytdlp.is_some()
    }

    /// Whether `url` is a page yt-dlp should read (when it is on).
    #[must_use]
    pub fn is_ytdlp_page(&self, url: &str) -> bool {
        let host = reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_lowercase)).unwrap_or_default();
        self.ytdlp.is_some() && YTDLP_SITES.iter().any(|s| host == *s || host.ends_with(&format!(".{s}")))
    }

    /// What yt-dlp finds for `target` (a page, or `ytsearch1:words`).
    ///
    /// # Errors
    /// [`ResolveError::Ytdlp`] with the one line that says why.
    pub async fn ytdlp(&self, target: &str) -> Result<Track, ResolveError> {
        let program = self.ytdlp.ok_or(ResolveError::NoLibrary)?;
        let run = tokio::process::Command::new(program)
            .args(["-j", "--no-playlist", "--no-warnings", "-f", "ba[abr>0][vcodec=none]/best", target])
            .kill_on_drop(true)
            .output();
        let out = match tokio::time::timeout(YTDLP_TIMEOUT, run).await {
            Err(_) => return Err(ResolveError::Ytdlp("it took longer than 30 s".into())),
            Ok(Err(e)) => return Err(ResolveError::Ytdlp(format!("{program} cannot be run ({e})"))),
            Ok(Ok(out)) => out,
        };
        if !out.status.success() {
            return Err(ResolveError::Ytdlp(ytdlp_failure(&String::from_utf8_lossy(&out.stderr))));
        }
        let first = out.stdout.split(|b| *b == b'\n').find(|l| !l.is_empty()).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(first)
            .map_err(|_| ResolveError::Ytdlp("it printed something den cannot read".into()))?;
        let page = v["webpage_url"].as_str().or(v["original_url"].as_str()).unwrap_or(target).to_owned();
        Ok(Track {
            title: v["track"].as_str().or(v["title"].as_str()).unwrap_or(&page).to_owned(),
            artist: v["artist"].as_str().or(v["uploader"].as_str()).map(str::to_owned),
            duration_ms: v["duration"].as_f64().filter(|_| v["is_live"] != true).map(|s| (s * 1000.0) as u64),
            source: Source::Ytdlp { page },
        })
    }

    /// The library, when there is one.
    #[must_use]
    pub fn library(&self) -> Option<&Arc<Library>> {
        self.library.as_ref()
    }

    /// The tracks `query` names: a link (one track) or the best library match.
    ///
    /// # Errors
    /// [`ResolveError`] when nothing matches or the link is refused.
    pub fn resolve(&self, query: &str) -> Result<Track, ResolveError> {
        let query = query.trim();
        if query.starts_with("http://") || query.starts_with("https://") {
            return self.link(query, None);
        }
        let library = self.library.as_ref().ok_or(ResolveError::NoLibrary)?;
        library.search(query, 1).into_iter().next().ok_or_else(|| ResolveError::NotFound(query.to_owned()))
    }

    /// A track for a link, titled `title` or by the link's file name.
    ///
    /// # Errors
    /// [`ResolveError::Refused`] for a link den will not fetch.
    pub fn link(&self, url: &str, title: Option<&str>) -> Result<Track, ResolveError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| ResolveError::Refused(url.to_owned(), "it is not a link"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ResolveError::Refused(url.to_owned(), "only http and https links play"));
        }
        let host = parsed.host_str().unwrap_or_default();
        if !self.allow_private && names_private_host(host) {
            return Err(ResolveError::Refused(url.to_owned(), "it points into a private network"));
        }
        let name = parsed
            .path_segments()
            .and_then(|mut s| s.next_back())
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .unwrap_or_else(|| host.to_owned());
        Ok(Track {
            title: title.map_or(name, str::to_owned),
            artist: None,
            duration_ms: None,
            source: Source::Url { url: parsed.to_string() },
        })
    }

    /// The audio of `track`, for the driver.
    ///
    /// # Errors
    /// [`ResolveError::Gone`] for a library file no longer there.
    pub fn input(&self, track: &Track) -> Result<Input, ResolveError> {
        match &track.source {
            Source::File { path } => {
                let file: PathBuf = self
                    .library
                    .as_ref()
                    .and_then(|l| l.path_of(path))
                    .ok_or_else(|| ResolveError::Gone(path.clone()))?;
                Ok(File::new(file).into())
            }
            Source::Ytdlp { page } => match self.ytdlp {
                Some(program) => Ok(YoutubeDl::new_ytdl_like(program, self.http.clone(), page.clone()).into()),
                None => Err(ResolveError::Ytdlp("yt-dlp is not enabled here".into())),
            },
            Source::Url { url } if is_playlist(url) => Ok(HlsRequest::new(self.http.clone(), url.clone()).into()),
            Source::Url { url } => Ok(HttpRequest::new(self.http.clone(), url.clone()).into()),
        }
    }
}

/// The line of yt-dlp's errors that says why, in words people act on.
fn ytdlp_failure(stderr: &str) -> String {
    let line = stderr.lines().rev().find(|l| l.starts_with("ERROR:")).or_else(|| stderr.lines().last()).unwrap_or("");
    let line = line.trim_start_matches("ERROR:").trim();
    if line.to_lowercase().contains("sign in to confirm") {
        return "YouTube asks den's server to sign in to prove it is not a bot, so this cannot play from here; try a link \
                to the file itself, or the server's library"
            .into();
    }
    if line.is_empty() { "it failed without saying why".into() } else { line.chars().take(300).collect() }
}

fn is_playlist(url: &str) -> bool {
    url.split(['?', '#']).next().is_some_and(|p| p.to_lowercase().ends_with(".m3u8"))
}

/// `localhost`, or an address literal that is not public.
fn names_private_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.to_lowercase().ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| !is_public(ip))
}

/// Whether an address is reachable on the public internet (not loopback,
/// private, link-local (cloud metadata lives there), unique-local, CGNAT,
/// unspecified, multicast or documentation).
#[must_use]
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// A resolver that answers only public addresses.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                let e: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves to no public address; den does not fetch from private networks").into();
                return Err(e);
            }
            let addrs: reqwest::dns::Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, ..) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_into_private_networks_are_refused_unless_allowed() {
        let s = Sources::new(None, false);
        for url in [
            "http://127.0.0.1/a.mp3",
            "http://169.254.169.254/latest",
            "http://[::1]/x",
            "http://10.1.2.3/x",
            "http://localhost:8000/x",
        ] {
            assert!(matches!(s.link(url, None), Err(ResolveError::Refused(..))), "{url}");
        }
        assert!(matches!(s.link("ftp://example.com/a.mp3", None), Err(ResolveError::Refused(..))));
        let t = s.link("https://example.com/music/My%20Song.mp3?x=1", None).unwrap();
        assert_eq!(t.title, "My Song.mp3");
        assert!(Sources::new(None, true).link("http://127.0.0.1/a.mp3", None).is_ok());
    }

    #[test]
    fn yt_dlp_failures_are_one_line_and_the_bot_check_is_said_plainly() {
        let bot = "WARNING: x\nERROR: [youtube] abc: Sign in to confirm you\u{2019}re not a bot. Use --cookies-from-browser\n";
        assert!(ytdlp_failure(bot).starts_with("YouTube asks den's server to sign in"));
        assert_eq!(ytdlp_failure("ERROR: Unsupported URL: https://x\n"), "Unsupported URL: https://x");
        let s = Sources::new(None, false).with_ytdlp("yt-dlp");
        assert!(s.is_ytdlp_page("https://www.youtube.com/watch?v=x") && s.is_ytdlp_page("https://music.youtube.com/x"));
        assert!(
            !s.is_ytdlp_page("https://example.com/a.mp3")
                && !Sources::new(None, false).is_ytdlp_page("https://youtu.be/x")
        );
    }

    #[test]
    fn words_without_a_library_say_how_to_play_something() {
        assert_eq!(Sources::new(None, false).resolve("some song"), Err(ResolveError::NoLibrary));
    }

    #[test]
    fn public_addresses_are_told_from_the_rest() {
        let public = ["8.8.8.8", "2606:4700::1111"];
        let private = ["100.64.0.1", "192.168.1.1", "fd00::1", "fe80::1", "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1"];
        assert!(public.iter().all(|a| is_public(a.parse().unwrap())));
        assert!(private.iter().all(|a| !is_public(a.parse().unwrap())), "{private:?}");
    }
}
