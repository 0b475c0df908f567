use std::sync::Arc;

use async_trait::async_trait;
use den_core::Timestamp;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value};

use super::Shared;
use crate::table::{MAX_ITEM_BYTES, MAX_QUERY_LIMIT, decode_cursor, encode_cursor, validate_key, validate_table_name};
use crate::{
    Condition, IndexSpec, Item, Page, Put, Query, SkCondition, StoreError, StoreErrorKind, StoreResult, Table,
    TableSpec,
};

/// A table stored in an [`SqliteStore`](super::SqliteStore).
#[derive(Clone, Debug)]
pub struct SqliteTable {
    shared: Arc<Shared>,
    spec: Arc<TableSpec>,
}

impl SqliteTable {
    pub(super) async fn open(shared: Arc<Shared>, spec: TableSpec) -> StoreResult<Self> {
        validate_table_name(&spec.name)?;
        for (i, index) in spec.indexes.iter().enumerate() {
            if spec.indexes[..i].iter().any(|other| other.name == index.name) {
                return Err(StoreError::invalid(format!("index {} is declared twice", index.name)));
            }
        }
        let stored = spec_to_json(&spec);
        let name = spec.name.clone();
        let indexes = spec.indexes.clone();
        shared
            .write(move |c| {
                let previous: Option<String> =
                    c.query_row("SELECT spec FROM kv_tables WHERE tbl = ?1", [&name], |r| r.get(0)).optional()?;
                let known: Vec<String> = previous
                    .and_then(|p| serde_json::from_str::<Value>(&p).ok())
                    .and_then(|v| v.get("indexes").cloned())
                    .and_then(|v| serde_json::from_value::<Vec<Value>>(v).ok())
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_owned))
                    .collect();
                let fresh: Vec<&IndexSpec> = indexes.iter().filter(|i| !known.contains(&i.name)).collect();
                if !fresh.is_empty() {
                    backfill(c, &name, &fresh)?;
                }
                c.execute(
                    "INSERT INTO kv_tables (tbl, spec) VALUES (?1, ?2) ON CONFLICT (tbl) DO UPDATE SET spec = ?2",
                    params![name, stored],
                )?;
                Ok(())
            })
            .await?;
        Ok(Self { shared, spec: Arc::new(spec) })
    }
}

fn spec_to_json(spec: &TableSpec) -> String {
    let indexes: Vec<Value> = spec
        .indexes
        .iter()
        .map(|i| serde_json::json!({"name": i.name, "pk_attr": i.pk_attr, "sk_attr": i.sk_attr}))
        .collect();
    serde_json::json!({ "indexes": indexes }).to_string()
}

/// Adds index entries for items written before `indexes` were declared.
fn backfill(c: &Connection, tbl: &str, indexes: &[&IndexSpec]) -> StoreResult<()> {
    let mut select = c.prepare("SELECT pk, sk, attrs FROM kv_items WHERE tbl = ?1")?;
    let rows =
        select.query_map([tbl], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
    for row in rows {
        let (pk, sk, attrs) = row?;
        let attrs: Map<String, Value> = serde_json::from_str(&attrs).unwrap_or_default();
        for index in indexes {
            insert_index_entry(c, tbl, index, &pk, &sk, &attrs)?;
        }
    }
    Ok(())
}

fn insert_index_entry(
    c: &Connection,
    tbl: &str,
    index: &IndexSpec,
    pk: &str,
    sk: &str,
    attrs: &Map<String, Value>,
) -> StoreResult<()> {
    let Some(ipk) = attrs.get(&index.pk_attr).and_then(Value::as_str) else { return Ok(()) };
    let isk = index.sk_attr.as_ref().and_then(|a| attrs.get(a)).and_then(Value::as_str).unwrap_or("");
    c.prepare_cached("INSERT OR REPLACE INTO kv_index (tbl, idx, ipk, isk, pk, sk) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
        .execute(params![tbl, index.name, ipk, isk, pk, sk])?;
    Ok(())
}

/// The live version at (pk, sk), if any.
fn live_version(c: &Connection, tbl: &str, pk: &str, sk: &str, now: i64) -> StoreResult<Option<u64>> {
    let v: Option<i64> = c
        .prepare_cached(
            "SELECT version FROM kv_items WHERE tbl = ?1 AND pk = ?2 AND sk = ?3 \
             AND (expires_at IS NULL OR expires_at > ?4)",
        )?
        .query_row(params![tbl, pk, sk, now], |r| r.get(0))
        .optional()?;
    Ok(v.map(|v| u64::try_from(v).unwrap_or(0)))
}

fn check_condition(condition: Condition, live: Option<u64>) -> StoreResult<()> {
    let holds = match condition {
        Condition::None => true,
        Condition::Absent => live.is_none(),
        Condition::Exists => live.is_some(),
        Condition::VersionEquals(v) => live == Some(v),
    };
    if holds {
        Ok(())
    } else {
        Err(StoreError::new(
            StoreErrorKind::ConditionFailed,
            format!("condition {condition:?} failed (live version {live:?})"),
        ))
    }
}

fn remove_item(c: &Connection, tbl: &str, pk: &str, sk: &str) -> StoreResult<()> {
    c.prepare_cached("DELETE FROM kv_index WHERE tbl = ?1 AND pk = ?2 AND sk = ?3")?.execute(params![tbl, pk, sk])?;
    c.prepare_cached("DELETE FROM kv_items WHERE tbl = ?1 AND pk = ?2 AND sk = ?3")?.execute(params![tbl, pk, sk])?;
    Ok(())
}

fn row_to_item(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String, i64, Option<i64>)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn to_item((pk, sk, attrs, version, expires_at): (String, String, String, i64, Option<i64>)) -> StoreResult<Item> {
    let attrs: Map<String, Value> = serde_json::from_str(&attrs)
        .map_err(|e| StoreError::backend(format!("item ({pk}, {sk}) holds malformed JSON"), e))?;
    Ok(Item { pk, sk, attrs, version: u64::try_from(version).unwrap_or(0), expires_at: expires_at.map(Timestamp) })
}

/// Appends the SQL for a sort-key condition on `column` and binds its values.
fn sk_sql(column: &str, cond: &SkCondition, sql: &mut String, binds: &mut Vec<SqlValue>) {
    let mut bind = |sql: &mut String, op: &str, v: &str| {
        binds.push(SqlValue::Text(v.to_owned()));
        sql.push_str(&format!(" AND {column} {op} ?{}", binds.len()));
    };
    match cond {
        SkCondition::Any => {}
        SkCondition::Eq(v) => bind(sql, "=", v),
        SkCondition::Lt(v) => bind(sql, "<", v),
        SkCondition::Le(v) => bind(sql, "<=", v),
        SkCondition::Gt(v) => bind(sql, ">", v),
        SkCondition::Ge(v) => bind(sql, ">=", v),
        SkCondition::Between(lo, hi) => {
            bind(sql, ">=", lo);
            bind(sql, "<=", hi);
        }
        SkCondition::Prefix(p) => {
            bind(sql, ">=", p);
            // U+10FFFF is the largest scalar value: every extension of `p` sorts below `p + U+10FFFF`.
            bind(sql, "<", &format!("{p}\u{10FFFF}"));
        }
    }
}

#[async_trait]
impl Table for SqliteTable {
    fn name(&self) -> &str {
        &self.spec.name
    }

    async fn get(&self, pk: &str, sk: &str) -> StoreResult<Option<Item>> {
        let (tbl, pk, sk) = (self.spec.name.clone(), pk.to_owned(), sk.to_owned());
        let now = self.shared.now().as_millis();
        self.shared
            .read(move |c| {
                let row = c
                    .prepare_cached(
                        "SELECT pk, sk, attrs, version, expires_at FROM kv_items \
                         WHERE tbl = ?1 AND pk = ?2 AND sk = ?3 AND (expires_at IS NULL OR expires_at > ?4)",
                    )?
                    .query_row(params![tbl, pk, sk, now], row_to_item)
                    .optional()?;
                row.map(to_item).transpose()
            })
            .await
    }

    async fn put(&self, put: Put) -> StoreResult<u64> {
        validate_key("pk", &put.pk)?;
        validate_key("sk", &put.sk)?;
        let attrs = serde_json::to_string(&put.attrs).map_err(|e| StoreError::backend("cannot encode item", e))?;
        if attrs.len() + put.pk.len() + put.sk.len() > MAX_ITEM_BYTES {
            return Err(StoreError::invalid(format!("item is {} bytes; the limit is {MAX_ITEM_BYTES}", attrs.len())));
        }
        let spec = self.spec.clone();
        let now = self.shared.now().as_millis();
        self.shared
            .write(move |c| {
                let live = live_version(c, &spec.name, &put.pk, &put.sk, now)?;
                check_condition(put.condition, live)?;
                let version = live.map_or(1, |v| v + 1);
                remove_item(c, &spec.name, &put.pk, &put.sk)?;
                c.prepare_cached(
                    "INSERT INTO kv_items (tbl, pk, sk, attrs, version, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    spec.name,
                    put.pk,
                    put.sk,
                    attrs,
                    i64::try_from(version).unwrap_or(i64::MAX),
                    put.expires_at.map(Timestamp::as_millis)
                ])?;
                for index in &spec.indexes {
                    insert_index_entry(c, &spec.name, index, &put.pk, &put.sk, &put.attrs)?;
                }
                Ok(version)
            })
            .await
    }

    async fn delete(&self, pk: &str, sk: &str, condition: Condition) -> StoreResult<bool> {
        let (tbl, pk, sk) = (self.spec.name.clone(), pk.to_owned(), sk.to_owned());
        let now = self.shared.now().as_millis();
        self.shared
            .write(move |c| {
                let live = live_version(c, &tbl, &pk, &sk, now)?;
                check_condition(condition, live)?;
                remove_item(c, &tbl, &pk, &sk)?;
                Ok(live.is_some())
            })
            .await
    }

    async fn query(&self, query: Query) -> StoreResult<Page> {
        if query.limit == 0 || query.limit > MAX_QUERY_LIMIT {
            return Err(StoreError::invalid(format!("query limit must be 1..={MAX_QUERY_LIMIT}")));
        }
        let index = match &query.index {
            Some(name) => Some(
                self.spec
                    .indexes
                    .iter()
                    .find(|i| &i.name == name)
                    .ok_or_else(|| StoreError::invalid(format!("table {} has no index {name}", self.spec.name)))?
                    .name
                    .clone(),
            ),
            None => None,
        };
        let tbl = self.spec.name.clone();
        let now = self.shared.now().as_millis();
        let (dir, cmp) = if query.reverse { ("DESC", "<") } else { ("ASC", ">") };
        let mut binds: Vec<SqlValue> =
            vec![SqlValue::Text(tbl), SqlValue::Text(query.pk.clone()), SqlValue::Integer(now)];
        let mut sql;
        match &index {
            None => {
                sql = String::from(
                    "SELECT pk, sk, attrs, version, expires_at FROM kv_items \
                     WHERE tbl = ?1 AND pk = ?2 AND (expires_at IS NULL OR expires_at > ?3)",
                );
                sk_sql("sk", &query.sk, &mut sql, &mut binds);
                if let Some(cursor) = &query.cursor {
                    let parts = decode_cursor(cursor, 1)?;
                    binds.push(SqlValue::Text(parts[0].clone()));
                    sql.push_str(&format!(" AND sk {cmp} ?{}", binds.len()));
                }
                sql.push_str(&format!(" ORDER BY sk {dir}"));
            }
            Some(name) => {
                binds.push(SqlValue::Text(name.clone()));
                sql = String::from(
                    "SELECT i.pk, i.sk, i.attrs, i.version, i.expires_at, x.isk FROM kv_index x \
                     JOIN kv_items i ON i.tbl = x.tbl AND i.pk = x.pk AND i.sk = x.sk \
                     WHERE x.tbl = ?1 AND x.ipk = ?2 AND (i.expires_at IS NULL OR i.expires_at > ?3) AND x.idx = ?4",
                );
                sk_sql("x.isk", &query.sk, &mut sql, &mut binds);
                if let Some(cursor) = &query.cursor {
                    let parts = decode_cursor(cursor, 3)?;
                    for p in parts {
                        binds.push(SqlValue::Text(p));
                    }
                    let n = binds.len();
                    sql.push_str(&format!(" AND (x.isk, x.pk, x.sk) {cmp} (?{}, ?{}, ?{})", n - 2, n - 1, n));
                }
                sql.push_str(&format!(" ORDER BY x.isk {dir}, x.pk {dir}, x.sk {dir}"));
            }
        }
        binds.push(SqlValue::Integer(i64::try_from(query.limit + 1).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" LIMIT ?{}", binds.len()));
        let limit = query.limit;
        let indexed = index.is_some();
        self.shared
            .read(move |c| {
                let mut stmt = c.prepare_cached(&sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(binds))?;
                let mut items = Vec::new();
                let mut last_isk = String::new();
                let mut more = false;
                while let Some(r) = rows.next()? {
                    if items.len() == limit {
                        more = true;
                        break;
                    }
                    if indexed {
                        last_isk = r.get(5)?;
                    }
                    items.push(to_item(row_to_item(r)?)?);
                }
                let cursor = match (more, items.last()) {
                    (true, Some(last)) if indexed => Some(encode_cursor(&[&last_isk, &last.pk, &last.sk])),
                    (true, Some(last)) => Some(encode_cursor(&[&last.sk])),
                    _ => None,
                };
                Ok(Page { items, cursor })
            })
            .await
    }

    async fn sweep_expired(&self, limit: usize) -> StoreResult<u64> {
        let tbl = self.spec.name.clone();
        let now = self.shared.now().as_millis();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.shared
            .write(move |c| {
                let keys: Vec<(String, String)> = c
                    .prepare_cached("SELECT pk, sk FROM kv_items WHERE tbl = ?1 AND expires_at <= ?2 LIMIT ?3")?
                    .query_map(params![tbl, now, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                for (pk, sk) in &keys {
                    remove_item(c, &tbl, pk, sk)?;
                }
                Ok(keys.len() as u64)
            })
            .await
    }
}
