//! Every case runs on both backends: SQLite and a den table.

use std::sync::Arc;

use super::*;

const NOW: Timestamp = Timestamp(1_795_305_600_000);

/// A message id Discord would give a message said at `at`.
fn said(at: Timestamp, n: u64) -> u64 {
    (u64::try_from(at.0).unwrap_or(0).saturating_sub(1_420_070_400_000) << 22) | n
}

/// Both backends (the den table on an SQLite store whose clock stands at `NOW`).
async fn backends() -> Vec<(&'static str, MemoryStore, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(den_core::ManualClock::new(NOW));
    let options = den_storage::sqlite::SqliteOptions::new(dir.path().join("d.db"));
    let store = den_storage::sqlite::SqliteStore::open(&options, clock).unwrap();
    let table = Arc::new(store.table(table_spec()).await.unwrap());
    vec![
        ("sqlite", MemoryStore::in_memory().unwrap(), tempfile::tempdir().unwrap()),
        ("table", MemoryStore::on_table(table), dir),
    ]
}

fn fact(subject: Subject, text: &str, importance: f64) -> NewFact {
    NewFact::new(subject, text, importance, "remember")
}

fn line(id: u64, user: u64, text: &str) -> Line {
    Line { message_id: id, user_id: user, persona: None, author: "x".into(), text: text.into(), at: NOW, about_user: 0 }
}

#[tokio::test]
async fn recall_ranks_relevant_facts_first_and_never_returns_other_peoples() {
    for (name, m, _d) in backends().await {
        let g = 1;
        m.remember(g, fact(Subject::User(10), "Ada keeps bees on her roof", 0.3), NOW).await.unwrap();
        m.remember(g, fact(Subject::User(10), "Ada is learning the violin", 0.9), NOW).await.unwrap();
        m.remember(g, fact(Subject::User(11), "Bob is allergic to bees", 0.9), NOW).await.unwrap();
        let quill = Subject::PersonaUser("quill".into(), 10);
        m.remember(g, fact(quill, "Quill thinks Ada's bees are vulgar", 0.9), NOW).await.unwrap();
        m.remember(g, fact(Subject::Persona("gran".into()), "Gran won the bake-off in 1987", 0.5), NOW).await.unwrap();
        m.remember(2, fact(Subject::User(10), "In another guild, Ada hates bees", 1.0), NOW).await.unwrap();
        let r = m.recall(g, "gran", 10, "tell me about the bees", 10, NOW).await.unwrap();
        let texts: Vec<&str> = r.iter().map(|x| x.fact.text.as_str()).collect();
        assert_eq!(texts[0], "Ada keeps bees on her roof", "{name}: relevance wins: {texts:?}");
        assert!(texts.contains(&"Ada is learning the violin"), "{name}: important facts are always there");
        assert!(texts.contains(&"Gran won the bake-off in 1987"), "{name}: the persona's own facts");
        assert!(
            !texts.iter().any(|t| t.contains("Bob") || t.contains("another guild") || t.contains("Quill")),
            "{name}: not another person's, guild's or persona's: {texts:?}"
        );
    }
}

#[tokio::test]
async fn a_fact_stored_twice_under_one_key_exists_once() {
    for (name, m, _d) in backends().await {
        let f = fact(Subject::User(10), "Ada plays the oboe", 0.8).key("int:42");
        let first = m.remember(1, f.clone(), NOW).await.unwrap();
        let again = m.remember(1, f, Timestamp(NOW.0 + 5_000)).await.unwrap();
        assert_eq!(first, again, "{name}");
        assert_eq!(m.about_user(1, 10).await.unwrap().len(), 1, "{name}: one fact");
        m.remember(1, fact(Subject::User(10), "Ada plays the oboe", 0.8), NOW).await.unwrap();
        assert_eq!(m.about_user(1, 10).await.unwrap().len(), 2, "{name}: without a key, a second one");
    }
}

#[tokio::test]
async fn facts_are_shared_updated_and_deleted_once() {
    for (name, m, _d) in backends().await {
        let id = m.remember(1, fact(Subject::User(10), "Ada's cat is called Mr Biscuit", 0.7), NOW).await.unwrap();
        let r = m.recall(1, "gran", 10, "what is my cat called?", 3, NOW).await.unwrap();
        assert_eq!((r[0].fact.text.as_str(), r[0].fact.id), ("Ada's cat is called Mr Biscuit", id), "{name}");
        assert!(m.update(id, "Ada's cat is called Sir Biscuit".into(), 0.8, NOW).await.unwrap());
        assert_eq!(m.about_user(1, 10).await.unwrap()[0].text, "Ada's cat is called Sir Biscuit", "{name}");
        assert!(m.delete(id).await.unwrap());
        assert!(!m.delete(id).await.unwrap(), "{name}: deleted once");
        assert!(m.about_user(1, 10).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn forgetting_a_person_removes_their_facts_lines_and_the_answers_to_them() {
    for (name, m, _d) in backends().await {
        let secret = "Zanzibarquux";
        m.remember(1, fact(Subject::User(10), &format!("Ada's hint is {secret}"), 0.9), NOW).await.unwrap();
        let about = Subject::PersonaUser("gran".into(), 10);
        m.remember(1, fact(about, &format!("{secret} again"), 0.4), NOW).await.unwrap();
        m.remember(1, fact(Subject::User(11), "Bob likes trains", 0.5), NOW).await.unwrap();
        m.record(1, 5, line(100, 10, &format!("my hint is {secret}"))).await.unwrap();
        m.record(1, 5, line(101, 11, "choo choo")).await.unwrap();
        let echo = Line { persona: Some("gran".into()), about_user: 10, ..line(102, 0, &format!("{secret}, dear?")) };
        m.record(1, 5, echo).await.unwrap();
        assert_eq!(m.line(1, 5, 102).await.unwrap().unwrap().about_user, 10);

        let gone = m.forget_user(1, 10, None, NOW).await.unwrap();
        assert_eq!(gone, 4, "{name}: two facts, Ada's line and Gran's answer to her");
        assert!(m.about_user(1, 10).await.unwrap().is_empty());
        let left: Vec<String> = m.recent(1, 5, 10, NOW).await.unwrap().into_iter().map(|l| l.text).collect();
        assert_eq!(left, ["choo choo"], "{name}");
        assert_eq!(m.about_user(1, 11).await.unwrap().len(), 1, "{name}: others keep theirs");
        assert_eq!(m.forgotten_at(1, 10).await.unwrap(), Some(NOW), "{name}");
        assert_eq!(m.forgotten_at(1, 11).await.unwrap(), None, "{name}");
    }
}

#[tokio::test]
async fn a_message_said_before_its_author_was_forgotten_is_never_recorded_after() {
    for (name, m, _d) in backends().await {
        m.forget_user(1, 10, None, NOW).await.unwrap();
        // A job that was waiting in the queue when they asked to be forgotten.
        m.record(1, 5, line(said(Timestamp(NOW.0 - 1_000), 1), 10, "old words")).await.unwrap();
        // What they say afterwards is remembered as usual.
        m.record(1, 5, line(said(Timestamp(NOW.0 + 1_000), 2), 10, "new words")).await.unwrap();
        let texts: Vec<String> = m.recent(1, 5, 10, NOW).await.unwrap().into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["new words"], "{name}");
    }
}

#[tokio::test]
async fn forgetting_by_text_removes_only_matching_facts() {
    for (name, m, _d) in backends().await {
        m.remember(1, fact(Subject::User(10), "likes jazz", 0.5), NOW).await.unwrap();
        m.remember(1, fact(Subject::User(10), "hates JAZZ hands", 0.5), NOW).await.unwrap();
        m.remember(1, fact(Subject::User(10), "owns a cat", 0.5), NOW).await.unwrap();
        assert_eq!(m.forget_user(1, 10, Some("jazz".into()), NOW).await.unwrap(), 2, "{name}");
        let left: Vec<String> = m.about_user(1, 10).await.unwrap().into_iter().map(|f| f.text).collect();
        assert_eq!(left, ["owns a cat"], "{name}");
        assert_eq!(m.forgotten_at(1, 10).await.unwrap(), None, "{name}: a partial forget forgets no person");
    }
}

#[tokio::test]
async fn the_transcript_returns_recent_lines_oldest_first_within_thirty_days() {
    for (name, m, _d) in backends().await {
        for i in 0..5u64 {
            let at = Timestamp(NOW.0 - (40 - i as i64 * 10) * 86_400_000);
            m.record(1, 2, Line { at, ..line(i, 1, &format!("m{i}")) }).await.unwrap();
        }
        let texts: Vec<String> = m.recent(1, 2, 10, NOW).await.unwrap().into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["m1", "m2", "m3", "m4"], "{name}: the 40-day-old line is past the window");
        let last: Vec<String> = m.recent(1, 2, 2, NOW).await.unwrap().into_iter().map(|l| l.text).collect();
        assert_eq!(last, ["m3", "m4"], "{name}: the newest, oldest first");
    }
}

#[tokio::test]
async fn the_sqlite_memory_expires_old_lines_and_finds_old_facts_by_full_text() {
    let m = SqliteMemory::in_memory().unwrap();
    for i in 0..5u64 {
        let at = Timestamp(NOW.0 - (40 - i as i64 * 10) * 86_400_000);
        m.record(1, 2, Line { at, ..line(i, 1, &format!("m{i}")) }).await.unwrap();
    }
    assert_eq!(m.expire(NOW).await.unwrap(), 1);
    let old = Timestamp(NOW.0 - 400 * 86_400_000);
    m.remember(1, fact(Subject::User(10), "Ada once rode a zeppelin over Bruges", 0.2), old).await.unwrap();
    for i in 0..310 {
        let at = Timestamp(NOW.0 - i);
        m.remember(1, fact(Subject::User(10), &format!("Ada fact number {i}"), 0.2), at).await.unwrap();
    }
    let r = m.recall(1, "gran", 10, "have you ever been on a zeppelin?", 5, NOW).await.unwrap();
    assert_eq!(r[0].fact.text, "Ada once rode a zeppelin over Bruges", "beyond the 300 most recent");
    let r = m.recall(1, "gran", 10, "zeppelins!", 5, NOW).await.unwrap();
    assert_eq!(r[0].fact.text, "Ada once rode a zeppelin over Bruges", "stemmed: plurals match");
    for q in ["\"unbalanced", "NEAR(likes things)", "text:* OR -", "*", ""] {
        m.recall(1, "p", 10, q, 5, NOW).await.unwrap();
    }
}

#[tokio::test]
async fn forgetting_leaves_no_trace_in_the_sqlite_files() {
    let dir = tempfile::tempdir().unwrap();
    let m = SqliteMemory::open(&dir.path().join("memory.db")).unwrap();
    let secret = "Zanzibarquux";
    m.remember(1, fact(Subject::User(10), &format!("Ada's password hint is {secret}"), 0.9), NOW).await.unwrap();
    m.record(1, 5, line(100, 10, &format!("my hint is {secret}"))).await.unwrap();
    assert_eq!(m.mentions(secret).await.unwrap(), 3, "a fact, its index entry, a line");
    m.forget_user(1, 10, None, NOW).await.unwrap();
    assert_eq!(m.mentions(secret).await.unwrap(), 0);
    for file in ["memory.db", "memory.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(file)) {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{file} still holds it");
        }
    }
}
