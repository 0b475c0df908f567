//! Discord-like rate limits: per-route buckets and a global per-second limit.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Bucket sizes of the fake. Defaults and where each number comes from:
///
/// - `global_per_sec: 50`: Discord's documented global limit per bot.
/// - `channel_messages: 5 per 5 s` per channel: the limit Discord reports in
///   `X-RateLimit-*` headers for creating messages (observed; undocumented).
/// - `message_edits: 5 per 5 s` per channel: an assumption, like creates.
/// - `webhook_execute: 5 per 2 s` per webhook: observed; undocumented.
/// - `guild_writes: 10 per 10 s` per guild for channel and role changes: an
///   assumption (Discord does not publish these; it reports them in headers).
/// - `default: 50 per 1 s` per route: an assumption for everything else.
/// - `webhook_channel: 30 per 60 s` per channel for webhook posts, across all
///   webhooks of the channel: observed ("about 30 messages a minute"); Discord
///   shows it in no header until it answers 429 with scope `shared`.
///
/// - `interaction_callback: 5 per 1 s` per interaction: Discord exempts
///   interaction callbacks from the global limit but answers them with bucket
///   headers like any route (observed); each interaction is its own bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Requests per second across all bot-authenticated routes.
    pub global_per_sec: u32,
    /// Message creates per channel.
    pub channel_messages: Bucket,
    /// Message edits and deletes per channel.
    pub message_edits: Bucket,
    /// Webhook executions and webhook message edits per webhook.
    pub webhook_execute: Bucket,
    /// Channel and role creates, edits and deletes per guild.
    pub guild_writes: Bucket,
    /// Every other route.
    pub default: Bucket,
    /// Webhook posts per channel (hidden: only a 429 tells).
    pub webhook_channel: Bucket,
    /// Interaction callbacks per interaction (outside the global limit).
    pub interaction_callback: Bucket,
}

/// A bucket's size and window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// Requests per window.
    pub limit: u32,
    /// Window length.
    pub window: Duration,
}

impl Bucket {
    /// `limit` requests per `window`.
    #[must_use]
    pub const fn new(limit: u32, window: Duration) -> Self {
        Self { limit, window }
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            global_per_sec: 50,
            channel_messages: Bucket::new(5, Duration::from_secs(5)),
            message_edits: Bucket::new(5, Duration::from_secs(5)),
            webhook_execute: Bucket::new(5, Duration::from_secs(2)),
            guild_writes: Bucket::new(10, Duration::from_secs(10)),
            default: Bucket::new(50, Duration::from_secs(1)),
            webhook_channel: Bucket::new(30, Duration::from_secs(60)),
            interaction_callback: Bucket::new(5, Duration::from_secs(1)),
        }
    }
}

impl RateLimits {
    /// Limits so large that no test meets them.
    #[must_use]
    pub fn unlimited() -> Self {
        let big = Bucket::new(1_000_000, Duration::from_secs(1));
        Self {
            global_per_sec: 1_000_000,
            channel_messages: big,
            message_edits: big,
            webhook_execute: big,
            guild_writes: big,
            default: big,
            webhook_channel: big,
            interaction_callback: big,
        }
    }
}

/// What the limiter says about one request.
#[derive(Clone, Debug)]
pub enum Verdict {
    /// Go ahead; these headers describe the bucket after this request.
    Allowed(Headers),
    /// 429: wait `retry_after`.
    Limited {
        /// The bucket's state.
        headers: Headers,
        /// How long to wait.
        retry_after: Duration,
        /// Whether the global limit (not the route's) was hit.
        global: bool,
    },
    /// Not rate limited at all (interaction callbacks).
    Exempt,
}

/// The `X-RateLimit-*` values of a bucket.
#[derive(Clone, Debug)]
pub struct Headers {
    /// Bucket hash.
    pub bucket: String,
    /// Bucket size.
    pub limit: u32,
    /// Requests left in the window.
    pub remaining: u32,
    /// Time until the window resets.
    pub reset_after: Duration,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    used: u32,
}

/// The limiter's state.
#[derive(Debug, Default)]
pub struct Limiter {
    buckets: HashMap<(String, String), Window>,
    global: Option<Window>,
    /// Webhook posts per channel in the last window (a sliding log).
    webhook_posts: HashMap<u64, std::collections::VecDeque<Instant>>,
}

impl Limiter {
    /// Takes one webhook post in `channel` from the hidden per-channel
    /// limit; when it is full, how long until a post fits.
    pub fn take_webhook_post(&mut self, limits: &RateLimits, channel: u64, now: Instant) -> Option<Duration> {
        let bucket = limits.webhook_channel;
        let log = self.webhook_posts.entry(channel).or_default();
        while log.front().is_some_and(|t| now.duration_since(*t) >= bucket.window) {
            log.pop_front();
        }
        if log.len() >= bucket.limit as usize {
            return log.front().map(|first| bucket.window.saturating_sub(now.duration_since(*first)));
        }
        log.push_back(now);
        None
    }

    /// Takes one request of `route_class` on `major` (channel, guild or webhook id).
    pub fn take(
        &mut self,
        limits: &RateLimits,
        route_class: &str,
        major: &str,
        bot_auth: bool,
        now: Instant,
    ) -> Verdict {
        let bucket = match route_class {
            "interaction_callback" => limits.interaction_callback,
            "channel_messages" => limits.channel_messages,
            "message_edits" => limits.message_edits,
            "webhook_execute" => limits.webhook_execute,
            "guild_writes" => limits.guild_writes,
            _ => limits.default,
        };
        let key = (route_class.to_owned(), major.to_owned());
        let window = self.buckets.entry(key).or_insert(Window { started: now, used: 0 });
        if now.duration_since(window.started) >= bucket.window {
            *window = Window { started: now, used: 0 };
        }
        let reset_after = bucket.window.saturating_sub(now.duration_since(window.started));
        let hash = format!("{route_class}-{:x}", route_class.len() * 7919 + bucket.limit as usize);
        if window.used >= bucket.limit {
            let headers = Headers { bucket: hash, limit: bucket.limit, remaining: 0, reset_after };
            return Verdict::Limited { headers, retry_after: reset_after, global: false };
        }
        if bot_auth {
            let global = self.global.get_or_insert(Window { started: now, used: 0 });
            if now.duration_since(global.started) >= Duration::from_secs(1) {
                *global = Window { started: now, used: 0 };
            }
            if global.used >= limits.global_per_sec {
                let retry_after = Duration::from_secs(1).saturating_sub(now.duration_since(global.started));
                let headers =
                    Headers { bucket: hash, limit: bucket.limit, remaining: bucket.limit - window.used, reset_after };
                return Verdict::Limited { headers, retry_after, global: true };
            }
            global.used += 1;
        }
        window.used += 1;
        Verdict::Allowed(Headers {
            bucket: hash,
            limit: bucket.limit,
            remaining: bucket.limit - window.used,
            reset_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_limit_per_window_then_answers_429_until_reset() {
        let limits = RateLimits { channel_messages: Bucket::new(2, Duration::from_secs(5)), ..RateLimits::default() };
        let mut l = Limiter::default();
        let t0 = Instant::now();
        assert!(matches!(l.take(&limits, "channel_messages", "1", true, t0), Verdict::Allowed(h) if h.remaining == 1));
        assert!(matches!(l.take(&limits, "channel_messages", "1", true, t0), Verdict::Allowed(h) if h.remaining == 0));
        assert!(matches!(l.take(&limits, "channel_messages", "1", true, t0), Verdict::Limited { global: false, .. }));
        assert!(
            matches!(l.take(&limits, "channel_messages", "2", true, t0), Verdict::Allowed(_)),
            "buckets are per channel"
        );
        let later = t0 + Duration::from_secs(5);
        assert!(matches!(l.take(&limits, "channel_messages", "1", true, later), Verdict::Allowed(_)));
    }

    #[test]
    fn the_global_limit_spans_routes() {
        let limits = RateLimits { global_per_sec: 3, ..RateLimits::default() };
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(matches!(l.take(&limits, "default", &i.to_string(), true, t0), Verdict::Allowed(_)));
        }
        assert!(matches!(l.take(&limits, "default", "9", true, t0), Verdict::Limited { global: true, .. }));
        assert!(
            matches!(l.take(&limits, "interaction_callback", "9", false, t0), Verdict::Allowed(_)),
            "callbacks are outside the global limit"
        );
    }
}
