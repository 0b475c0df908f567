//! When a run moves to a stronger model, and how confident den is in it.
//!
//! A [`Watch`] sees every tool call and every turn's end. It asks for the
//! next model when, since the last move:
//! - confidence stayed below 30 for two turns running;
//! - the same call (tool and input) failed three times;
//! - the same call gave the same result four times (a loop);
//! - five turns passed without a file changing;
//! - the model said it is stuck;
//! - the user corrected it twice.
//!
//! Confidence, 0 to 100, per turn: the model's own estimate when it gave one
//! (weight 0.4), the share of this turn's calls that succeeded (0.3), a
//! passing test command this turn (+15) or a failing one (-15), a file changed
//! this turn (+5), minus 10 per repeated failure and 15 per correction since
//! the last move; without an estimate of the model's, 60 stands in for it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why den moved to the next model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// Confidence below 30 two turns running.
    LowConfidence,
    /// The same call failed three times.
    RepeatedFailure(String),
    /// The same call gave the same result four times.
    Loop(String),
    /// Five turns without a file changing.
    NoProgress,
    /// The model said it is stuck.
    Stuck,
    /// The user corrected it twice.
    Corrections,
    /// The user asked for it (`escalate`).
    Asked,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LowConfidence => write!(f, "confidence below 30 two turns running"),
            Self::RepeatedFailure(t) => write!(f, "{t} failed the same way three times"),
            Self::Loop(t) => write!(f, "{t} gave the same result four times"),
            Self::NoProgress => write!(f, "five turns without changing a file"),
            Self::Stuck => write!(f, "the model said it is stuck"),
            Self::Corrections => write!(f, "two corrections from the user"),
            Self::Asked => write!(f, "the user asked for a stronger model"),
        }
    }
}

fn digest(parts: &[&str]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// Tools that change files.
const WRITERS: [&str; 2] = ["write_file", "edit_file"];
/// Words by which a model says it cannot go on.
const STUCK: [&str; 4] = ["i'm stuck", "i am stuck", "i cannot make progress", "i can't make progress"];

/// What den watches during a run (saved with the run between turns).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Watch {
    failures: HashMap<u64, u32>,
    results: HashMap<u64, u32>,
    low_turns: u32,
    quiet_turns: u32,
    corrections: u32,
    repeated: u32,
    turn: TurnTally,
    pending: Option<Reason>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct TurnTally {
    calls: u32,
    ok: u32,
    changed: bool,
    tests: Option<bool>,
}

impl Watch {
    /// A call and its outcome.
    pub fn call(&mut self, tool: &str, input: &Value, ok: bool, result: &str) {
        let call = input.to_string();
        self.turn.calls += 1;
        self.turn.ok += u32::from(ok);
        if ok && WRITERS.contains(&tool) {
            self.turn.changed = true;
        }
        if tool == "run" && call.contains("test") {
            self.turn.tests = Some(ok);
        }
        if !ok {
            let n = self.failures.entry(digest(&[tool, &call])).or_default();
            *n += 1;
            if *n >= 2 {
                self.repeated += 1;
            }
            if *n >= 3 {
                self.pending.get_or_insert(Reason::RepeatedFailure(tool.to_owned()));
            }
        }
        let same = self.results.entry(digest(&[tool, &call, result])).or_default();
        *same += 1;
        if *same >= 4 {
            self.pending.get_or_insert(Reason::Loop(tool.to_owned()));
        }
    }

    /// The user corrected the model (`wrong`, ❌).
    pub fn correction(&mut self) {
        self.corrections += 1;
        if self.corrections >= 2 {
            self.pending.get_or_insert(Reason::Corrections);
        }
    }

    /// The end of a turn: what the model said and its own estimate, if any.
    /// Returns the turn's confidence and, when due, why to move to the next model.
    pub fn end_turn(&mut self, said: &str, estimate: Option<u8>) -> (u8, Option<Reason>) {
        let t = std::mem::take(&mut self.turn);
        let success = if t.calls == 0 { 0.5 } else { f64::from(t.ok) / f64::from(t.calls) };
        let own = f64::from(estimate.unwrap_or(60));
        let mut score = 0.4 * own + 0.3 * success * 100.0 + 0.3 * 60.0;
        score += match t.tests {
            Some(true) => 15.0,
            Some(false) => -15.0,
            None => 0.0,
        };
        if t.changed {
            score += 5.0;
        }
        score -= 10.0 * f64::from(self.repeated) + 15.0 * f64::from(self.corrections);
        let confidence = score.clamp(0.0, 100.0).round() as u8;

        self.low_turns = if confidence < 30 { self.low_turns + 1 } else { 0 };
        self.quiet_turns = if t.changed { 0 } else { self.quiet_turns + 1 };
        let lower = said.to_lowercase();
        let reason = self.pending.take().or_else(|| {
            if STUCK.iter().any(|w| lower.contains(w)) {
                Some(Reason::Stuck)
            } else if self.low_turns >= 2 {
                Some(Reason::LowConfidence)
            } else if self.quiet_turns >= 5 {
                Some(Reason::NoProgress)
            } else {
                None
            }
        });
        if reason.is_some() {
            // The next model starts with a clean slate.
            *self = Self::default();
        }
        (confidence, reason)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn three_identical_failures_ask_for_the_next_model() {
        let mut w = Watch::default();
        for i in 0..3 {
            w.call("run", &json!({"command": "cargo build"}), false, &format!("error {i}"));
            let (_, reason) = w.end_turn("", None);
            assert_eq!(reason.is_some(), i == 2, "turn {i}");
        }
    }

    #[test]
    fn the_same_result_four_times_is_a_loop_and_five_quiet_turns_are_no_progress() {
        let mut w = Watch::default();
        let mut reasons = vec![];
        for _ in 0..4 {
            w.call("git_status", &json!({}), true, "clean");
            reasons.push(w.end_turn("", Some(80)).1);
        }
        assert_eq!(reasons, [None, None, None, Some(Reason::Loop("git_status".into()))]);
        let mut w = Watch::default();
        let quiet: Vec<_> = (0..5)
            .map(|i| {
                w.call("read_file", &json!({"path": format!("f{i}")}), true, "text");
                w.end_turn("", Some(80)).1
            })
            .collect();
        assert_eq!(quiet.last().unwrap(), &Some(Reason::NoProgress));
    }

    #[test]
    fn confidence_follows_tests_failures_and_corrections() {
        let mut w = Watch::default();
        w.call("edit_file", &json!({"path": "a"}), true, "edited");
        w.call("run", &json!({"command": "cargo test"}), true, "ok");
        let (good, _) = w.end_turn("", Some(90));
        w.call("run", &json!({"command": "cargo test"}), false, "FAILED");
        let (bad, _) = w.end_turn("", Some(40));
        assert!(good > 80 && bad < 50, "{good} {bad}");
        let mut w = Watch::default();
        w.correction();
        let (_, r) = w.end_turn("", None);
        assert_eq!(r, None);
        w.correction();
        assert_eq!(w.end_turn("", None).1, Some(Reason::Corrections));
        assert_eq!(Watch::default().end_turn("Honestly, I'm stuck here.", None).1, Some(Reason::Stuck));
    }

    #[test]
    fn two_low_turns_running_escalate() {
        let mut w = Watch::default();
        let mut out = vec![];
        for _ in 0..2 {
            w.call("run", &json!({"command": "make test", "n": out.len()}), false, "boom");
            out.push(w.end_turn("", Some(0)));
        }
        assert!(out[0].0 < 30 && out[1].1 == Some(Reason::LowConfidence), "{out:?}");
    }
}
