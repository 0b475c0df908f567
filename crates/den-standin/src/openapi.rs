//! Discord's published OpenAPI description of REST v10, used to check every
//! request den sends and every response the fake returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

/// The spec, shipped in `data/discord-api-spec` with its licence.
const SPEC_TEXT: &str = include_str!("../data/discord-api-spec/openapi.json");

/// The parsed spec: immutable data, parsed once per process.
fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| serde_json::from_str(SPEC_TEXT).unwrap_or(Value::Null))
}

/// One operation of the spec.
#[derive(Clone, Debug)]
pub struct Operation {
    /// `operationId`, such as `create_message`.
    pub id: String,
    /// The path template, such as `/channels/{channel_id}/messages`.
    pub template: String,
    /// Path parameters by name.
    pub params: HashMap<String, String>,
}

/// Finds operations and checks bodies against their schemas.
#[derive(Clone, Default)]
pub struct Checker {
    validators: Arc<Mutex<HashMap<String, Arc<jsonschema::Validator>>>>,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Checker")
    }
}

impl Checker {
    /// The operation that `method path` (path without `/api/v10`) calls.
    /// Literal segments win over parameters (`@original` over `{message_id}`).
    #[must_use]
    pub fn operation(&self, method: &str, path: &str) -> Option<Operation> {
        let method = method.to_ascii_lowercase();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let paths = spec().get("paths")?.as_object()?;
        let mut best: Option<(usize, Operation)> = None;
        for (template, item) in paths {
            let Some(op) = item.get(&method) else { continue };
            let parts: Vec<&str> = template.trim_matches('/').split('/').collect();
            if parts.len() != segments.len() {
                continue;
            }
            let mut literal = 0;
            let mut params = HashMap::new();
            let matched = parts.iter().zip(&segments).all(|(p, s)| {
                if let Some(name) = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    params.insert(name.to_owned(), (*s).to_owned());
                    !s.is_empty()
                } else {
                    literal += 1;
                    p == s
                }
            });
            if matched && best.as_ref().is_none_or(|(n, _)| literal > *n) {
                let id = op.get("operationId").and_then(Value::as_str).unwrap_or("").to_owned();
                best = Some((literal, Operation { id, template: template.clone(), params }));
            }
        }
        best.map(|(_, op)| op)
    }

    /// Checks a JSON request body against the operation's request schema.
    pub fn check_request(&self, method: &str, op: &Operation, body: &Value) -> Result<(), String> {
        let Some(schema) = spec().pointer(&format!(
            "/paths/{}/{}/requestBody/content/application~1json/schema",
            escape(&op.template),
            method.to_ascii_lowercase()
        )) else {
            return if body.is_null() { Ok(()) } else { Err(format!("{} takes no JSON body", op.id)) };
        };
        self.check(&format!("req:{}", op.id), schema, body)
    }

    /// Checks a JSON response body against the schema for `status`.
    pub fn check_response(&self, method: &str, op: &Operation, status: u16, body: &Value) -> Result<(), String> {
        let base = format!("/paths/{}/{}/responses", escape(&op.template), method.to_ascii_lowercase());
        let Some(response) = spec().pointer(&format!("{base}/{status}")) else {
            return Err(format!("{} has no {status} response in the spec", op.id));
        };
        let response = resolve(response);
        match response.pointer("/content/application~1json/schema") {
            Some(schema) => self.check(&format!("res:{}:{status}", op.id), schema, body),
            None if body.is_null() => Ok(()),
            None => Err(format!("{} answers {status} without a body", op.id)),
        }
    }

    fn check(&self, key: &str, schema: &Value, body: &Value) -> Result<(), String> {
        let validator = {
            let mut cache = self.validators.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match cache.get(key) {
                Some(v) => v.clone(),
                None => {
                    let root = serde_json::json!({
                        "components": spec().get("components").cloned().unwrap_or(Value::Null),
                        "allOf": [schema],
                    });
                    let v = Arc::new(
                        jsonschema::draft202012::options()
                            .build(&root)
                            .map_err(|e| format!("the spec's schema for {key} does not compile: {e}"))?,
                    );
                    cache.insert(key.to_owned(), v.clone());
                    v
                }
            }
        };
        let errors: Vec<String> =
            validator.iter_errors(body).take(5).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }
}

/// Follows a `$ref` to `#/components/...`.
fn resolve(v: &Value) -> &Value {
    match v.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
        Some(pointer) => spec().pointer(pointer).unwrap_or(v),
        None => v,
    }
}

/// JSON-pointer escaping of a path template used as one key.
fn escape(template: &str) -> String {
    template.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_match_with_literal_segments_preferred() {
        let c = Checker::default();
        let op = c.operation("POST", "/channels/123/messages").unwrap();
        assert_eq!(op.id, "create_message");
        assert_eq!(op.params["channel_id"], "123");
        let op = c.operation("PATCH", "/webhooks/1/tok/messages/@original").unwrap();
        assert_eq!(op.id, "update_original_webhook_message");
        assert!(c.operation("POST", "/nowhere/at/all").is_none());
    }

    #[test]
    fn request_bodies_are_checked_against_the_spec() {
        let c = Checker::default();
        let op = c.operation("POST", "/channels/1/messages").unwrap();
        assert!(c.check_request("POST", &op, &serde_json::json!({"content": "hi"})).is_ok());
        let err = c.check_request("POST", &op, &serde_json::json!({"content": 5})).unwrap_err();
        assert!(err.contains("content"), "{err}");
        // The spec says 4,000; the written docs say 2,000 and the fake enforces that itself.
        let long = "x".repeat(4001);
        assert!(c.check_request("POST", &op, &serde_json::json!({"content": long})).is_err());
    }
}
