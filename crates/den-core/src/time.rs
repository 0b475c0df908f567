use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
///
/// Stored state (visibility deadlines, TTLs, retention) is expressed in this
/// unit so that every backend, SQLite or DynamoDB, compares the same numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The timestamp `d` later than `self`, saturating.
    #[must_use]
    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }

    /// Time elapsed from `earlier` to `self`, zero when `earlier` is later.
    #[must_use]
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    /// Milliseconds since the epoch.
    #[must_use]
    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// Whole seconds since the epoch (the unit of DynamoDB's TTL attribute).
    #[must_use]
    pub fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// The UTC calendar date: (year, month 1-12, day 1-31).
    #[must_use]
    pub fn utc_date(self) -> (i64, u32, u32) {
        // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
        let z = self.as_secs().div_euclid(86_400) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        (year, u32::try_from(month).unwrap_or(1), u32::try_from(day).unwrap_or(1))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A source of the current time.
///
/// Components take a clock instead of calling the system time so that tests
/// can move time forward (visibility timeouts, TTLs, token expiry) without
/// sleeping.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A clock that only moves when told to; cheap to clone, clones share time.
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock standing at `start`.
    #[must_use]
    pub fn new(start: Timestamp) -> Self {
        Self { now: Arc::new(AtomicI64::new(start.0)) }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.now.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `t`.
    pub fn set(&self, t: Timestamp) {
        self.now.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced_and_clones_share_time() {
        let clock = ManualClock::new(Timestamp(1_000));
        let other = clock.clone();
        assert_eq!(clock.now(), Timestamp(1_000));
        other.advance(Duration::from_millis(250));
        assert_eq!(clock.now(), Timestamp(1_250));
    }

    #[test]
    fn utc_dates_follow_the_calendar_including_leap_days() {
        assert_eq!(Timestamp(0).utc_date(), (1970, 1, 1));
        assert_eq!(Timestamp(951_782_400_000).utc_date(), (2000, 2, 29));
        assert_eq!(Timestamp(1_795_305_600_000).utc_date(), (2026, 11, 22));
        assert_eq!(Timestamp(-1).utc_date(), (1969, 12, 31));
    }

    #[test]
    fn timestamp_arithmetic_saturates_instead_of_overflowing() {
        assert_eq!(Timestamp(i64::MAX - 1).plus(Duration::from_secs(10)), Timestamp(i64::MAX));
        assert_eq!(Timestamp(5).since(Timestamp(10)), Duration::ZERO);
        assert_eq!(Timestamp(-1).as_secs(), -1);
    }
}
