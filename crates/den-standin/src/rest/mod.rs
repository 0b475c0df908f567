//! REST v10: one handler finds the spec operation, checks the request,
//! authenticates, applies rate limits and injected faults, runs the
//! operation's handler from [`ops::HANDLERS`] and checks the response.

mod app;
mod guilds;
mod interactions;
mod messages;
mod multipart;
mod ops;
mod webhooks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub(crate) use interactions::respond;
pub(crate) use messages::pings;

use crate::events::{self, Event};
use crate::people::Upload;
use crate::ratelimit::{Headers, Verdict};
use crate::server::{Injected, RequestRecord, Shared, lock};
use crate::world::{User, World};

/// A Discord API error.
pub(crate) struct ApiError {
    status: u16,
    code: u32,
    message: String,
}

impl ApiError {
    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

pub(crate) fn err(status: u16, code: u32, message: &str) -> ApiError {
    ApiError { status, code, message: message.to_owned() }
}

pub(crate) type OpResult = Result<(u16, Value), ApiError>;

/// What an operation's handler works with.
pub(crate) struct Cx<'a> {
    pub shared: &'a Shared,
    pub world: &'a mut World,
    pub params: &'a HashMap<String, String>,
    pub query: &'a HashMap<String, String>,
    pub body: &'a Value,
    pub files: Vec<Upload>,
}

impl Cx<'_> {
    /// A snowflake path parameter.
    pub fn id(&self, key: &str) -> Result<u64, ApiError> {
        self.params.get(key).and_then(|v| v.parse().ok()).ok_or_else(|| err(404, 0, "404: Not Found"))
    }

    /// A text path parameter.
    pub fn param(&self, key: &str) -> String {
        self.params.get(key).cloned().unwrap_or_default()
    }

    /// Where attachments are served.
    pub fn cdn(&self) -> String {
        self.shared.rest_url.clone()
    }
}

/// A snowflake in JSON, as a string or a number.
pub(crate) fn snowflake(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// The request's body: JSON, or multipart with `payload_json` and files.
fn read_body(headers: &HeaderMap, body: &Bytes) -> Result<(Value, Vec<Upload>), String> {
    let kind = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if kind.starts_with("multipart/form-data") {
        return multipart::parse(kind, body);
    }
    if body.is_empty() {
        return Ok((Value::Null, Vec::new()));
    }
    serde_json::from_slice(body).map(|v| (v, Vec::new())).map_err(|e| format!("body is not JSON: {e}"))
}

/// The account a request acts as, from its `Authorization` header.
fn caller(shared: &Shared, auth: Option<&str>) -> Option<User> {
    shared.account(auth?.strip_prefix("Bot ")?)
}

pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    axum::extract::ConnectInfo(conn): axum::extract::ConnectInfo<crate::conn::Conn>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(path) = uri.path().strip_prefix("/api/v10") else {
        return (StatusCode::NOT_FOUND, "the Discord stand-in serves /api/v10 only").into_response();
    };
    let checker = &shared.checker;
    let Some(op) = checker.operation(method.as_str(), path) else {
        shared.violation(format!("{method} {path}: no such operation in Discord's OpenAPI spec"));
        return error_response(err(404, 0, "404: Not Found"), None);
    };
    let (json_body, files) = match read_body(&headers, &body) {
        Ok(read) => read,
        Err(e) => {
            shared.violation(format!("{method} {path} ({}): {e}", op.id));
            return error_response(err(400, 50109, "The request body contains invalid JSON."), None);
        }
    };
    if shared.config.check_schemas
        && let Err(e) = checker.check_request(method.as_str(), &op, &json_body)
    {
        shared.violation(format!("{method} {path} ({}): request does not match the spec: {e}", op.id));
        // Strict (tests): refused as Discord may refuse it. Lenient (the
        // playground): reported, and carried out as Discord mostly does.
        if shared.config.strict {
            return error_response(err(400, 50035, &format!("Invalid Form Body: {e}")), None);
        }
    }

    let token_route = op.params.contains_key("webhook_token") || op.params.contains_key("interaction_token");
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    let acting = if token_route { None } else { caller(&shared, auth) };
    if !token_route && acting.is_none() {
        shared.stats().invalid_requests += 1;
        record(&shared, &method, path, &op.id, &json_body, 401);
        return error_response(err(401, 0, "401: Unauthorized"), None);
    }
    let account = acting.as_ref().map_or_else(|| "webhook".to_owned(), |u| u.name.clone());
    let tokens: Vec<&str> =
        ["webhook_token", "interaction_token"].iter().filter_map(|k| op.params.get(*k).map(String::as_str)).collect();
    let shown_path = events::hide_tokens(path, &tokens);

    let (class, major) = route_class(&shared, &op);
    let mut after_commit = None;
    let verdict = {
        let mut limiter = lock(&shared.limiter);
        match shared.take_injected(&op.id) {
            Some(Injected::RateLimited(retry_after)) => Verdict::Limited {
                headers: Headers { bucket: "injected".into(), limit: 1, remaining: 0, reset_after: retry_after },
                retry_after,
                global: false,
            },
            Some(Injected::Status(status)) => {
                record(&shared, &method, path, &op.id, &json_body, status);
                return error_response(err(status, 0, "injected failure"), None);
            }
            Some(after @ (Injected::StatusAfterCommit(_) | Injected::DropAfterCommit)) => {
                after_commit = Some(after);
                Verdict::Exempt
            }
            None => limiter.take(&shared.config.rate_limits, class, &major, !token_route, Instant::now()),
        }
    };
    let verdict = match verdict {
        Verdict::Allowed(h) if op.id == "execute_webhook" => match webhook_channel_wait(&shared, &op) {
            Some(retry_after) => Verdict::Limited {
                headers: Headers { bucket: "webhook-channel".into(), ..h },
                retry_after,
                global: false,
            },
            None => Verdict::Allowed(h),
        },
        other => other,
    };
    let rl_headers = match verdict {
        Verdict::Limited { headers, retry_after, global } => {
            return rate_limited(&shared, (&method, path, &op), &json_body, &headers, retry_after, global);
        }
        Verdict::Allowed(h) => Some(h),
        Verdict::Exempt => None,
    };

    let result = {
        let mut world = shared.world();
        let run = |world: &mut World| {
            let mut cx = Cx { shared: &shared, world, params: &op.params, query: &query, body: &json_body, files };
            ops::run(&op.id, &mut cx)
        };
        match acting.filter(|u| u.id != world.bot.id) {
            // Another bot's request runs as that bot: its messages are its own.
            Some(other) => {
                let app = std::mem::replace(&mut world.bot, other);
                let result = run(&mut world);
                world.bot = app;
                result
            }
            None => run(&mut world),
        }
    };
    let (status, response_body) = match &result {
        Ok((status, body)) => (*status, body.clone()),
        Err(e) => (e.status, json!({"message": e.message, "code": e.code})),
    };
    if shared.config.wire_log {
        shared.feed.send(Event::Rest {
            id: shared.feed.next_id(),
            at_ms: events::now_ms(),
            account,
            method: method.to_string(),
            path: shown_path,
            operation: op.id.clone(),
            status,
            request: json_body.clone(),
            response: response_body,
        });
    }
    let response = match result {
        Ok((status, body)) => {
            if shared.config.check_schemas
                && (200..300).contains(&status)
                && let Err(e) = checker.check_response(method.as_str(), &op, status, &body)
            {
                shared.violation(format!("the stand-in's own {status} response to {} breaks the spec: {e}", op.id));
            }
            record(&shared, &method, path, &op.id, &json_body, status);
            if method != Method::GET {
                let (part, channel) = ops::changed(&op.id, &op.params, &body, &shared.world());
                shared.touch(part, channel);
            }
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut r = if body.is_null() { code.into_response() } else { (code, axum::Json(body)).into_response() };
            if let Some(h) = &rl_headers {
                set_rate_headers(r.headers_mut(), h);
            }
            r
        }
        Err(e) => {
            if matches!(e.status, 401 | 403) {
                shared.stats().invalid_requests += 1;
            }
            record(&shared, &method, path, &op.id, &json_body, e.status);
            error_response(e, rl_headers.as_ref())
        }
    };
    shared.changed.notify_waiters();
    match after_commit {
        Some(Injected::DropAfterCommit) => {
            conn.cut();
            response
        }
        Some(Injected::StatusAfterCommit(status)) => {
            error_response(err(status, 0, "injected failure after commit"), None)
        }
        _ => response,
    }
}

/// A 429, with the bucket's headers and the scope Discord names.
fn rate_limited(
    shared: &Shared,
    (method, path, op): (&Method, &str, &crate::openapi::Operation),
    body: &Value,
    headers: &Headers,
    retry_after: Duration,
    global: bool,
) -> Response {
    {
        let mut stats = shared.stats();
        stats.rate_limited += 1;
        stats.invalid_requests += 1;
    }
    record(shared, method, path, &op.id, body, 429);
    let answer = json!({"message": "You are being rate limited.", "retry_after": retry_after.as_secs_f64(), "global": global, "code": 0});
    if let Err(e) = shared.checker.check_response(method.as_str(), op, 429, &answer) {
        shared.violation(format!("the stand-in's own 429 for {} breaks the spec: {e}", op.id));
    }
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(answer)).into_response();
    let h = response.headers_mut();
    set_rate_headers(h, headers);
    h.insert("retry-after", HeaderValue::from(retry_after.as_secs_f64().ceil().max(1.0) as u64));
    if global {
        h.insert("x-ratelimit-scope", HeaderValue::from_static("global"));
        h.insert("x-ratelimit-global", HeaderValue::from_static("true"));
    } else if headers.bucket == "webhook-channel" {
        h.insert("x-ratelimit-scope", HeaderValue::from_static("shared"));
    }
    response
}

/// The hidden per-channel limit of webhook posts: how long to wait, when full.
fn webhook_channel_wait(shared: &Shared, op: &crate::openapi::Operation) -> Option<Duration> {
    let webhook: u64 = op.params.get("webhook_id")?.parse().ok()?;
    let channel = shared.world().webhooks.get(&webhook)?.channel_id;
    lock(&shared.limiter).take_webhook_post(&shared.config.rate_limits, channel, Instant::now())
}

fn set_rate_headers(h: &mut HeaderMap, r: &Headers) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let pairs = [
        ("x-ratelimit-limit", r.limit.to_string()),
        ("x-ratelimit-remaining", r.remaining.to_string()),
        ("x-ratelimit-reset-after", format!("{:.3}", r.reset_after.as_secs_f64())),
        ("x-ratelimit-reset", format!("{:.3}", (now + r.reset_after).as_secs_f64())),
        ("x-ratelimit-bucket", r.bucket.clone()),
        // Assumption: Discord's docs list this header on 429s only, but clients
        // such as twilight 0.18 read the bucket headers only when it is present,
        // which matches what Discord sends on every rate-limited route today.
        ("x-ratelimit-scope", "user".to_owned()),
    ];
    for (k, v) in pairs {
        if let Ok(v) = v.parse() {
            h.insert(k, v);
        }
    }
}

fn error_response(e: ApiError, rl: Option<&Headers>) -> Response {
    let code = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = (code, axum::Json(json!({"message": e.message, "code": e.code}))).into_response();
    if let Some(h) = rl {
        set_rate_headers(r.headers_mut(), h);
    }
    r
}

fn record(shared: &Shared, method: &Method, path: &str, op: &str, body: &Value, status: u16) {
    shared.stats().requests.push(RequestRecord {
        method: method.to_string(),
        path: path.to_owned(),
        operation: op.to_owned(),
        body: body.clone(),
        status,
        at: Instant::now(),
    });
}

/// The rate-limit bucket class and major parameter of an operation.
fn route_class(shared: &Shared, op: &crate::openapi::Operation) -> (&'static str, String) {
    let p = |k: &str| op.params.get(k).cloned().unwrap_or_default();
    match op.id.as_str() {
        "create_message" => ("channel_messages", p("channel_id")),
        "update_message" | "delete_message" => ("message_edits", p("channel_id")),
        "create_interaction_response" => ("interaction_callback", p("interaction_id")),
        "execute_webhook"
        | "update_webhook_message"
        | "delete_webhook_message"
        | "update_original_webhook_message"
        | "delete_original_webhook_message" => {
            ("webhook_execute", format!("{}/{}", p("webhook_id"), p("webhook_token")))
        }
        "create_guild_channel" | "create_guild_role" | "update_guild_role" | "delete_guild_role" => {
            ("guild_writes", p("guild_id"))
        }
        "update_channel" | "delete_channel" => {
            let guild = p("channel_id")
                .parse::<u64>()
                .ok()
                .and_then(|c| shared.world().guild_of(c).map(|g| g.to_string()))
                .unwrap_or_default();
            ("guild_writes", guild)
        }
        _ => ("default", op.params.values().next().cloned().unwrap_or_default()),
    }
}

/// `GET /attachments/{id}/{file}`: a file someone attached (Discord's CDN, for the stand-in).
pub(crate) async fn attachment(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path((id, _file)): axum::extract::Path<(u64, String)>,
) -> Response {
    match shared.world().files.get(&id) {
        Some((_, bytes)) => (StatusCode::OK, bytes.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
