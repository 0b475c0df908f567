//! The HTTP interactions endpoint: Discord POSTs each interaction, signed
//! with Ed25519; den verifies, routes and answers in the HTTP response.

use std::sync::Arc;
use std::time::Duration;

use axum::Router as HttpRouter;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use den_core::Clock;
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};

use crate::events::InboundInteraction;
use crate::router::Router;

/// Signatures older (or newer) than this are refused as replays.
pub const MAX_SIGNATURE_AGE: Duration = Duration::from_secs(5 * 60);
/// Largest interaction body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header is missing.
    #[error("missing signature headers")]
    Missing,
    /// A header is not hex of the right length, or the timestamp is not a number.
    #[error("malformed signature headers")]
    Malformed,
    /// The timestamp is more than five minutes away from now.
    #[error("stale signature timestamp")]
    Stale,
    /// The signature does not verify.
    #[error("bad signature")]
    Bad,
}

/// Parses the application's public key as the developer portal shows it (64 hex digits).
pub fn parse_public_key(hex_key: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim())
        .map_err(|_| "the public key is not hex".to_owned())?
        .try_into()
        .map_err(|_| "the public key must be 32 bytes (64 hex digits)".to_owned())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "the public key is not a valid Ed25519 key".to_owned())
}

/// Checks `X-Signature-Ed25519` over `X-Signature-Timestamp` + body.
pub fn verify(key: &VerifyingKey, headers: &HeaderMap, body: &[u8], now_secs: i64) -> Result<(), SignatureError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(signature), Some(timestamp)) = (header("x-signature-ed25519"), header("x-signature-timestamp")) else {
        return Err(SignatureError::Missing);
    };
    let sent: i64 = timestamp.parse().map_err(|_| SignatureError::Malformed)?;
    // Any i64 parses: the difference is checked, never wrapped.
    let age = now_secs.checked_sub(sent).map(i64::unsigned_abs);
    if age.is_none_or(|age| age > MAX_SIGNATURE_AGE.as_secs()) {
        return Err(SignatureError::Stale);
    }
    let bytes: [u8; 64] =
        hex::decode(signature).ok().and_then(|b| b.try_into().ok()).ok_or(SignatureError::Malformed)?;
    let mut message = Vec::with_capacity(timestamp.len() + body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.extend_from_slice(body);
    key.verify(&message, &Signature::from_bytes(&bytes)).map_err(|_| SignatureError::Bad)
}

#[derive(Clone)]
struct EndpointState {
    key: VerifyingKey,
    router: Arc<Router>,
    clock: Arc<dyn Clock>,
}

/// An axum router serving the endpoint at `path`.
pub fn endpoint(path: &str, key: VerifyingKey, router: Arc<Router>, clock: Arc<dyn Clock>) -> HttpRouter {
    HttpRouter::new().route(path, post(handle)).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)).with_state(EndpointState {
        key,
        router,
        clock,
    })
}

async fn handle(State(state): State<EndpointState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = verify(&state.key, &headers, &body, state.clock.now().as_secs()) {
        tracing::info!(reason = %e, "interaction refused");
        return (StatusCode::UNAUTHORIZED, "invalid request signature").into_response();
    }
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t,
        Err(_) => return (StatusCode::BAD_REQUEST, "body is not UTF-8").into_response(),
    };
    let interaction = match InboundInteraction::parse(text) {
        Ok(i) => i,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let ack = match state.router.route_interaction(&interaction).await {
        Ok(ack) => ack,
        Err(_) => state.router.cannot_take_it_on(),
    };
    axum::Json(ack.to_json()).into_response()
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer as _, SigningKey};

    use super::*;

    fn signed(key: &SigningKey, timestamp: &str, body: &[u8]) -> HeaderMap {
        let mut message = timestamp.as_bytes().to_vec();
        message.extend_from_slice(body);
        let mut headers = HeaderMap::new();
        headers.insert("x-signature-ed25519", hex::encode(key.sign(&message).to_bytes()).parse().unwrap());
        headers.insert("x-signature-timestamp", timestamp.parse().unwrap());
        headers
    }

    #[test]
    fn timestamps_at_the_ends_of_the_number_line_are_stale_not_a_panic() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let now = 1_800_000_000;
        for timestamp in [i64::MIN.to_string(), i64::MAX.to_string(), (now - 301).to_string()] {
            let headers = signed(&key, &timestamp, b"{}");
            assert_eq!(verify(&key.verifying_key(), &headers, b"{}", now), Err(SignatureError::Stale), "{timestamp}");
        }
        // A difference that does not fit in 64 bits.
        let far = signed(&key, &i64::MAX.to_string(), b"{}");
        assert_eq!(verify(&key.verifying_key(), &far, b"{}", i64::MIN), Err(SignatureError::Stale));
        let fresh = signed(&key, &now.to_string(), b"{}");
        assert_eq!(verify(&key.verifying_key(), &fresh, b"{}", now), Ok(()));
        let junk = signed(&key, "99999999999999999999999", b"{}");
        assert_eq!(verify(&key.verifying_key(), &junk, b"{}", now), Err(SignatureError::Malformed));
    }
}
