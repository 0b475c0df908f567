//! REST v10: one handler that finds the spec operation, checks the request,
//! applies rate limits, runs the operation on the model and checks the response.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::model::{self, Channel, Message, Model, Role, Webhook};
use super::ratelimit::Verdict;
use super::{RequestRecord, Shared};

/// Interaction tokens work for 15 minutes.
const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// How long Discord remembers an enforced nonce ("a few minutes").
const NONCE_WINDOW: Duration = Duration::from_secs(5 * 60);
/// An interaction must get its first response within 3 seconds.
const FIRST_RESPONSE: Duration = Duration::from_secs(3);

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

fn err(status: u16, code: u32, message: &str) -> ApiError {
    ApiError { status, code, message: message.to_owned() }
}

pub(crate) type OpResult = Result<(u16, Value), ApiError>;

pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    axum::extract::ConnectInfo(conn): axum::extract::ConnectInfo<super::conn::Conn>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(path) = uri.path().strip_prefix("/api/v10") else {
        return (StatusCode::NOT_FOUND, "den-testkit fake Discord serves /api/v10 only").into_response();
    };
    let checker = &shared.checker;
    let Some(op) = checker.operation(method.as_str(), path) else {
        shared.violation(format!("{method} {path}: no such operation in Discord's OpenAPI spec"));
        return error_response(err(404, 0, "404: Not Found"), None);
    };
    let json_body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                shared.violation(format!("{method} {path} ({}): body is not JSON: {e}", op.id));
                return error_response(err(400, 50109, "The request body contains invalid JSON."), None);
            }
        }
    };
    if shared.config.check_schemas
        && let Err(e) = checker.check_request(method.as_str(), &op, &json_body)
    {
        shared.violation(format!("{method} {path} ({}): request does not match the spec: {e}", op.id));
        return error_response(err(400, 50035, &format!("Invalid Form Body: {e}")), None);
    }

    let token_route = op.params.contains_key("webhook_token") || op.params.contains_key("interaction_token");
    let bot_auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    // A request of another bot account runs as that account (its messages are its own).
    let other_bot = bot_auth
        .as_deref()
        .and_then(|a| a.strip_prefix("Bot "))
        .and_then(|t| shared.model().other_bots.get(t).cloned())
        .filter(|_| !token_route);
    if !token_route && other_bot.is_none() {
        let expected = format!("Bot {}", shared.config.bot_token);
        if bot_auth.as_deref() != Some(expected.as_str()) {
            shared.stats().invalid_requests += 1;
            record(&shared, &method, path, &op.id, &json_body, 401);
            return error_response(err(401, 0, "401: Unauthorized"), None);
        }
    }

    let (class, major) = route_class(&shared, &op);
    let mut after_commit = None;
    let verdict = {
        let mut limiter = shared.limiter.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let injected = shared.take_injected(&op.id);
        match injected {
            Some(super::Injected::RateLimited(retry_after)) => Verdict::Limited {
                headers: super::ratelimit::Headers {
                    bucket: "injected".into(),
                    limit: 1,
                    remaining: 0,
                    reset_after: retry_after,
                },
                retry_after,
                global: false,
            },
            Some(super::Injected::Status(status)) => {
                record(&shared, &method, path, &op.id, &json_body, status);
                return error_response(err(status, 0, "injected failure"), None);
            }
            Some(after @ (super::Injected::StatusAfterCommit(_) | super::Injected::DropAfterCommit)) => {
                after_commit = Some(after);
                Verdict::Exempt
            }
            None => limiter.take(&shared.config.rate_limits, class, &major, !token_route, Instant::now()),
        }
    };
    let verdict = match verdict {
        Verdict::Allowed(h) if op.id == "execute_webhook" => match webhook_channel_wait(&shared, &op) {
            Some(retry_after) => Verdict::Limited {
                headers: super::ratelimit::Headers { bucket: "webhook-channel".into(), ..h },
                retry_after,
                global: false,
            },
            None => Verdict::Allowed(h),
        },
        other => other,
    };
    let rl_headers = match verdict {
        Verdict::Limited { headers, retry_after, global } => {
            {
                let mut stats = shared.stats();
                stats.rate_limited += 1;
                stats.invalid_requests += 1;
            }
            record(&shared, &method, path, &op.id, &json_body, 429);
            let body = json!({"message": "You are being rate limited.", "retry_after": retry_after.as_secs_f64(), "global": global, "code": 0});
            if let Err(e) = checker.check_response(method.as_str(), &op, 429, &body) {
                shared.violation(format!("fake's own 429 for {} does not match the spec: {e}", op.id));
            }
            let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
            let h = response.headers_mut();
            set_rate_headers(h, &headers);
            h.insert("retry-after", HeaderValue::from(retry_after.as_secs_f64().ceil().max(1.0) as u64));
            if global {
                h.insert("x-ratelimit-scope", HeaderValue::from_static("global"));
            } else if headers.bucket == "webhook-channel" {
                h.insert("x-ratelimit-scope", HeaderValue::from_static("shared"));
            }
            if global {
                h.insert("x-ratelimit-global", HeaderValue::from_static("true"));
            }
            return response;
        }
        Verdict::Allowed(h) => Some(h),
        Verdict::Exempt => None,
    };

    let result = {
        let mut model = shared.model();
        match other_bot {
            Some(acting) => {
                let den = std::mem::replace(&mut model.bot, acting);
                let result = run(&shared, &mut model, &op.id, &op.params, &query, &json_body);
                model.bot = den;
                result
            }
            None => run(&shared, &mut model, &op.id, &op.params, &query, &json_body),
        }
    };
    let response = match result {
        Ok((status, body)) => {
            if shared.config.check_schemas
                && (200..300).contains(&status)
                && let Err(e) = checker.check_response(method.as_str(), &op, status, &body)
            {
                shared.violation(format!("fake's own {status} response to {} does not match the spec: {e}", op.id));
            }
            record(&shared, &method, path, &op.id, &json_body, status);
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
        Some(super::Injected::DropAfterCommit) => {
            conn.cut();
            response
        }
        Some(super::Injected::StatusAfterCommit(status)) => {
            error_response(err(status, 0, "injected failure after commit"), None)
        }
        _ => response,
    }
}

/// The hidden per-channel limit of webhook posts: how long to wait, when full.
fn webhook_channel_wait(shared: &Shared, op: &crate::openapi::Operation) -> Option<Duration> {
    let webhook: u64 = op.params.get("webhook_id")?.parse().ok()?;
    let channel = shared.model().webhooks.get(&webhook)?.channel_id;
    let mut limiter = shared.limiter.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    limiter.take_webhook_post(&shared.config.rate_limits, channel, Instant::now())
}

fn set_rate_headers(h: &mut HeaderMap, r: &super::ratelimit::Headers) {
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

fn error_response(e: ApiError, rl: Option<&super::ratelimit::Headers>) -> Response {
    let code = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = (code, axum::Json(json!({"message": e.message, "code": e.code}))).into_response();
    if let Some(h) = rl {
        set_rate_headers(r.headers_mut(), h);
    }
    r
}

fn record(shared: &Shared, method: &Method, path: &str, op: &str, body: &Value, status: u16) {
    let mut stats = shared.stats();
    stats.requests.push(RequestRecord {
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
                .and_then(|c| shared.model().channels.get(&c).map(|c| c.guild_id.to_string()))
                .unwrap_or_default();
            ("guild_writes", guild)
        }
        _ => ("default", op.params.values().next().cloned().unwrap_or_default()),
    }
}

fn id(params: &HashMap<String, String>, key: &str) -> Result<u64, ApiError> {
    params.get(key).and_then(|v| v.parse().ok()).ok_or_else(|| err(404, 0, "404: Not Found"))
}

fn snowflake(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// Discord's documented 2,000-character limit (the spec says 4,000).
fn check_content(body: &Value) -> Result<(), ApiError> {
    if body["content"].as_str().is_some_and(|c| c.chars().count() > 2000) {
        return Err(err(400, 50035, "Invalid Form Body: content: Must be 2000 or fewer in length."));
    }
    Ok(())
}

/// Which users and whether @everyone a message pings, after `allowed_mentions`.
fn pings(body: &Value) -> (Vec<u64>, bool) {
    let content = body["content"].as_str().unwrap_or("");
    let mut users = Vec::new();
    let mut rest = content;
    while let Some(start) = rest.find("<@") {
        rest = &rest[start + 2..];
        let digits: String = rest.trim_start_matches('!').chars().take_while(char::is_ascii_digit).collect();
        if let Ok(id) = digits.parse() {
            users.push(id);
        }
    }
    let everyone = content.contains("@everyone") || content.contains("@here");
    let allowed = &body["allowed_mentions"];
    if allowed.is_null() {
        return (users, everyone);
    }
    let parse: Vec<&str> =
        allowed["parse"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let listed: Vec<u64> =
        allowed["users"].as_array().map(|a| a.iter().filter_map(snowflake).collect()).unwrap_or_default();
    let users = users.into_iter().filter(|u| parse.contains(&"users") || listed.contains(u)).collect();
    (users, everyone && parse.contains(&"everyone"))
}

fn new_message(
    model: &mut Model,
    channel_id: u64,
    author: (u64, String, Option<String>, bool),
    body: &Value,
) -> Message {
    let (pinged_users, pinged_everyone) = pings(body);
    Message {
        id: model.snowflake(),
        channel_id,
        author_id: author.0,
        author_name: author.1,
        author_avatar: author.2,
        author_bot: author.3,
        content: body["content"].as_str().unwrap_or("").to_owned(),
        webhook_id: None,
        reply_to: snowflake(&body["message_reference"]["message_id"]),
        flags: body["flags"].as_u64().unwrap_or(0),
        embeds: body["embeds"].as_array().cloned().unwrap_or_default(),
        components: body["components"].as_array().cloned().unwrap_or_default(),
        pinged_users,
        pinged_everyone,
        edits: 0,
        created: model.now(),
        nonce: None,
    }
}

fn edit_message(m: &mut Message, body: &Value) {
    if let Some(c) = body.get("content").and_then(Value::as_str) {
        m.content = c.to_owned();
        let (users, everyone) = pings(body);
        m.pinged_users = users;
        m.pinged_everyone = everyone;
    }
    if let Some(e) = body.get("embeds").and_then(Value::as_array) {
        m.embeds = e.clone();
    }
    if let Some(c) = body.get("components").and_then(Value::as_array) {
        m.components = c.clone();
    }
    m.flags &= !128; // no longer "thinking"
    m.edits += 1;
}

/// Overwrites as Discord keeps and answers them: permission bits as strings
/// (requests may send integers).
fn stored_overwrites(v: &Value) -> Vec<Value> {
    let text = |x: &Value| match x {
        Value::Number(n) => Value::String(n.to_string()),
        other => other.clone(),
    };
    v.as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            let mut o = o.clone();
            for k in ["allow", "deny"] {
                o[k] = text(&o[k]);
            }
            o
        })
        .collect()
}

fn bot_author(model: &Model) -> (u64, String, Option<String>, bool) {
    (model.bot.id, model.bot.name.clone(), None, true)
}

/// Finds a live interaction by token for the webhook-style routes.
fn interaction<'m>(model: &'m mut Model, app: u64, token: &str) -> Result<&'m mut model::Interaction, ApiError> {
    let now = model.now();
    if app != model.app_id {
        return Err(err(404, 10015, "Unknown Webhook"));
    }
    let i = model.interactions.get_mut(token).ok_or_else(|| err(401, 50027, "Invalid Webhook Token"))?;
    if now.duration_since(i.created).unwrap_or_default() > TOKEN_LIFETIME {
        return Err(err(401, 50027, "Invalid Webhook Token"));
    }
    Ok(i)
}

fn run(
    shared: &Shared,
    model: &mut Model,
    op: &str,
    params: &HashMap<String, String>,
    query: &HashMap<String, String>,
    body: &Value,
) -> OpResult {
    match op {
        "get_bot_gateway" => {
            let identifies = shared.hub().identifies.len() as u64;
            Ok((
                200,
                json!({
                    "url": shared.gateway_url,
                    "shards": shared.config.shards,
                    "session_start_limit": {
                        "total": 1000, "remaining": 1000u64.saturating_sub(identifies),
                        "reset_after": 86_400_000, "max_concurrency": shared.config.max_concurrency,
                    },
                }),
            ))
        }
        "get_my_user" => {
            let mut me = model::user_json(model.bot.id, &model.bot.name, true, None);
            me["mfa_enabled"] = false.into();
            me["locale"] = "en-US".into();
            Ok((200, me))
        }
        "get_my_application" => Ok((
            200,
            json!({
                "id": model.app_id.to_string(), "name": model.bot.name, "icon": null, "description": "", "type": null,
                "verify_key": shared.public_key_hex, "flags": 0, "flags_new": "0", "redirect_uris": [],
                "interactions_endpoint_url": null, "role_connections_verification_url": null,
                "owner": {
                    "id": "1", "username": "owner", "avatar": null, "discriminator": "0000", "public_flags": 0, "flags": 0,
                    "global_name": null, "mfa_enabled": false, "locale": "en-US", "primary_guild": null,
                },
                "approximate_guild_count": model.guilds.len(), "approximate_user_install_count": 0,
                "approximate_user_authorization_count": 0, "explicit_content_filter": 0, "team": null,
                "eligible_oauth2_scopes": [],
            }),
        )),
        "create_message" => {
            let channel = id(params, "channel_id")?;
            let guild =
                model.channels.get(&channel).map(|c| c.guild_id).ok_or_else(|| err(404, 10003, "Unknown Channel"))?;
            check_content(body)?;
            let author = bot_author(model);
            let nonce = match &body["nonce"] {
                Value::String(n) => Some(n.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            };
            // `enforce_nonce`: a second create with the same nonce by the same
            // author in the same channel within minutes answers the first message.
            if let Some(n) = nonce.as_ref().filter(|_| body["enforce_nonce"] == true) {
                let now = model.now();
                if let Some(first) = model.messages.values().find(|m| {
                    m.channel_id == channel
                        && m.author_id == author.0
                        && m.nonce.as_ref() == Some(n)
                        && now.duration_since(m.created).unwrap_or_default() < NONCE_WINDOW
                }) {
                    return Ok((200, model::message_json(first)));
                }
            }
            let mut m = new_message(model, channel, author, body);
            m.nonce = nonce;
            let json = model::message_json(&m);
            model.messages.insert(m.id, m);
            shared.dispatch_message(&json, guild);
            Ok((200, json))
        }
        "get_message" => {
            let m = model.messages.get(&id(params, "message_id")?).ok_or_else(|| err(404, 10008, "Unknown Message"))?;
            Ok((200, model::message_json(m)))
        }
        "list_messages" => {
            let channel = id(params, "channel_id")?;
            let limit = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(50usize);
            let list: Vec<Value> = model
                .messages
                .values()
                .rev()
                .filter(|m| m.channel_id == channel)
                .take(limit)
                .map(model::message_json)
                .collect();
            Ok((200, list.into()))
        }
        "update_message" => {
            check_content(body)?;
            let m =
                model.messages.get_mut(&id(params, "message_id")?).ok_or_else(|| err(404, 10008, "Unknown Message"))?;
            if m.author_id != model.bot.id {
                return Err(err(403, 50005, "Cannot edit a message authored by another user"));
            }
            edit_message(m, body);
            Ok((200, model::message_json(m)))
        }
        "delete_message" => {
            model.messages.remove(&id(params, "message_id")?).ok_or_else(|| err(404, 10008, "Unknown Message"))?;
            Ok((204, Value::Null))
        }
        "create_webhook" => {
            let channel = id(params, "channel_id")?;
            let guild =
                model.channels.get(&channel).map(|c| c.guild_id).ok_or_else(|| err(404, 10003, "Unknown Channel"))?;
            let name = body["name"].as_str().unwrap_or("");
            let lower = name.to_lowercase();
            if lower.contains("clyde") || lower.contains("discord") {
                return Err(err(
                    400,
                    50035,
                    "Invalid Form Body: name: Username cannot contain \"clyde\" or \"discord\"",
                ));
            }
            if model.webhooks.values().filter(|w| w.channel_id == channel).count() >= 15 {
                return Err(err(400, 30007, "Maximum number of webhooks reached (15)"));
            }
            let w = Webhook {
                id: model.snowflake(),
                token: format!("wh-token-{}", model.snowflake()),
                channel_id: channel,
                guild_id: guild,
                name: name.to_owned(),
            };
            let json = model::webhook_json(&w, model.app_id, &model.bot);
            model.webhooks.insert(w.id, w);
            Ok((200, json))
        }
        "list_channel_webhooks" => {
            let channel = id(params, "channel_id")?;
            let list: Vec<Value> = model
                .webhooks
                .values()
                .filter(|w| w.channel_id == channel)
                .map(|w| model::webhook_json(w, model.app_id, &model.bot))
                .collect();
            Ok((200, list.into()))
        }
        "get_webhook" => {
            let w = model.webhooks.get(&id(params, "webhook_id")?).ok_or_else(|| err(404, 10015, "Unknown Webhook"))?;
            Ok((200, model::webhook_json(w, model.app_id, &model.bot)))
        }
        "delete_webhook" => {
            model.webhooks.remove(&id(params, "webhook_id")?).ok_or_else(|| err(404, 10015, "Unknown Webhook"))?;
            Ok((204, Value::Null))
        }
        "execute_webhook" => {
            check_content(body)?;
            let webhook_id = id(params, "webhook_id")?;
            let token = params.get("webhook_token").cloned().unwrap_or_default();
            let wait = query.get("wait").is_some_and(|w| w == "true");
            if webhook_id == model.app_id {
                // An interaction follow-up.
                let i = interaction(model, webhook_id, &token)?;
                if i.callback.is_none() {
                    return Err(err(400, 40060, "Interaction has not been acknowledged"));
                }
                let (channel, guild) = (i.channel_id, i.guild_id);
                let author = bot_author(model);
                let m = new_message(model, channel, author, body);
                let json = model::message_json(&m);
                let mid = m.id;
                model.messages.insert(mid, m);
                if let Some(i) = model.interactions.get_mut(&token) {
                    i.followups.push(mid);
                }
                shared.dispatch_message(&json, guild);
                return Ok((200, json));
            }
            let w = model.webhooks.get(&webhook_id).cloned().ok_or_else(|| err(404, 10015, "Unknown Webhook"))?;
            if w.token != token {
                return Err(err(401, 50027, "Invalid Webhook Token"));
            }
            if let Some(name) = body["username"].as_str() {
                let lower = name.to_lowercase();
                if lower.contains("clyde") || lower.contains("discord") || name.is_empty() || name.chars().count() > 80
                {
                    return Err(err(400, 50035, "Invalid Form Body: username"));
                }
            }
            let name = body["username"].as_str().unwrap_or(&w.name).to_owned();
            let avatar = body["avatar_url"].as_str().map(str::to_owned);
            let mut m = new_message(model, w.channel_id, (w.id, name, avatar, true), body);
            m.webhook_id = Some(w.id);
            let json = model::message_json(&m);
            model.messages.insert(m.id, m);
            shared.dispatch_message(&json, w.guild_id);
            Ok(if wait { (200, json) } else { (204, Value::Null) })
        }
        "update_webhook_message" | "get_webhook_message" | "delete_webhook_message" => {
            let webhook_id = id(params, "webhook_id")?;
            let token = params.get("webhook_token").cloned().unwrap_or_default();
            if webhook_id == model.app_id {
                interaction(model, webhook_id, &token)?;
            } else {
                let w = model.webhooks.get(&webhook_id).ok_or_else(|| err(404, 10015, "Unknown Webhook"))?;
                if w.token != token {
                    return Err(err(401, 50027, "Invalid Webhook Token"));
                }
            }
            let mid = id(params, "message_id")?;
            let m = model.messages.get_mut(&mid).ok_or_else(|| err(404, 10008, "Unknown Message"))?;
            if m.webhook_id.is_some_and(|w| w != webhook_id) {
                return Err(err(404, 10008, "Unknown Message"));
            }
            match op {
                "get_webhook_message" => Ok((200, model::message_json(m))),
                "delete_webhook_message" => {
                    model.messages.remove(&mid);
                    Ok((204, Value::Null))
                }
                _ => {
                    check_content(body)?;
                    edit_message(m, body);
                    Ok((200, model::message_json(m)))
                }
            }
        }
        "create_interaction_response" => {
            let token = params.get("interaction_token").cloned().unwrap_or_default();
            let id = params.get("interaction_id").cloned().unwrap_or_default();
            respond(shared, model, &token, Some(&id), body)
        }
        "get_original_webhook_message" | "update_original_webhook_message" | "delete_original_webhook_message" => {
            let app = id(params, "webhook_id")?;
            let token = params.get("webhook_token").cloned().unwrap_or_default();
            let i = interaction(model, app, &token)?;
            let mid = i.original.ok_or_else(|| err(404, 10008, "Unknown Message"))?;
            match op {
                "delete_original_webhook_message" => {
                    model.messages.remove(&mid);
                    Ok((204, Value::Null))
                }
                "get_original_webhook_message" => {
                    let m = model.messages.get(&mid).ok_or_else(|| err(404, 10008, "Unknown Message"))?;
                    Ok((200, model::message_json(m)))
                }
                _ => {
                    check_content(body)?;
                    let m = model.messages.get_mut(&mid).ok_or_else(|| err(404, 10008, "Unknown Message"))?;
                    edit_message(m, body);
                    Ok((200, model::message_json(m)))
                }
            }
        }
        "bulk_set_application_commands" | "bulk_set_guild_application_commands" => {
            let guild: Option<u64> = params.get("guild_id").and_then(|g| g.parse().ok());
            let mut out = Vec::new();
            for c in body.as_array().cloned().unwrap_or_default() {
                let mut v = json!({
                    "id": model.snowflake().to_string(), "application_id": model.app_id.to_string(), "version": "1",
                    // Taken as an integer (or a string), answered as a string, like Discord.
                    "default_member_permissions": match c.get("default_member_permissions") {
                        Some(Value::Number(n)) => Value::String(n.to_string()),
                        Some(v) => v.clone(),
                        None => Value::Null,
                    },
                    "type": c.get("type").cloned().unwrap_or(1.into()), "name": c["name"], "description": c.get("description").cloned().unwrap_or("".into()),
                });
                if let Some(o) = c.get("options") {
                    v["options"] = o.clone();
                }
                if let Some(g) = guild {
                    v["guild_id"] = g.to_string().into();
                }
                out.push(v);
            }
            model.commands.insert(guild, out.clone());
            Ok((200, out.into()))
        }
        "list_application_commands" | "list_guild_application_commands" => {
            let guild: Option<u64> = params.get("guild_id").and_then(|g| g.parse().ok());
            Ok((200, model.commands.get(&guild).cloned().unwrap_or_default().into()))
        }
        "get_channel" => {
            let c = model.channels.get(&id(params, "channel_id")?).ok_or_else(|| err(404, 10003, "Unknown Channel"))?;
            Ok((200, model::channel_json(c)))
        }
        "list_guild_channels" => {
            let guild = id(params, "guild_id")?;
            Ok((
                200,
                model
                    .channels
                    .values()
                    .filter(|c| c.guild_id == guild)
                    .map(model::channel_json)
                    .collect::<Vec<_>>()
                    .into(),
            ))
        }
        "create_guild_channel" => {
            let guild = id(params, "guild_id")?;
            if !model.guilds.contains_key(&guild) {
                return Err(err(404, 10004, "Unknown Guild"));
            }
            if model.channels.values().filter(|c| c.guild_id == guild).count() >= 500 {
                return Err(err(400, 30013, "Maximum number of guild channels reached (500)"));
            }
            let parent_id = snowflake(&body["parent_id"]);
            if let Some(p) = parent_id {
                if model.channels.get(&p).is_none_or(|c| c.kind != 4) {
                    return Err(err(400, 50035, "Invalid Form Body: parent_id"));
                }
                if model.channels.values().filter(|c| c.parent_id == Some(p)).count() >= 50 {
                    return Err(err(
                        400,
                        50035,
                        "Invalid Form Body: parent_id: Maximum number of channels in category reached (50)",
                    ));
                }
            }
            // Like Discord: each forum tag gets an id, and its emoji fields are answered as null.
            let tags: Vec<Value> = body["available_tags"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    json!({"id": model.snowflake().to_string(), "name": t["name"],
                        "moderated": t["moderated"].as_bool().unwrap_or(false),
                        "emoji_id": t.get("emoji_id").cloned().unwrap_or(Value::Null),
                        "emoji_name": t.get("emoji_name").cloned().unwrap_or(Value::Null)})
                })
                .collect();
            let c = Channel {
                id: model.snowflake(),
                guild_id: guild,
                kind: body["type"].as_u64().unwrap_or(0) as u8,
                name: body["name"].as_str().unwrap_or("").to_owned(),
                topic: body["topic"].as_str().map(str::to_owned),
                parent_id,
                position: body["position"].as_i64().unwrap_or(0),
                overwrites: stored_overwrites(&body["permission_overwrites"]),
                tags,
            };
            let json = model::channel_json(&c);
            model.channels.insert(c.id, c);
            Ok((201, json))
        }
        "update_channel" => {
            let c =
                model.channels.get_mut(&id(params, "channel_id")?).ok_or_else(|| err(404, 10003, "Unknown Channel"))?;
            if let Some(n) = body["name"].as_str() {
                c.name = n.to_owned();
            }
            if body.get("topic").is_some() {
                c.topic = body["topic"].as_str().map(str::to_owned);
            }
            if body.get("parent_id").is_some() {
                c.parent_id = snowflake(&body["parent_id"]);
            }
            if body["permission_overwrites"].is_array() {
                c.overwrites = stored_overwrites(&body["permission_overwrites"]);
            }
            Ok((200, model::channel_json(c)))
        }
        "delete_channel" => {
            let c =
                model.channels.remove(&id(params, "channel_id")?).ok_or_else(|| err(404, 10003, "Unknown Channel"))?;
            model.messages.retain(|_, m| m.channel_id != c.id);
            model.webhooks.retain(|_, w| w.channel_id != c.id);
            Ok((200, model::channel_json(&c)))
        }
        "list_guild_roles" => {
            let guild = id(params, "guild_id")?;
            Ok((
                200,
                model.roles.values().filter(|r| r.guild_id == guild).map(model::role_json).collect::<Vec<_>>().into(),
            ))
        }
        "create_guild_role" => {
            let guild = id(params, "guild_id")?;
            if model.roles.values().filter(|r| r.guild_id == guild).count() >= 250 {
                return Err(err(400, 30005, "Maximum number of guild roles reached (250)"));
            }
            let position = model.roles.values().filter(|r| r.guild_id == guild).count() as i64;
            let everyone = model.roles.get(&guild).map(|r| r.permissions.clone()).unwrap_or_else(|| "0".into());
            let r = Role {
                id: model.snowflake(),
                guild_id: guild,
                name: body["name"].as_str().unwrap_or("new role").to_owned(),
                // Like Discord: without explicit permissions a role copies @everyone's.
                permissions: match &body["permissions"] {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => everyone,
                },
                position,
            };
            let json = model::role_json(&r);
            model.roles.insert(r.id, r);
            Ok((200, json))
        }
        "delete_guild_role" => {
            model.roles.remove(&id(params, "role_id")?).ok_or_else(|| err(404, 10011, "Unknown Role"))?;
            Ok((204, Value::Null))
        }
        other => Err(err(501, 0, &format!("den-testkit does not implement {other} yet"))),
    }
}

/// The first response to an interaction, whether den POSTed it to the
/// callback route (gateway interactions) or answered Discord's HTTP request
/// with it (`interaction_id` is then `None`: Discord knows which it sent).
pub(crate) fn respond(
    shared: &Shared,
    model: &mut Model,
    token: &str,
    interaction_id: Option<&str>,
    body: &Value,
) -> OpResult {
    let now = model.now();
    let author = bot_author(model);
    let i = model.interactions.get(token).cloned().ok_or_else(|| err(404, 10062, "Unknown interaction"))?;
    if interaction_id.is_some_and(|id| id != i.id.to_string()) {
        return Err(err(404, 10062, "Unknown interaction"));
    }
    if i.callback.is_some() {
        return Err(err(400, 40060, "Interaction has already been acknowledged."));
    }
    if now.duration_since(i.created).unwrap_or_default() > FIRST_RESPONSE {
        return Err(err(404, 10062, "Unknown interaction"));
    }
    let kind = body["type"].as_u64().unwrap_or(0) as u8;
    let data = body.get("data").cloned().unwrap_or(Value::Null);
    let original = match kind {
        4 | 5 => {
            check_content(&data)?;
            let mut m = new_message(model, i.channel_id, author, &data);
            if kind == 5 {
                m.flags |= 128; // "den is thinking…"
            }
            let mid = m.id;
            let json = model::message_json(&m);
            model.messages.insert(mid, m);
            if data["flags"].as_u64().unwrap_or(0) & 64 == 0 {
                shared.dispatch_message(&json, i.guild_id);
            }
            Some(mid)
        }
        1 | 6 | 7 | 8 | 9 => None,
        _ => return Err(err(400, 50035, "Invalid Form Body: type")),
    };
    let entry = model.interactions.get_mut(token).ok_or_else(|| err(404, 10062, "Unknown interaction"))?;
    entry.callback = Some((kind, data));
    entry.responded_at = Some(now);
    entry.original = original;
    Ok((204, Value::Null))
}

/// `GET /attachments/{id}/{file}`: a file a person attached (Discord's CDN, for the fake).
pub(crate) async fn attachment(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path((id, _file)): axum::extract::Path<(u64, String)>,
) -> Response {
    match shared.model().attachments.get(&id) {
        Some((_, bytes)) => (StatusCode::OK, bytes.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
