//! The token ledger on the SQLite store.

use std::sync::Arc;
use std::time::Duration;

use den_core::{ManualClock, Timestamp};
use den_llm::Usage;
use den_llm::ledger::{Budget, BudgetCheck, Ledger, table_spec};
use den_storage::Store;
use den_storage::sqlite::{SqliteOptions, SqliteStore};

async fn ledger() -> (tempfile::TempDir, Ledger, ManualClock) {
    let dir = tempfile::tempdir().unwrap();
    // 2026-11-22 23:00 UTC, an hour before the day turns.
    let clock = ManualClock::new(Timestamp(1_795_388_400_000));
    let store = SqliteStore::open(&SqliteOptions::new(dir.path().join("den.db")), Arc::new(clock.clone())).unwrap();
    let table = Store::table(&store, table_spec()).await.unwrap();
    (dir, Ledger::new(table, Arc::new(clock.clone())), clock)
}

fn used(i: u64, o: u64) -> Usage {
    Usage { input_tokens: i, output_tokens: o, cache_read_tokens: 0 }
}

#[tokio::test]
async fn usage_adds_up_per_persona_and_per_guild() {
    let (_d, ledger, _c) = ledger().await;
    ledger.record(1, "gran", used(100, 20)).await.unwrap();
    ledger.record(1, "gran", used(50, 10)).await.unwrap();
    ledger.record(1, "bot", used(5, 5)).await.unwrap();
    ledger.record(2, "gran", used(999, 999)).await.unwrap();
    let (total, personas) = ledger.today(1).await.unwrap();
    assert_eq!((total.input_tokens, total.output_tokens), (155, 35));
    assert_eq!(personas, [("bot".to_owned(), used(5, 5)), ("gran".to_owned(), used(150, 30))]);
}

#[tokio::test]
async fn concurrent_records_lose_no_tokens() {
    let (_d, ledger, _c) = ledger().await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let l = ledger.clone();
        tasks.push(tokio::spawn(async move { l.record(1, "gran", used(10, 1)).await.unwrap() }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (total, _) = ledger.today(1).await.unwrap();
    assert_eq!((total.input_tokens, total.output_tokens), (160, 16));
}

#[tokio::test]
async fn budgets_stop_calls_once_spent_and_reset_the_next_utc_day() {
    let (_d, ledger, clock) = ledger().await;
    let budget = Budget { per_guild: Some(1000), per_persona: Some(300) };
    assert_eq!(ledger.check(1, "gran", &budget).await.unwrap(), BudgetCheck::Allowed { remaining: Some(300) });
    ledger.record(1, "gran", used(200, 50)).await.unwrap();
    assert_eq!(ledger.check(1, "gran", &budget).await.unwrap(), BudgetCheck::Allowed { remaining: Some(50) });
    ledger.record(1, "gran", used(40, 10)).await.unwrap();
    assert_eq!(
        ledger.check(1, "gran", &budget).await.unwrap(),
        BudgetCheck::Exhausted,
        "the persona's budget is spent"
    );
    assert_eq!(
        ledger.check(1, "bot", &budget).await.unwrap(),
        BudgetCheck::Allowed { remaining: Some(300) },
        "others may still talk"
    );
    ledger.record(1, "bot", used(700, 0)).await.unwrap();
    assert_eq!(ledger.check(1, "bot", &budget).await.unwrap(), BudgetCheck::Exhausted, "the guild's budget is spent");
    clock.advance(Duration::from_secs(3600));
    assert_eq!(
        ledger.check(1, "gran", &budget).await.unwrap(),
        BudgetCheck::Allowed { remaining: Some(300) },
        "a new UTC day"
    );
    assert_eq!(ledger.check(1, "gran", &Budget::default()).await.unwrap(), BudgetCheck::Allowed { remaining: None });
}
