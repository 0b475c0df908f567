//! Downloading files people attach: only from Discord's attachment hosts
//! over HTTPS (or a configured stand-in for Discord), redirects only between
//! those, at most a given size, read in pieces so a bigger body is never
//! held whole.

use std::time::Duration;

/// Hosts Discord serves attachments from.
const ATTACHMENT_HOSTS: &[&str] = &["cdn.discordapp.com", "media.discordapp.net"];

/// Why a download gave nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Download {
    /// A passing failure: try again later.
    Retry(String),
    /// den will not use it; the reason is for the person who attached it.
    Refused(String),
}

/// A downloader of attachments.
#[derive(Clone, Debug)]
pub struct Attachments {
    http: reqwest::Client,
    extra_hosts: Vec<String>,
}

impl Attachments {
    /// A downloader that also accepts `extra_hosts` (`host:port` of a stand-in for Discord).
    #[must_use]
    pub fn new(extra_hosts: Vec<String>) -> Self {
        let hosts = extra_hosts.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() < 3 && downloadable(attempt.url().as_str(), &hosts) {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).redirect(policy).build();
        Self { http: http.unwrap_or_default(), extra_hosts }
    }

    /// Whether den may download from `url`.
    #[must_use]
    pub fn allows(&self, url: &str) -> bool {
        downloadable(url, &self.extra_hosts)
    }

    /// The file at `url`, at most `max` bytes.
    pub async fn get(&self, url: &str, max: u64) -> Result<Vec<u8>, Download> {
        if !self.allows(url) {
            return Err(Download::Refused("den only downloads attachments from Discord".into()));
        }
        let mut response = self.http.get(url).send().await.map_err(|e| {
            if e.is_redirect() {
                Download::Refused("it redirects away from Discord".into())
            } else {
                Download::Retry(e.without_url().to_string())
            }
        })?;
        if response.status().is_redirection() {
            return Err(Download::Refused("it redirects away from Discord".into()));
        }
        if !response.status().is_success() {
            return Err(Download::Refused(format!("HTTP {}", response.status())));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| Download::Retry(e.without_url().to_string()))? {
            if (bytes.len() + chunk.len()) as u64 > max {
                return Err(Download::Refused(format!("it is over {max} bytes")));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

/// Whether den may download from `url`: Discord's attachment hosts over
/// HTTPS, or a configured stand-in for Discord (`host:port`).
fn downloadable(url: &str, extra_hosts: &[String]) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else { return false };
    let host = u.host_str().unwrap_or_default();
    let with_port = u.port().map_or_else(|| host.to_owned(), |p| format!("{host}:{p}"));
    (u.scheme() == "https" && ATTACHMENT_HOSTS.contains(&host)) || extra_hosts.contains(&with_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_download_only_from_discord_or_its_configured_stand_in() {
        let local = vec!["127.0.0.1:9000".to_owned()];
        assert!(downloadable("https://cdn.discordapp.com/attachments/1/2/t.toml", &[]));
        assert!(!downloadable("http://cdn.discordapp.com/attachments/1/2/t.toml", &[]), "HTTPS only");
        assert!(!downloadable("https://evil.example/t.toml", &[]));
        assert!(!downloadable("https://cdn.discordapp.com.evil.example/t.toml", &[]));
        assert!(downloadable("http://127.0.0.1:9000/attachments/1/t.md", &local));
        assert!(!downloadable("http://127.0.0.1:9001/attachments/1/t.md", &local));
        assert!(!downloadable("not a url", &local));
    }
}
