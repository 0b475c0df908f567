//! The page and its JSON API: what a person sees, and what they do.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use den_standin::{CommandOption, Event, Standin, Upload, perms, view};
use futures_util::{Stream, StreamExt as _};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::seed::Cast;

/// Discord's limit on a message's text.
const MAX_CONTENT: usize = 2000;
/// Discord's limit on a file (without boosts).
const MAX_FILE: usize = 10 * 1024 * 1024;
/// Messages a channel shows.
const HISTORY: usize = 200;

/// What the page says about the den it shows.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct About {
    /// The model personas speak with, as people should read it.
    pub model: String,
    /// What that model cannot do well, said plainly (empty: nothing to say).
    pub note: String,
    /// The stand-in's REST base URL, for other bots.
    pub rest: String,
    /// The stand-in's gateway URL, for other bots.
    pub gateway: String,
    /// Where the page itself listens.
    pub page: String,
}

/// The page's state: the stand-in it shows and where reset requests go.
#[derive(Clone)]
pub struct Playground {
    standin: Arc<Standin>,
    about: Arc<std::sync::RwLock<About>>,
    reset: mpsc::Sender<()>,
}

impl Playground {
    /// A page over `standin`; a press of "reset" sends on `reset`.
    #[must_use]
    pub fn new(standin: Arc<Standin>, about: About, reset: mpsc::Sender<()>) -> Self {
        Self { standin, about: Arc::new(std::sync::RwLock::new(about)), reset }
    }

    /// Changes what the page says about den (after a restart picked another model).
    pub fn set_about(&self, about: About) {
        *self.about.write().unwrap_or_else(std::sync::PoisonError::into_inner) = about;
    }

    /// The routes of the page and its API.
    pub fn router(self) -> axum::Router {
        axum::Router::new()
            .route("/", get(|| async { asset("text/html; charset=utf-8", include_str!("../page/index.html")) }))
            .route("/app.js", get(|| async { asset("text/javascript", include_str!("../page/app.js")) }))
            .route("/style.css", get(|| async { asset("text/css", include_str!("../page/style.css")) }))
            .route("/api/state", get(state))
            .route("/api/channels/{id}/messages", get(messages))
            .route("/api/events", get(events))
            .route("/api/wire", get(wire))
            .route("/api/messages", post(send_message))
            .route("/api/uploads", post(upload))
            .route("/api/commands", post(command))
            .route("/api/components", post(component))
            .route("/api/threads", post(thread))
            .route("/api/reactions", post(react))
            .route("/api/voice", post(voice))
            .route("/api/voice/audio", get(voice_audio))
            .route("/api/reset", post(reset))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_FILE * 2))
            .with_state(self)
    }

    fn cast(&self) -> Result<Cast, Refusal> {
        Cast::find(&self.standin).ok_or(Refusal(StatusCode::SERVICE_UNAVAILABLE, "the playground is starting over"))
    }

    /// The person a request acts as: one of the cast, or a refusal.
    fn person(&self, id: &str) -> Result<(Cast, u64), Refusal> {
        let cast = self.cast()?;
        match id.parse() {
            Ok(u) if cast.has(u) => Ok((cast, u)),
            _ => Err(Refusal(StatusCode::BAD_REQUEST, "\"as\" must be one of the playground's people")),
        }
    }

    /// A channel `user` may see, or a refusal.
    fn channel_for(&self, user: u64, channel: &str) -> Result<u64, Refusal> {
        let id = channel.parse().map_err(|_| Refusal(StatusCode::BAD_REQUEST, "\"channel\" is not a channel id"))?;
        if self.standin.read(|w| perms::can_view(w, id, user)) {
            Ok(id)
        } else {
            Err(Refusal(StatusCode::FORBIDDEN, "that person cannot see this channel"))
        }
    }
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// A request the playground will not carry out, and why.
#[derive(Debug)]
struct Refusal(StatusCode, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

#[derive(Deserialize)]
struct Viewer {
    #[serde(rename = "as")]
    user: Option<String>,
}

async fn state(State(pg): State<Playground>, Query(q): Query<Viewer>) -> Result<Json<Value>, Refusal> {
    let (cast, user) = match q.user {
        Some(u) => pg.person(&u)?,
        None => pg.cast().map(|c| (c, c.admin))?,
    };
    let guild = pg.standin.read(|w| view::guild(w, cast.guild, user));
    let about = pg.about.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    Ok(Json(json!({
        "guild": guild,
        "cast": cast.people(),
        "general": cast.general.to_string(),
        "about": about,
        "online": pg.standin.connected_accounts(),
    })))
}

async fn messages(
    State(pg): State<Playground>,
    Path(channel): Path<String>,
    Query(q): Query<Viewer>,
) -> Result<Json<Value>, Refusal> {
    let (_, user) = pg.person(q.user.as_deref().unwrap_or_default())?;
    let channel = pg.channel_for(user, &channel)?;
    let cdn = pg.standin.cdn();
    let list = pg.standin.read(|w| view::messages(w, channel, user, HISTORY, &cdn)).unwrap_or_default();
    Ok(Json(Value::Array(list)))
}

/// A change or a wire event as the page reads it (snowflakes as strings).
fn for_page(event: &Event) -> Value {
    match event {
        Event::Changed { part, channel } => {
            json!({"type": "changed", "part": part, "channel": channel.map(|c| c.to_string())})
        }
        other => serde_json::to_value(other).unwrap_or(Value::Null),
    }
}

async fn events(State(pg): State<Playground>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = tokio_stream::wrappers::BroadcastStream::new(pg.standin.subscribe()).map(|e| {
        // A page that fell behind reloads everything rather than show a gap.
        let data = e.map_or_else(|_| json!({"type": "lagged"}), |e| for_page(&e));
        Ok(SseEvent::default().data(data.to_string()))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn wire(State(pg): State<Playground>) -> Json<Value> {
    Json(Value::Array(pg.standin.recent_wire().iter().map(for_page).collect()))
}

#[derive(Deserialize)]
struct FileIn {
    name: String,
    /// Base64.
    data: String,
    #[serde(default)]
    content_type: Option<String>,
}

impl FileIn {
    fn upload(self) -> Result<Upload, Refusal> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.data.as_bytes())
            .map_err(|_| Refusal(StatusCode::BAD_REQUEST, "a file's data is not base64"))?;
        if bytes.len() > MAX_FILE {
            return Err(Refusal(StatusCode::PAYLOAD_TOO_LARGE, "a file is over Discord's 10 MiB limit"));
        }
        let filename: String = self.name.chars().filter(|c| !matches!(c, '/' | '\\')).take(100).collect();
        if filename.is_empty() {
            return Err(Refusal(StatusCode::BAD_REQUEST, "a file needs a name"));
        }
        Ok(Upload { filename, bytes, content_type: self.content_type })
    }
}

#[derive(Deserialize)]
struct MessageIn {
    #[serde(rename = "as")]
    user: String,
    channel: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    files: Vec<FileIn>,
}

fn check_content(content: &str) -> Result<(), Refusal> {
    if content.chars().count() > MAX_CONTENT {
        Err(Refusal(StatusCode::BAD_REQUEST, "a message is at most 2000 characters"))
    } else {
        Ok(())
    }
}

async fn send_message(State(pg): State<Playground>, Json(m): Json<MessageIn>) -> Result<Json<Value>, Refusal> {
    let (_, user) = pg.person(&m.user)?;
    let channel = pg.channel_for(user, &m.channel)?;
    check_content(&m.content)?;
    let files = m.files.into_iter().map(FileIn::upload).collect::<Result<Vec<_>, _>>()?;
    if m.content.trim().is_empty() && files.is_empty() {
        return Err(Refusal(StatusCode::BAD_REQUEST, "an empty message"));
    }
    let reply_to = m.reply_to.and_then(|r| r.parse().ok());
    let content = pg.standin.read(|w| with_mentions(w, channel, &m.content));
    let id = pg.standin.post(user, channel, &content, reply_to, files);
    Ok(Json(json!({"id": id.to_string()})))
}

/// `@name` of a bot or a member of the channel's server made into a mention,
/// as Discord's client does when a name is picked after `@`.
fn with_mentions(w: &den_standin::world::World, channel: u64, text: &str) -> String {
    if !text.contains('@') {
        return text.to_owned();
    }
    let guild = w.guild_of(channel).and_then(|g| w.guilds.get(&g));
    let mut names: Vec<(String, u64)> = std::iter::once(&w.bot)
        .chain(w.users.values().filter(|u| u.bot || guild.is_some_and(|g| g.members.contains_key(&u.id))))
        .map(|u| (u.name.to_lowercase(), u.id))
        .collect();
    // Longer names first, so "@den bot" is not taken for "@den".
    names.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let lower = after.to_lowercase();
        let found = names.iter().find(|(n, _)| {
            !n.is_empty()
                && lower.starts_with(n.as_str())
                && lower[n.len()..].chars().next().is_none_or(|c| !c.is_alphanumeric())
        });
        match found {
            // Lowercasing can change byte lengths; only names that keep them are matched in place.
            Some((n, id)) if after.is_char_boundary(n.len()) && after[..n.len()].to_lowercase() == *n => {
                out.push_str(&format!("<@{id}>"));
                rest = &after[n.len()..];
            }
            _ => {
                out.push('@');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

async fn upload(State(pg): State<Playground>, Json(f): Json<FileIn>) -> Result<Json<Value>, Refusal> {
    let file = f.upload()?;
    let id = pg.standin.add_attachment(&file.filename, &file.bytes);
    Ok(Json(json!({"id": id.to_string(), "filename": file.filename})))
}

#[derive(Deserialize)]
struct CommandIn {
    #[serde(rename = "as")]
    user: String,
    channel: String,
    name: String,
    #[serde(default)]
    options: Vec<Value>,
}

/// Options as the page sends them (`{name, type, value}` or `{name, type, options}`).
fn options_of(list: &[Value]) -> Result<Vec<CommandOption>, Refusal> {
    let bad = Refusal(StatusCode::BAD_REQUEST, "an option needs a name and a type");
    list.iter()
        .map(|o| {
            let name = o["name"].as_str().ok_or(Refusal(bad.0, bad.1))?;
            let kind = o["type"].as_u64().and_then(|k| u8::try_from(k).ok()).ok_or(Refusal(bad.0, bad.1))?;
            Ok(match kind {
                1 | 2 => {
                    CommandOption::sub(kind, name, options_of(o["options"].as_array().map_or(&[], Vec::as_slice))?)
                }
                _ => CommandOption::of(kind, name, o["value"].clone()),
            })
        })
        .collect()
}

async fn command(State(pg): State<Playground>, Json(c): Json<CommandIn>) -> Result<Json<Value>, Refusal> {
    let (cast, user) = pg.person(&c.user)?;
    let channel = pg.channel_for(user, &c.channel)?;
    let known = pg.standin.read(|w| {
        view::guild(w, cast.guild, user).is_some_and(|g| g.commands.iter().any(|k| k["name"] == c.name.as_str()))
    });
    if !known {
        return Err(Refusal(StatusCode::BAD_REQUEST, "den has registered no such command for this person"));
    }
    let options = options_of(&c.options)?;
    let token = pg.standin.invoke_command(user, channel, &c.name, &options);
    Ok(Json(json!({"interaction": token.rsplit('-').next()})))
}

#[derive(Deserialize)]
struct ComponentIn {
    #[serde(rename = "as")]
    user: String,
    channel: String,
    message: String,
    custom_id: String,
    /// Chosen options of a select menu; absent for a button.
    #[serde(default)]
    values: Option<Vec<String>>,
}

async fn component(State(pg): State<Playground>, Json(c): Json<ComponentIn>) -> Result<Json<Value>, Refusal> {
    let (_, user) = pg.person(&c.user)?;
    let channel = pg.channel_for(user, &c.channel)?;
    let message = c.message.parse().map_err(|_| Refusal(StatusCode::BAD_REQUEST, "\"message\" is not an id"))?;
    let token = match &c.values {
        Some(values) => pg.standin.choose(user, channel, message, &c.custom_id, values),
        None => pg.standin.press_button(user, channel, message, &c.custom_id),
    };
    Ok(Json(json!({"interaction": token.rsplit('-').next()})))
}

#[derive(Deserialize)]
struct ReactionIn {
    #[serde(rename = "as")]
    user: String,
    channel: String,
    message: String,
    emoji: String,
}

async fn react(State(pg): State<Playground>, Json(r): Json<ReactionIn>) -> Result<Json<Value>, Refusal> {
    let (_, user) = pg.person(&r.user)?;
    let channel = pg.channel_for(user, &r.channel)?;
    let message = r.message.parse().map_err(|_| Refusal(StatusCode::BAD_REQUEST, "\"message\" is not an id"))?;
    match pg.standin.react(user, channel, message, &r.emoji) {
        Ok(()) => Ok(Json(json!({"ok": true}))),
        Err(_) => Err(Refusal(StatusCode::BAD_REQUEST, "cannot react to that message with that emoji")),
    }
}

#[derive(Deserialize)]
struct VoiceIn {
    #[serde(rename = "as")]
    user: String,
    /// The voice channel to join; none leaves voice.
    #[serde(default)]
    channel: Option<String>,
}

/// Someone joins a voice channel (or leaves voice), as in their client.
async fn voice(State(pg): State<Playground>, Json(v): Json<VoiceIn>) -> Result<Json<Value>, Refusal> {
    let (cast, user) = pg.person(&v.user)?;
    let channel = v.channel.as_deref().map(|c| pg.channel_for(user, c)).transpose()?;
    match pg.standin.join_voice(user, cast.guild, channel) {
        Ok(()) => Ok(Json(json!({"ok": true}))),
        Err(_) => Err(Refusal(StatusCode::BAD_REQUEST, "that is not a voice channel")),
    }
}

/// What den plays in the playground's server, decoded by the stand-in: raw
/// 48 kHz stereo 16-bit little-endian samples, streamed as they arrive.
async fn voice_audio(State(pg): State<Playground>) -> Result<Response, Refusal> {
    let cast = pg.cast()?;
    let Some(rx) = pg.standin.voice().listen(cast.guild) else {
        return Err(Refusal(StatusCode::NOT_FOUND, "den is not playing in a voice channel"));
    };
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(pcm) => {
                    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
                    return Some((Ok::<_, std::convert::Infallible>(bytes), rx));
                }
                // A slow page misses some audio rather than holding den's up.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let headers = [(header::CONTENT_TYPE, "audio/L16;rate=48000;channels=2"), (header::CACHE_CONTROL, "no-store")];
    Ok((headers, axum::body::Body::from_stream(chunks)).into_response())
}

#[derive(Deserialize)]
struct ThreadIn {
    #[serde(rename = "as")]
    user: String,
    channel: String,
    name: String,
    /// The message it starts from (a thread off a message).
    #[serde(default)]
    message: Option<String>,
    /// Its first message (a forum post).
    #[serde(default)]
    content: Option<String>,
}

async fn thread(State(pg): State<Playground>, Json(t): Json<ThreadIn>) -> Result<Json<Value>, Refusal> {
    let (_, user) = pg.person(&t.user)?;
    let channel = pg.channel_for(user, &t.channel)?;
    let name = t.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(Refusal(StatusCode::BAD_REQUEST, "a thread's name is 1 to 100 characters"));
    }
    let content = t.content.unwrap_or_default();
    check_content(&content)?;
    let from = t.message.and_then(|m| m.parse().ok());
    let id = pg.standin.start_thread(user, channel, name, from);
    if !content.trim().is_empty() {
        pg.standin.post(user, id, &content, None, Vec::new());
    }
    Ok(Json(json!({"id": id.to_string()})))
}

async fn reset(State(pg): State<Playground>) -> Result<StatusCode, Refusal> {
    pg.reset.try_send(()).map_err(|_| Refusal(StatusCode::CONFLICT, "a reset is already under way"))?;
    Ok(StatusCode::ACCEPTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_keep_subcommands_and_refuse_nameless_ones() {
        let opts =
            options_of(&[json!({"name": "add", "type": 1, "options": [{"name": "fact", "type": 3, "value": "x"}]})])
                .unwrap();
        assert_eq!(opts[0].options[0].value, "x");
        assert!(options_of(&[json!({"type": 3, "value": "x"})]).is_err());
    }

    #[test]
    fn a_file_that_is_not_base64_or_has_no_name_is_refused() {
        assert!(FileIn { name: "a.txt".into(), data: "***".into(), content_type: None }.upload().is_err());
        assert!(FileIn { name: "/".into(), data: "aGk=".into(), content_type: None }.upload().is_err());
        let ok = FileIn { name: "../a.txt".into(), data: "aGk=".into(), content_type: None }.upload().unwrap();
        assert_eq!((ok.filename.as_str(), ok.bytes.as_slice()), ("..a.txt", b"hi".as_slice()));
    }
}
