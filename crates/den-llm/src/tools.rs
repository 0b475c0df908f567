//! Tool calling: the tools a request offers, the calls a model makes, the
//! results sent back, and the assembly of calls that arrive in pieces.
//!
//! Every provider streams a call's input as JSON text cut anywhere
//! (Anthropic's `input_json_delta`, OpenAI's `arguments` deltas by index,
//! Bedrock's `toolUse` input deltas); a call reaches the caller whole, as one
//! [`crate::StreamEvent::ToolCall`], once its block ends.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{LlmError, LlmErrorKind};

/// A tool the model may call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Name (letters, digits, `_` and `-`).
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of its input (an object).
    pub input_schema: Value,
}

/// A call the model made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call; its result names it.
    pub id: String,
    /// The tool.
    pub name: String,
    /// Its input (a JSON object).
    pub input: Value,
}

/// What a call returned, sent back to the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The call it answers.
    pub call_id: String,
    /// The output, as text.
    pub content: String,
    /// The tool failed (the model should read `content` as the error).
    pub is_error: bool,
}

impl ToolResult {
    /// A successful result.
    #[must_use]
    pub fn ok(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self { call_id: call_id.into(), content: content.into(), is_error: false }
    }

    /// A failed one.
    #[must_use]
    pub fn error(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self { call_id: call_id.into(), content: content.into(), is_error: true }
    }
}

/// A call whose input is still arriving.
#[derive(Debug, Default)]
pub(crate) struct PendingCall {
    pub id: String,
    pub name: String,
    pub json: String,
}

impl PendingCall {
    /// The whole call; input that is not a JSON object is the provider's fault.
    pub fn finish(self, provider: &str) -> Result<ToolCall, LlmError> {
        let input = if self.json.trim().is_empty() {
            Value::Object(serde_json::Map::new())
        } else {
            serde_json::from_str::<Value>(&self.json).map_err(|e| {
                let message = format!("the input of tool call {} ({}) is not JSON: {e}", self.id, self.name);
                LlmError::new(LlmErrorKind::Malformed, provider, message)
            })?
        };
        if !input.is_object() {
            let message = format!("the input of tool call {} ({}) is not an object", self.id, self.name);
            return Err(LlmError::new(LlmErrorKind::Malformed, provider, message));
        }
        Ok(ToolCall { id: self.id, name: self.name, input })
    }
}

/// Calls being assembled, by the index the provider gives each.
#[derive(Debug, Default)]
pub(crate) struct PendingCalls(BTreeMap<u64, PendingCall>);

impl PendingCalls {
    /// Starts (or continues) the call at `index`.
    pub fn start(&mut self, index: u64, id: Option<&str>, name: Option<&str>) {
        let call = self.0.entry(index).or_default();
        if let Some(id) = id.filter(|s| !s.is_empty()) {
            id.clone_into(&mut call.id);
        }
        if let Some(name) = name.filter(|s| !s.is_empty()) {
            call.name.push_str(name);
        }
    }

    /// Adds a piece of the input of the call at `index`; pieces for an index
    /// that never started are ignored.
    pub fn append(&mut self, index: u64, json: &str) {
        if let Some(call) = self.0.get_mut(&index) {
            call.json.push_str(json);
        }
    }

    /// The call at `index`, when its block ended.
    pub fn take(&mut self, index: u64) -> Option<PendingCall> {
        self.0.remove(&index)
    }

    /// Every call left, in index order (OpenAI ends them all at once).
    pub fn drain(&mut self) -> Vec<PendingCall> {
        std::mem::take(&mut self.0).into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_cut_anywhere_is_assembled_and_bad_input_is_malformed() {
        let mut calls = PendingCalls::default();
        calls.start(1, Some("call_1"), Some("read_file"));
        for piece in ["{\"pa", "th\": \"src/ma", "in.rs\"}"] {
            calls.append(1, piece);
        }
        calls.append(7, "ignored");
        let call = calls.take(1).unwrap().finish("p").unwrap();
        assert_eq!(call.input["path"], "src/main.rs");
        assert_eq!(call.name, "read_file");

        let empty = PendingCall { id: "c".into(), name: "git_status".into(), json: String::new() };
        assert_eq!(empty.finish("p").unwrap().input, serde_json::json!({}));
        let bad = PendingCall { id: "c".into(), name: "x".into(), json: "{\"a\":".into() };
        assert_eq!(bad.finish("p").unwrap_err().kind(), &LlmErrorKind::Malformed);
        let not_object = PendingCall { id: "c".into(), name: "x".into(), json: "[1]".into() };
        assert_eq!(not_object.finish("p").unwrap_err().kind(), &LlmErrorKind::Malformed);
    }
}
