//! How a person steers a run while it works: stop it, add a clarification,
//! retry the last turn, say it was wrong, or ask for a stronger model. The
//! same words work typed in a thread and as buttons or reactions.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One thing the person asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// Add this before the next model call (`clarify: ...`).
    Clarify(String),
    /// Drop the last model turn and ask again (`retry`, 🔄).
    Retry,
    /// The last turn was wrong (`wrong`, ❌): counts towards escalation.
    Wrong,
    /// Move to the next model now (`escalate`, 🚀).
    Escalate,
}

/// The controls of one run; clones share them.
#[derive(Clone, Debug)]
pub struct Controls {
    stop: CancellationToken,
    tx: mpsc::UnboundedSender<Interrupt>,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Interrupt>>>,
}

impl Default for Controls {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self { stop: CancellationToken::new(), tx, rx: Arc::new(Mutex::new(rx)) }
    }
}

impl Controls {
    /// Stops the run: the model call or command under way is cancelled (`stop`, 🛑).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// The token the run watches.
    #[must_use]
    pub fn stopped(&self) -> &CancellationToken {
        &self.stop
    }

    /// Asks for `interrupt` before the next model call.
    pub fn send(&self, interrupt: Interrupt) {
        let _ = self.tx.send(interrupt);
    }

    /// Acts on words a person typed in the run's thread; whether they were a control.
    pub fn hear(&self, text: &str) -> bool {
        let t = text.trim();
        let lower = t.to_lowercase();
        match lower.as_str() {
            "stop" | "🛑" => self.stop(),
            "retry" | "🔄" => self.send(Interrupt::Retry),
            "wrong" | "❌" => self.send(Interrupt::Wrong),
            "escalate" | "🚀" => self.send(Interrupt::Escalate),
            _ if lower.starts_with("clarify:") => {
                self.send(Interrupt::Clarify(t["clarify:".len()..].trim().to_owned()))
            }
            _ => return false,
        }
        true
    }

    /// Everything asked for since the last look.
    pub(crate) fn take(&self) -> Vec<Interrupt> {
        let mut rx = self.rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_emoji_become_controls_and_other_text_does_not() {
        let c = Controls::default();
        assert!(c.hear("Clarify: use the v2 API") && c.hear("🔄") && c.hear("WRONG") && c.hear("escalate"));
        assert!(!c.hear("please stop being so slow"));
        assert_eq!(
            c.take(),
            [Interrupt::Clarify("use the v2 API".into()), Interrupt::Retry, Interrupt::Wrong, Interrupt::Escalate]
        );
        assert!(!c.stopped().is_cancelled());
        assert!(c.hear(" stop "));
        assert!(c.stopped().is_cancelled());
    }
}
