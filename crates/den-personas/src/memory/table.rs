//! Persona memory on den's [`Table`] API, for stores shared by several
//! processes (the AWS backend): every worker reads and writes the same
//! transcripts and facts.
//!
//! Layout of the `persona_memory` table:
//! - transcript lines: `pk = t:<guild>:<channel>`, `sk = <message id, 20 digits>`,
//!   expiring 30 days after they were said (the store's TTL deletes them);
//!   indexes `by_user` (`tu = <guild>:<author>`) and `by_about`
//!   (`ta = <guild>:<person answered>`) find a person's lines to forget;
//! - facts about a person, and what personas know of them:
//!   `pk = f:<guild>:u:<user>`; a persona's own facts: `pk = f:<guild>:p:<persona>`;
//!   `sk = <fact id, 20 digits>`; index `by_id` (`fid`) for consolidation's
//!   updates and deletes by id. A fact stored under a key gets its id from
//!   the key, so storing it again finds the same item;
//! - when a person was forgotten: `pk = x:<guild>:<user>`, `sk = forgot`,
//!   kept 15 days.
//!
//! Recall reads the person's and the persona's partitions whole and scores
//! them with the same BM25, importance and recency as the SQLite memory:
//! the candidates are exactly the facts a prompt may use.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use den_core::Timestamp;
use den_storage::{Condition, IndexSpec, Item, Put, Query, StoreErrorKind, Table, TableSpec};
use serde_json::{Map, Value, json};

use super::{FORGOTTEN_DAYS, Fact, Line, Memory, MemoryError, NewFact, Recalled, Subject, TRANSCRIPT_DAYS, said_at};

/// The den table holding persona memory on a shared store.
#[must_use]
pub fn table_spec() -> TableSpec {
    TableSpec::new("persona_memory")
        .with_index(IndexSpec::new("by_id", "fid", None))
        .with_index(IndexSpec::new("by_user", "tu", None))
        .with_index(IndexSpec::new("by_about", "ta", None))
}

fn attrs(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn s<'a>(item: &'a Item, key: &str) -> Option<&'a str> {
    item.attrs.get(key).and_then(Value::as_str)
}

fn u(item: &Item, key: &str) -> u64 {
    item.attrs.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Persona memory in a den table.
#[derive(Clone, Debug)]
pub struct TableMemory {
    table: Arc<dyn Table>,
}

/// A fact id from its key: FNV-1a, kept positive, stable across processes.
fn id_of_key(key: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    i64::try_from(h >> 1).unwrap_or(i64::MAX)
}

impl TableMemory {
    /// Memory over `table` (declared by [`table_spec`]).
    #[must_use]
    pub fn new(table: Arc<dyn Table>) -> Self {
        Self { table }
    }

    async fn all(&self, query: Query) -> Result<Vec<Item>, MemoryError> {
        let mut items = Vec::new();
        let mut query = query.limit(den_storage::MAX_QUERY_LIMIT);
        loop {
            let page = self.table.query(query.clone()).await?;
            items.extend(page.items);
            match page.cursor {
                Some(c) => query = query.cursor(Some(c)),
                None => return Ok(items),
            }
        }
    }

    fn line_of(item: &Item) -> Line {
        Line {
            message_id: item.sk.parse().unwrap_or(0),
            user_id: u(item, "u"),
            persona: s(item, "p").map(str::to_owned),
            about_user: u(item, "ab"),
            author: s(item, "a").unwrap_or_default().to_owned(),
            text: s(item, "x").unwrap_or_default().to_owned(),
            at: Timestamp(item.attrs.get("at").and_then(Value::as_i64).unwrap_or(0)),
        }
    }
    fn fact_pk(guild: u64, subject: &Subject) -> String {
        match subject {
            Subject::User(user) | Subject::PersonaUser(_, user) => format!("f:{guild}:u:{user}"),
            Subject::Persona(p) => format!("f:{guild}:p:{p}"),
        }
    }
    fn fact_of(item: &Item) -> Fact {
        Fact {
            id: item.sk.parse().unwrap_or(0),
            guild: u(item, "g"),
            user_id: item.attrs.get("u").and_then(Value::as_u64),
            persona: s(item, "p").map(str::to_owned),
            text: s(item, "x").unwrap_or_default().to_owned(),
            importance: item.attrs.get("i").and_then(Value::as_f64).unwrap_or(0.0),
            source: s(item, "s").unwrap_or_default().to_owned(),
            updated: Timestamp(item.attrs.get("up").and_then(Value::as_i64).unwrap_or(0)),
        }
    }
    async fn by_id(&self, id: i64) -> Result<Option<Item>, MemoryError> {
        let page = self.table.query(Query::pk(id.to_string()).on_index("by_id").limit(1)).await?;
        Ok(page.items.into_iter().next())
    }
}

#[async_trait]
impl Memory for TableMemory {
    async fn record(&self, guild: u64, channel: u64, line: Line) -> Result<(), MemoryError> {
        if line.user_id != 0
            && self.forgotten_at(guild, line.user_id).await?.is_some_and(|at| said_at(line.message_id) <= at)
        {
            return Ok(());
        }
        let mut a = attrs(json!({
            "u": line.user_id,
            "ab": line.about_user,
            "a": line.author,
            "x": line.text,
            "at": line.at.0,
            "tu": format!("{guild}:{}", line.user_id),
        }));
        if let Some(p) = &line.persona {
            a.insert("p".into(), json!(p));
        }
        if line.about_user != 0 {
            a.insert("ta".into(), json!(format!("{guild}:{}", line.about_user)));
        }
        // Kept while `at >= now - 30 days`, as in the SQLite memory: gone 1 ms after.
        let days = Duration::from_secs(u64::try_from(TRANSCRIPT_DAYS).unwrap_or(30) * 86_400);
        let expires = line.at.plus(days + Duration::from_millis(1));
        let put = Put::new(format!("t:{guild}:{channel}"), format!("{:020}", line.message_id), a).expires_at(expires);
        self.table.put(put).await?;
        Ok(())
    }

    async fn recent(&self, guild: u64, channel: u64, n: usize, now: Timestamp) -> Result<Vec<Line>, MemoryError> {
        let since = now.0 - TRANSCRIPT_DAYS * 86_400_000;
        let limit = n.clamp(1, den_storage::MAX_QUERY_LIMIT);
        let page = self.table.query(Query::pk(format!("t:{guild}:{channel}")).reverse().limit(limit)).await?;
        let mut lines: Vec<Line> = page.items.iter().map(Self::line_of).filter(|l| l.at.0 >= since).take(n).collect();
        lines.reverse();
        Ok(lines)
    }

    async fn line(&self, guild: u64, channel: u64, message_id: u64) -> Result<Option<Line>, MemoryError> {
        let item = self.table.get(&format!("t:{guild}:{channel}"), &format!("{message_id:020}")).await?;
        Ok(item.as_ref().map(Self::line_of))
    }

    async fn remember(&self, guild: u64, fact: NewFact, now: Timestamp) -> Result<i64, MemoryError> {
        let pk = Self::fact_pk(guild, &fact.subject);
        let (user, persona) = fact.subject.parts();
        for _ in 0..5 {
            // Time-ordered ids, unique across processes without coordination;
            // from the key when there is one, so storing it again finds it.
            let id = match &fact.key {
                Some(key) => id_of_key(key),
                None => (now.0.max(0) << 16) | i64::from(rand::random::<u16>()),
            };
            let mut a = attrs(json!({
                "fid": id.to_string(),
                "g": guild,
                "x": fact.text,
                "i": fact.importance.clamp(0.0, 1.0),
                "s": fact.source,
                "up": now.0,
            }));
            if let Some(u) = user {
                a.insert("u".into(), json!(u));
            }
            if let Some(p) = persona {
                a.insert("p".into(), json!(p));
            }
            let put = Put::new(pk.clone(), format!("{id:020}"), a).condition(Condition::Absent);
            match self.table.put(put).await {
                Ok(_) => return Ok(id),
                Err(e) if e.kind() == StoreErrorKind::ConditionFailed && fact.key.is_some() => return Ok(id),
                Err(e) if e.kind() == StoreErrorKind::ConditionFailed => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(MemoryError::new("could not find a free fact id"))
    }

    async fn update(&self, id: i64, text: String, importance: f64, now: Timestamp) -> Result<bool, MemoryError> {
        for _ in 0..5 {
            let Some(item) = self.by_id(id).await? else { return Ok(false) };
            let mut a = item.attrs.clone();
            a.insert("x".into(), json!(text));
            a.insert("i".into(), json!(importance.clamp(0.0, 1.0)));
            a.insert("up".into(), json!(now.0));
            let put = Put::new(item.pk, item.sk, a).condition(Condition::VersionEquals(item.version));
            match self.table.put(put).await {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == StoreErrorKind::ConditionFailed => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(MemoryError::new(format!("fact {id} kept changing")))
    }

    async fn delete(&self, id: i64) -> Result<bool, MemoryError> {
        let Some(item) = self.by_id(id).await? else { return Ok(false) };
        Ok(self.table.delete(&item.pk, &item.sk, Condition::None).await?)
    }

    async fn about_user(&self, guild: u64, user: u64) -> Result<Vec<Fact>, MemoryError> {
        let items = self.all(Query::pk(Self::fact_pk(guild, &Subject::User(user)))).await?;
        let mut facts: Vec<Fact> = items.iter().map(Self::fact_of).collect();
        facts.sort_by_key(|f| std::cmp::Reverse(f.updated));
        Ok(facts)
    }

    async fn forget_user(
        &self,
        guild: u64,
        user: u64,
        text: Option<String>,
        now: Timestamp,
    ) -> Result<usize, MemoryError> {
        if text.is_none() {
            // First: a line of theirs recorded while this runs is refused.
            let days = Duration::from_secs(u64::try_from(FORGOTTEN_DAYS).unwrap_or(15) * 86_400);
            let put =
                Put::new(format!("x:{guild}:{user}"), "forgot", attrs(json!({"at": now.0}))).expires_at(now.plus(days));
            self.table.put(put).await?;
        }
        let mut gone = 0;
        let needle = text.as_ref().map(|t| t.to_lowercase());
        for item in self.all(Query::pk(Self::fact_pk(guild, &Subject::User(user)))).await? {
            let matches = needle.as_ref().is_none_or(|n| s(&item, "x").unwrap_or_default().to_lowercase().contains(n));
            if matches && self.table.delete(&item.pk, &item.sk, Condition::None).await? {
                gone += 1;
            }
        }
        if text.is_none() {
            for index in ["by_user", "by_about"] {
                for item in self.all(Query::pk(format!("{guild}:{user}")).on_index(index)).await? {
                    if self.table.delete(&item.pk, &item.sk, Condition::None).await? {
                        gone += 1;
                    }
                }
            }
        }
        Ok(gone)
    }

    async fn forgotten_at(&self, guild: u64, user: u64) -> Result<Option<Timestamp>, MemoryError> {
        let item = self.table.get(&format!("x:{guild}:{user}"), "forgot").await?;
        Ok(item.and_then(|i| i.attrs.get("at").and_then(Value::as_i64)).map(Timestamp))
    }

    /// The store's TTL deletes expired lines and records: nothing to do.
    async fn expire(&self, _now: Timestamp) -> Result<usize, MemoryError> {
        Ok(0)
    }

    async fn recall(
        &self,
        guild: u64,
        persona: &str,
        user: u64,
        query: &str,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<Recalled>, MemoryError> {
        let mut corpus: Vec<Fact> = self
            .all(Query::pk(Self::fact_pk(guild, &Subject::User(user))))
            .await?
            .iter()
            .map(Self::fact_of)
            .filter(|f| f.persona.as_deref().is_none_or(|p| p == persona))
            .collect();
        let own = self.all(Query::pk(Self::fact_pk(guild, &Subject::Persona(persona.to_owned())))).await?;
        corpus.extend(own.iter().map(Self::fact_of));
        Ok(super::rank::rank(corpus, query, limit, now))
    }
}
