//! HTTP requests from an API Gateway HTTP API or a Lambda function URL.
//!
//! Both send the payload format 2.0: the method under
//! `requestContext.http.method`, the path as `rawPath`, headers with
//! lower-case names (repeated ones joined by commas), the body as text or
//! base64. Both take back `{statusCode, headers, body, isBase64Encoded}`.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tower::ServiceExt as _;

/// Largest response body read back from the app.
const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;

/// A request in payload format 2.0 (only what den reads).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpEvent {
    /// The path, without the query string.
    #[serde(default)]
    pub raw_path: String,
    /// Headers, names in lower case.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body, as text or base64.
    #[serde(default)]
    pub body: Option<String>,
    /// Whether `body` is base64.
    #[serde(default)]
    pub is_base64_encoded: bool,
    /// Where the request came from.
    pub request_context: RequestContext,
}

/// `requestContext` (only what den reads).
#[derive(Debug, Deserialize)]
pub struct RequestContext {
    /// The HTTP part.
    pub http: HttpContext,
}

/// `requestContext.http`.
#[derive(Debug, Deserialize)]
pub struct HttpContext {
    /// The method.
    pub method: String,
}

/// The answer in payload format 2.0.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpAnswer {
    /// The status code.
    pub status_code: u16,
    /// Headers.
    pub headers: BTreeMap<String, String>,
    /// The body, as text or base64.
    pub body: String,
    /// Whether `body` is base64.
    pub is_base64_encoded: bool,
}

impl HttpAnswer {
    /// A plain-text answer.
    #[must_use]
    pub fn text(status: StatusCode, text: &str) -> Self {
        let headers = BTreeMap::from([("content-type".to_owned(), "text/plain; charset=utf-8".to_owned())]);
        Self { status_code: status.as_u16(), headers, body: text.to_owned(), is_base64_encoded: false }
    }
}

/// Answers the HTTP event `event` with `app`, as if it had been served at
/// `path` whatever path the event names (a function URL or a route of its
/// own is the function's whole address). A malformed event is a 400.
pub async fn answer(app: axum::Router, path: &str, event: &[u8]) -> HttpAnswer {
    let request =
        match serde_json::from_slice::<HttpEvent>(event).map_err(|e| e.to_string()).and_then(|e| request(&e, path)) {
            Ok(r) => r,
            Err(e) => return HttpAnswer::text(StatusCode::BAD_REQUEST, &format!("not an HTTP request event: {e}")),
        };
    let response = match app.oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_RESPONSE_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            return HttpAnswer::text(StatusCode::INTERNAL_SERVER_ERROR, &format!("the answer could not be read: {e}"));
        }
    };
    let mut headers = BTreeMap::new();
    for (name, value) in &parts.headers {
        if let Ok(v) = value.to_str() {
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|all: &mut String| {
                    all.push_str(", ");
                    all.push_str(v);
                })
                .or_insert_with(|| v.to_owned());
        }
    }
    let (body, is_base64_encoded) = match String::from_utf8(bytes.to_vec()) {
        Ok(text) => (text, false),
        Err(e) => (base64::engine::general_purpose::STANDARD.encode(e.into_bytes()), true),
    };
    HttpAnswer { status_code: parts.status.as_u16(), headers, body, is_base64_encoded }
}

fn request(event: &HttpEvent, path: &str) -> Result<Request<Body>, String> {
    let method = Method::from_bytes(event.request_context.http.method.as_bytes()).map_err(|e| e.to_string())?;
    let body = match (&event.body, event.is_base64_encoded) {
        (None, _) => Vec::new(),
        (Some(text), false) => text.clone().into_bytes(),
        (Some(b64), true) => base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| format!("body: {e}"))?,
    };
    let mut request = Request::builder().method(method).uri(path).body(Body::from(body)).map_err(|e| e.to_string())?;
    for (name, value) in &event.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header {name:?}: {e}"))?;
        let value = HeaderValue::from_str(value).map_err(|e| format!("header {name}: {e}"))?;
        request.headers_mut().append(name, value);
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use axum::routing::post;

    use super::*;

    fn echo() -> axum::Router {
        axum::Router::new().route(
            "/in",
            post(|headers: axum::http::HeaderMap, body: String| async move {
                let seen = headers.get("x-sig").and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned();
                (StatusCode::ACCEPTED, [("x-seen", seen)], body)
            }),
        )
    }

    fn event(method: &str, body: &str, base64: bool) -> Vec<u8> {
        serde_json::json!({
            "version": "2.0", "rawPath": "/anything", "headers": {"x-sig": "abc", "content-type": "application/json"},
            "body": body, "isBase64Encoded": base64, "requestContext": {"http": {"method": method}},
        })
        .to_string()
        .into_bytes()
    }

    #[tokio::test]
    async fn a_text_body_and_headers_reach_the_app_and_its_answer_comes_back() {
        let got = answer(echo(), "/in", &event("POST", "{\"a\":1}", false)).await;
        assert_eq!(got.status_code, 202);
        assert_eq!(got.body, "{\"a\":1}");
        assert_eq!(got.headers.get("x-seen").map(String::as_str), Some("abc"));
        assert!(!got.is_base64_encoded);
    }

    #[tokio::test]
    async fn a_base64_body_is_decoded() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("hello");
        assert_eq!(answer(echo(), "/in", &event("POST", &b64, true)).await.body, "hello");
    }

    #[tokio::test]
    async fn a_malformed_event_or_method_is_a_400_not_a_panic() {
        assert_eq!(answer(echo(), "/in", b"{not json").await.status_code, 400);
        assert_eq!(answer(echo(), "/in", &event("PO ST", "", false)).await.status_code, 400);
        let bad_b64 = answer(echo(), "/in", &event("POST", "%%%", true)).await;
        assert_eq!(bad_b64.status_code, 400, "{}", bad_b64.body);
        // The app's own refusal of another method comes back as it is.
        assert_eq!(answer(echo(), "/in", &event("GET", "", false)).await.status_code, 405);
    }
}
