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
//!   updates and deletes by id.
//!
//! Recall reads the person's and the persona's partitions whole and scores
//! them with the same BM25, importance and recency as the SQLite memory:
//! the candidates are exactly the facts a prompt may use.

use std::sync::Arc;
use std::time::Duration;

use den_core::Timestamp;
use den_storage::{Condition, IndexSpec, Item, Put, Query, StoreErrorKind, Table, TableSpec};
use serde_json::{Map, Value, json};

use crate::memory::{Fact, Line, MemoryError, Recalled, Subject, TRANSCRIPT_DAYS};

/// The den table holding persona memory on a shared store.
#[must_use]
pub fn table_spec() -> TableSpec {
    TableSpec::new("persona_memory")
        .with_index(IndexSpec::new("by_id", "fid", None))
        .with_index(IndexSpec::new("by_user", "tu", None))
        .with_index(IndexSpec::new("by_about", "ta", None))
}

fn err(e: den_storage::StoreError) -> MemoryError {
    MemoryError::new(e.to_string())
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
pub(crate) struct TableMemory {
    table: Arc<dyn Table>,
}

impl TableMemory {
    pub(crate) fn new(table: Arc<dyn Table>) -> Self {
        Self { table }
    }

    async fn all(&self, query: Query) -> Result<Vec<Item>, MemoryError> {
        let mut items = Vec::new();
        let mut query = query.limit(den_storage::MAX_QUERY_LIMIT);
        loop {
            let page = self.table.query(query.clone()).await.map_err(err)?;
            items.extend(page.items);
            match page.cursor {
                Some(c) => query = query.cursor(Some(c)),
                None => return Ok(items),
            }
        }
    }

    pub(crate) async fn record(&self, guild: u64, channel: u64, line: Line) -> Result<(), MemoryError> {
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
        self.table.put(put).await.map_err(err)?;
        Ok(())
    }

    fn line(item: &Item) -> Line {
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

    pub(crate) async fn recent(
        &self,
        guild: u64,
        channel: u64,
        n: usize,
        now: Timestamp,
    ) -> Result<Vec<Line>, MemoryError> {
        let since = now.0 - TRANSCRIPT_DAYS * 86_400_000;
        let limit = n.clamp(1, den_storage::MAX_QUERY_LIMIT);
        let page =
            self.table.query(Query::pk(format!("t:{guild}:{channel}")).reverse().limit(limit)).await.map_err(err)?;
        let mut lines: Vec<Line> = page.items.iter().map(Self::line).filter(|l| l.at.0 >= since).take(n).collect();
        lines.reverse();
        Ok(lines)
    }

    pub(crate) async fn line_at(&self, guild: u64, channel: u64, message_id: u64) -> Result<Option<Line>, MemoryError> {
        let item = self.table.get(&format!("t:{guild}:{channel}"), &format!("{message_id:020}")).await.map_err(err)?;
        Ok(item.as_ref().map(Self::line))
    }

    fn fact_pk(guild: u64, subject: &Subject) -> String {
        match subject {
            Subject::User(user) | Subject::PersonaUser(_, user) => format!("f:{guild}:u:{user}"),
            Subject::Persona(p) => format!("f:{guild}:p:{p}"),
        }
    }

    fn fact(item: &Item) -> Fact {
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

    pub(crate) async fn remember(
        &self,
        guild: u64,
        subject: Subject,
        text: String,
        importance: f64,
        source: &str,
        now: Timestamp,
    ) -> Result<i64, MemoryError> {
        let pk = Self::fact_pk(guild, &subject);
        let (user, persona) = match subject {
            Subject::User(u) => (Some(u), None),
            Subject::Persona(p) => (None, Some(p)),
            Subject::PersonaUser(p, u) => (Some(u), Some(p)),
        };
        for _ in 0..5 {
            // Time-ordered ids, unique across processes without coordination.
            let id = (now.0.max(0) << 16) | i64::from(rand::random::<u16>());
            let mut a = attrs(json!({
                "fid": id.to_string(),
                "g": guild,
                "x": text,
                "i": importance.clamp(0.0, 1.0),
                "s": source,
                "up": now.0,
            }));
            if let Some(u) = user {
                a.insert("u".into(), json!(u));
            }
            if let Some(p) = &persona {
                a.insert("p".into(), json!(p));
            }
            let put = Put::new(pk.clone(), format!("{id:020}"), a).condition(Condition::Absent);
            match self.table.put(put).await {
                Ok(_) => return Ok(id),
                Err(e) if e.kind() == StoreErrorKind::ConditionFailed => continue,
                Err(e) => return Err(err(e)),
            }
        }
        Err(MemoryError::new("could not find a free fact id".into()))
    }

    async fn by_id(&self, id: i64) -> Result<Option<Item>, MemoryError> {
        let page = self.table.query(Query::pk(id.to_string()).on_index("by_id").limit(1)).await.map_err(err)?;
        Ok(page.items.into_iter().next())
    }

    pub(crate) async fn update(
        &self,
        id: i64,
        text: String,
        importance: f64,
        now: Timestamp,
    ) -> Result<bool, MemoryError> {
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
                Err(e) => return Err(err(e)),
            }
        }
        Err(MemoryError::new(format!("fact {id} kept changing")))
    }

    pub(crate) async fn delete(&self, id: i64) -> Result<bool, MemoryError> {
        let Some(item) = self.by_id(id).await? else { return Ok(false) };
        self.table.delete(&item.pk, &item.sk, Condition::None).await.map_err(err)
    }

    pub(crate) async fn about_user(&self, guild: u64, user: u64) -> Result<Vec<Fact>, MemoryError> {
        let items = self.all(Query::pk(Self::fact_pk(guild, &Subject::User(user)))).await?;
        let mut facts: Vec<Fact> = items.iter().map(Self::fact).collect();
        facts.sort_by_key(|f| std::cmp::Reverse(f.updated));
        Ok(facts)
    }

    pub(crate) async fn forget_user(&self, guild: u64, user: u64, text: Option<String>) -> Result<usize, MemoryError> {
        let mut gone = 0;
        let needle = text.as_ref().map(|t| t.to_lowercase());
        for item in self.all(Query::pk(Self::fact_pk(guild, &Subject::User(user)))).await? {
            let matches = needle.as_ref().is_none_or(|n| s(&item, "x").unwrap_or_default().to_lowercase().contains(n));
            if matches && self.table.delete(&item.pk, &item.sk, Condition::None).await.map_err(err)? {
                gone += 1;
            }
        }
        if text.is_none() {
            for index in ["by_user", "by_about"] {
                for item in self.all(Query::pk(format!("{guild}:{user}")).on_index(index)).await? {
                    if self.table.delete(&item.pk, &item.sk, Condition::None).await.map_err(err)? {
                        gone += 1;
                    }
                }
            }
        }
        Ok(gone)
    }

    pub(crate) async fn recall(
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
            .map(Self::fact)
            .filter(|f| f.persona.as_deref().is_none_or(|p| p == persona))
            .collect();
        let own = self.all(Query::pk(Self::fact_pk(guild, &Subject::Persona(persona.to_owned())))).await?;
        corpus.extend(own.iter().map(Self::fact));
        Ok(crate::memory::rank(corpus, query, limit, now))
    }
}
