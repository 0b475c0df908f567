//! The token ledger: usage per guild, persona and UTC day, kept in the store,
//! and daily budgets that callers check before calling a model.

use std::sync::Arc;
use std::time::Duration;

use den_core::{Clock, Timestamp};
use den_storage::{Condition, Put, Query, SkCondition, StoreErrorKind, StoreResult, Table, TableSpec};
use serde_json::{Map, Value, json};

use crate::Usage;

/// How long daily usage is kept.
const KEEP: Duration = Duration::from_secs(90 * 86_400);
/// Attempts at a conditional increment before giving up (other writers won each time).
const MAX_RACES: u32 = 20;

/// The declaration of the ledger's table.
#[must_use]
pub fn table_spec() -> TableSpec {
    TableSpec::new("llm_usage")
}

/// Daily token budgets; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// Tokens (in + out) per guild per UTC day.
    pub per_guild: Option<u64>,
    /// Tokens per persona per guild per UTC day.
    pub per_persona: Option<u64>,
}

/// What a budget check says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetCheck {
    /// Go ahead; this many tokens are left today (the smaller of the two budgets).
    Allowed {
        /// Tokens left, `None` when unlimited.
        remaining: Option<u64>,
    },
    /// Today's budget is spent.
    Exhausted,
}

/// Usage records and budget checks.
#[derive(Clone)]
pub struct Ledger {
    table: Arc<dyn Table>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ledger")
    }
}

/// `YYYY-MM-DD` of a time, in UTC.
#[must_use]
pub fn utc_day(t: Timestamp) -> String {
    let (year, month, day) = t.utc_date();
    format!("{year:04}-{month:02}-{day:02}")
}

fn tokens(attrs: &Map<String, Value>) -> Usage {
    let n = |k: &str| attrs.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage { input_tokens: n("in"), output_tokens: n("out"), cache_read_tokens: n("cached") }
}

fn total(u: &Usage) -> u64 {
    u.input_tokens + u.output_tokens
}

impl Ledger {
    /// A ledger over `table` (declared by [`table_spec`]).
    #[must_use]
    pub fn new(table: Arc<dyn Table>, clock: Arc<dyn Clock>) -> Self {
        Self { table, clock }
    }

    fn pk(guild: u64, day: &str) -> String {
        format!("guild:{guild}:{day}")
    }

    /// Adds `usage` to today's totals of `persona` and of `guild`.
    pub async fn record(&self, guild: u64, persona: &str, usage: Usage) -> StoreResult<()> {
        let now = self.clock.now();
        let pk = Self::pk(guild, &utc_day(now));
        for sk in [format!("persona:{persona}"), "total".to_owned()] {
            self.add(&pk, &sk, usage, now).await?;
        }
        Ok(())
    }

    async fn add(&self, pk: &str, sk: &str, usage: Usage, now: Timestamp) -> StoreResult<()> {
        for _ in 0..MAX_RACES {
            let current = self.table.get(pk, sk).await?;
            let (before, condition) = match &current {
                Some(item) => (tokens(&item.attrs), Condition::VersionEquals(item.version)),
                None => (Usage::default(), Condition::Absent),
            };
            let attrs = json!({
                "in": before.input_tokens + usage.input_tokens,
                "out": before.output_tokens + usage.output_tokens,
                "cached": before.cache_read_tokens + usage.cache_read_tokens,
            });
            let put = Put::new(pk, sk, attrs.as_object().cloned().unwrap_or_default())
                .condition(condition)
                .expires_at(now.plus(KEEP));
            match self.table.put(put).await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == StoreErrorKind::ConditionFailed => {}
                Err(e) => return Err(e),
            }
        }
        Err(den_storage::StoreError::new(StoreErrorKind::ConditionFailed, "token ledger: too many concurrent writers"))
    }

    /// Today's usage of a guild: the total and each persona's.
    pub async fn today(&self, guild: u64) -> StoreResult<(Usage, Vec<(String, Usage)>)> {
        let pk = Self::pk(guild, &utc_day(self.clock.now()));
        let total = self.table.get(&pk, "total").await?.map(|i| tokens(&i.attrs)).unwrap_or_default();
        let page = self.table.query(Query::pk(pk).sk(SkCondition::Prefix("persona:".into())).limit(1000)).await?;
        let personas =
            page.items.iter().map(|i| (i.sk.trim_start_matches("persona:").to_owned(), tokens(&i.attrs))).collect();
        Ok((total, personas))
    }

    /// Whether `persona` may call a model in `guild` now.
    pub async fn check(&self, guild: u64, persona: &str, budget: &Budget) -> StoreResult<BudgetCheck> {
        let pk = Self::pk(guild, &utc_day(self.clock.now()));
        let mut remaining: Option<u64> = None;
        for (sk, limit) in [("total".to_owned(), budget.per_guild), (format!("persona:{persona}"), budget.per_persona)]
        {
            let Some(limit) = limit else { continue };
            let used = self.table.get(&pk, &sk).await?.map(|i| total(&tokens(&i.attrs))).unwrap_or(0);
            if used >= limit {
                return Ok(BudgetCheck::Exhausted);
            }
            let left = limit - used;
            remaining = Some(remaining.map_or(left, |r| r.min(left)));
        }
        Ok(BudgetCheck::Allowed { remaining })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_days_are_iso_dates() {
        assert_eq!(utc_day(Timestamp(0)), "1970-01-01");
        assert_eq!(utc_day(Timestamp(1_795_305_600_000)), "2026-11-22");
        assert_eq!(utc_day(Timestamp(951_782_400_000)), "2000-02-29");
    }
}
