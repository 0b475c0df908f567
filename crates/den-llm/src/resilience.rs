//! Resilience around any provider: timeouts, retries with backoff and
//! jitter (honouring `Retry-After`), a circuit breaker per provider, and
//! fallback to a second provider.
//!
//! A call is retried only before its first token: once text has reached the
//! caller (and perhaps Discord), repeating it would say things twice, so a
//! failure after that point is passed on for the caller to handle.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use den_core::{Clock, Timestamp};
use futures_util::StreamExt as _;

use crate::{ChatModel, ChatRequest, ChatStream, LlmError, LlmErrorKind, StreamEvent};

/// How hard to try.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Longest wait for the first token (or the end of an empty answer).
    pub first_token_timeout: Duration,
    /// Longest a whole answer may take.
    pub total_timeout: Duration,
    /// Attempts per provider, the first included.
    pub max_attempts: u32,
    /// Ceiling of the first retry delay (doubles, with jitter in its upper half).
    pub backoff_base: Duration,
    /// Largest retry delay (a longer `Retry-After` gives up on this provider).
    pub backoff_max: Duration,
    /// Consecutive failures that open a provider's circuit.
    pub breaker_threshold: u32,
    /// How long an open circuit stays open before one trial call.
    pub breaker_cooldown: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            first_token_timeout: Duration::from_secs(20),
            total_timeout: Duration::from_secs(90),
            max_attempts: 3,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

/// A circuit breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; counts consecutive failures.
    Closed {
        /// Failures in a row.
        failures: u32,
    },
    /// Calls are refused until this time.
    Open {
        /// When a trial call may go through.
        until: Timestamp,
    },
    /// One trial call is in flight; others are refused.
    HalfOpen,
}

/// A circuit breaker: opens after `threshold` consecutive failures, lets one
/// trial through after `cooldown`, closes on its success, reopens on its failure.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<BreakerState>,
    threshold: u32,
    cooldown: Duration,
    clock: Arc<dyn Clock>,
}

impl Breaker {
    /// A closed breaker.
    #[must_use]
    pub fn new(threshold: u32, cooldown: Duration, clock: Arc<dyn Clock>) -> Self {
        Self { state: Mutex::new(BreakerState::Closed { failures: 0 }), threshold: threshold.max(1), cooldown, clock }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> BreakerState {
        *self.lock()
    }

    /// Whether a call may go through now (taking the trial slot when half-open).
    pub fn allow(&self) -> bool {
        let mut state = self.lock();
        match *state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } if self.clock.now() >= until => {
                *state = BreakerState::HalfOpen;
                true
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen => false,
        }
    }

    /// A call succeeded.
    pub fn success(&self) {
        *self.lock() = BreakerState::Closed { failures: 0 };
    }

    /// A call failed in a way that says the provider is unwell.
    pub fn failure(&self) {
        let mut state = self.lock();
        let open = BreakerState::Open { until: self.clock.now().plus(self.cooldown) };
        *state = match *state {
            BreakerState::Closed { failures } if failures + 1 >= self.threshold => open,
            BreakerState::Closed { failures } => BreakerState::Closed { failures: failures + 1 },
            BreakerState::HalfOpen | BreakerState::Open { .. } => open,
        };
    }
}

/// Observes calls, for metrics.
pub trait CallObserver: Send + Sync {
    /// A provider answered its first token after `ttft`.
    fn first_token(&self, provider: &str, ttft: Duration);
    /// A provider finished an answer after `total`, using `usage`.
    fn finished(&self, provider: &str, total: Duration, usage: &crate::Usage);
    /// A call attempt failed with `kind`.
    fn error(&self, provider: &str, kind: &LlmErrorKind);
    /// A provider's breaker changed state.
    fn breaker(&self, provider: &str, state: BreakerState);
}

struct Guarded {
    model: Arc<dyn ChatModel>,
    breaker: Breaker,
}

/// A model that tries a primary provider, then a fallback, each under the policy.
pub struct Resilient {
    providers: Vec<Guarded>,
    policy: Policy,
    observer: Option<Arc<dyn CallObserver>>,
    name: String,
}

impl std::fmt::Debug for Resilient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resilient")
            .field("providers", &self.providers.iter().map(|p| p.model.name()).collect::<Vec<_>>())
            .finish()
    }
}

impl Resilient {
    /// `primary`, then `fallback` when given.
    pub fn new(
        primary: Arc<dyn ChatModel>,
        fallback: Option<Arc<dyn ChatModel>>,
        policy: Policy,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let guard = |model: Arc<dyn ChatModel>| Guarded {
            breaker: Breaker::new(policy.breaker_threshold, policy.breaker_cooldown, clock.clone()),
            model,
        };
        let name = primary.name().to_owned();
        let mut providers = vec![guard(primary)];
        providers.extend(fallback.map(guard));
        Self { providers, policy, observer: None, name }
    }

    /// Reports timings, errors and breaker changes to `observer`.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn CallObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The breaker state of each provider, by name.
    #[must_use]
    pub fn breakers(&self) -> Vec<(String, BreakerState)> {
        self.providers.iter().map(|p| (p.model.name().to_owned(), p.breaker.state())).collect()
    }

    fn delay(&self, attempt: u32, error: &LlmError) -> Option<Duration> {
        if let LlmErrorKind::RateLimited { retry_after: Some(after) } = error.kind() {
            return (*after <= self.policy.backoff_max).then_some(*after);
        }
        let ceiling = self
            .policy
            .backoff_base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.policy.backoff_max);
        let half = ceiling / 2;
        Some(half + ceiling.saturating_sub(half).mul_f64(rand::random::<f64>()))
    }

    async fn attempt(&self, p: &Guarded, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.policy.first_token_timeout;
        let timeout = || {
            LlmError::new(
                LlmErrorKind::Timeout,
                p.model.name(),
                format!("no first token within {:?}", self.policy.first_token_timeout),
            )
        };
        let mut stream = tokio::time::timeout_at(deadline, p.model.stream(request)).await.map_err(|_| timeout())??;
        let first = tokio::time::timeout_at(deadline, stream.next()).await.map_err(|_| timeout())?;
        let first = match first {
            Some(Ok(event)) => event,
            Some(Err(e)) => return Err(e),
            None => return Err(LlmError::new(LlmErrorKind::BrokenStream, p.model.name(), "empty stream")),
        };
        if let Some(o) = &self.observer {
            o.first_token(p.model.name(), started.elapsed());
        }
        let total = started + self.policy.total_timeout;
        let name = p.model.name().to_owned();
        let limit = self.policy.total_timeout;
        let observer = self.observer.clone();
        if let (StreamEvent::Done { usage, .. }, Some(o)) = (&first, &observer) {
            o.finished(&name, started.elapsed(), usage);
        }
        let rest = futures_util::stream::unfold((stream, false), move |(mut stream, over)| {
            let name = name.clone();
            let observer = observer.clone();
            async move {
                if over {
                    return None;
                }
                match tokio::time::timeout_at(total, stream.next()).await {
                    Ok(Some(item)) => {
                        if let (Ok(StreamEvent::Done { usage, .. }), Some(o)) = (&item, &observer) {
                            o.finished(&name, started.elapsed(), usage);
                        }
                        Some((item, (stream, false)))
                    }
                    Ok(None) => None,
                    Err(_) => Some((
                        Err(LlmError::new(LlmErrorKind::Timeout, name, format!("answer took longer than {limit:?}"))),
                        (stream, true),
                    )),
                }
            }
        });
        Ok(Box::pin(futures_util::stream::once(async move { Ok::<StreamEvent, LlmError>(first) }).chain(rest)))
    }

    fn note_breaker(&self, p: &Guarded, before: BreakerState) {
        let after = p.breaker.state();
        if std::mem::discriminant(&before) != std::mem::discriminant(&after)
            && let Some(o) = &self.observer
        {
            o.breaker(p.model.name(), after);
        }
    }
}

#[async_trait]
impl ChatModel for Resilient {
    fn name(&self) -> &str {
        &self.name
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        let mut last: Option<LlmError> = None;
        for p in &self.providers {
            for attempt in 1..=self.policy.max_attempts {
                let before = p.breaker.state();
                if !p.breaker.allow() {
                    self.note_breaker(p, before);
                    last = Some(LlmError::new(
                        LlmErrorKind::Unavailable,
                        p.model.name(),
                        "circuit open after repeated failures",
                    ));
                    break;
                }
                match self.attempt(p, request).await {
                    Ok(stream) => {
                        p.breaker.success();
                        self.note_breaker(p, before);
                        return Ok(stream);
                    }
                    Err(e) => {
                        if let Some(o) = &self.observer {
                            o.error(p.model.name(), e.kind());
                        }
                        if !e.kind().is_retryable() {
                            // The request or the key is wrong: neither retrying nor the breaker helps.
                            p.breaker.success();
                            self.note_breaker(p, before);
                            tracing::warn!(provider = p.model.name(), error = %e, "model call failed; not retrying");
                            last = Some(e);
                            break;
                        }
                        p.breaker.failure();
                        self.note_breaker(p, before);
                        let wait = if attempt < self.policy.max_attempts { self.delay(attempt, &e) } else { None };
                        let retry_in_ms = wait.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                        tracing::warn!(provider = p.model.name(), attempt, error = %e, retry_in_ms, "model call failed");
                        last = Some(e);
                        match wait {
                            Some(d) => tokio::time::sleep(d).await,
                            None => break,
                        }
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| LlmError::new(LlmErrorKind::Unavailable, &self.name, "no provider configured")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use den_core::ManualClock;

    #[test]
    fn the_breaker_opens_after_the_threshold_half_opens_after_cooldown_and_closes_on_success() {
        let clock = ManualClock::new(Timestamp(0));
        let b = Breaker::new(3, Duration::from_secs(10), Arc::new(clock.clone()));
        b.failure();
        b.failure();
        assert_eq!(b.state(), BreakerState::Closed { failures: 2 });
        assert!(b.allow());
        b.failure();
        assert_eq!(b.state(), BreakerState::Open { until: Timestamp(10_000) });
        assert!(!b.allow(), "open: refused");
        clock.advance(Duration::from_secs(10));
        assert!(b.allow(), "after the cooldown one trial goes through");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allow(), "only one trial at a time");
        b.failure();
        assert!(matches!(b.state(), BreakerState::Open { .. }), "a failed trial reopens");
        clock.advance(Duration::from_secs(10));
        assert!(b.allow());
        b.success();
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    #[test]
    fn a_success_resets_the_count_of_consecutive_failures() {
        let b = Breaker::new(2, Duration::from_secs(1), Arc::new(ManualClock::new(Timestamp(0))));
        b.failure();
        b.success();
        b.failure();
        assert_eq!(b.state(), BreakerState::Closed { failures: 1 });
    }
}
