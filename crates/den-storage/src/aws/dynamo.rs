//! den tables as namespaces of one DynamoDB table; the layout is described
//! in the [module above](super).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use den_core::{Clock, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{INDEX_SLOTS, aws_error};
use crate::table::{MAX_ITEM_BYTES, MAX_QUERY_LIMIT, decode_cursor, encode_cursor, validate_key, validate_table_name};
use crate::{
    Condition, IndexSpec, Item, Page, Put, Query, SkCondition, StoreError, StoreErrorKind, StoreResult, Table,
    TableSpec,
};

/// Partition key of the registry items that map each den table's indexes to GSI slots.
const REGISTRY_PK: &str = "__den#tables";
/// Separates an index value from the item key in a GSI sort key; below every
/// printable character, so items sort by value first.
const SEP: char = '\u{1}';
/// Just above [`SEP`]: `x` + `AFTER` bounds every encoded value equal to `x`.
const AFTER: char = '\u{2}';

pub(crate) type Attrs = HashMap<String, AttributeValue>;

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(crate) fn get_s<'a>(item: &'a Attrs, name: &str) -> Option<&'a str> {
    item.get(name).and_then(|v| v.as_s().ok()).map(String::as_str)
}

pub(crate) fn get_n(item: &Attrs, name: &str) -> Option<i64> {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

pub(crate) fn is_condition_failure<E: ProvideErrorMetadata>(err: &E) -> bool {
    err.code() == Some("ConditionalCheckFailedException")
}

/// An index's place in the physical table.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Slot {
    slot: usize,
    pk_attr: String,
    sk_attr: Option<String>,
}

/// One den table in the shared DynamoDB table.
#[derive(Debug)]
pub struct DynamoTable {
    client: aws_sdk_dynamodb::Client,
    physical: String,
    name: String,
    indexes: BTreeMap<String, Slot>,
    clock: Arc<dyn Clock>,
}

impl DynamoTable {
    /// Opens den table `spec.name`, assigning GSI slots to new indexes and
    /// back-filling them over the items already stored.
    pub async fn open(
        client: aws_sdk_dynamodb::Client,
        physical: &str,
        spec: TableSpec,
        clock: Arc<dyn Clock>,
    ) -> StoreResult<Self> {
        validate_table_name(&spec.name)?;
        let mut table =
            Self { client, physical: physical.to_owned(), name: spec.name.clone(), indexes: BTreeMap::new(), clock };
        let added = table.register_indexes(&spec.indexes).await?;
        if !added.is_empty() {
            table.backfill(&added).await?;
        }
        Ok(table)
    }

    /// Merges `wanted` into the stored registry (optimistic concurrency on
    /// its version); returns the index names this call added to a table that
    /// already existed.
    async fn register_indexes(&mut self, wanted: &[IndexSpec]) -> StoreResult<Vec<String>> {
        for _ in 0..10 {
            let current = self
                .client
                .get_item()
                .table_name(&self.physical)
                .key("pk", s(REGISTRY_PK))
                .key("sk", s(&self.name))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| aws_error("GetItem", e))?
                .item;
            let (mut map, version, existed) = match &current {
                Some(item) => {
                    let map: BTreeMap<String, Slot> = serde_json::from_str(get_s(item, "idx").unwrap_or("{}"))
                        .map_err(|e| StoreError::backend(format!("index registry of {}", self.name), e))?;
                    (map, get_n(item, "v").unwrap_or(0), true)
                }
                None => (BTreeMap::new(), 0, false),
            };
            let mut added = Vec::new();
            for index in wanted {
                let fits =
                    map.get(&index.name).is_some_and(|s| s.pk_attr == index.pk_attr && s.sk_attr == index.sk_attr);
                if fits {
                    continue;
                }
                let slot = match map.get(&index.name) {
                    Some(old) => old.slot,
                    None => (1..=INDEX_SLOTS).find(|slot| map.values().all(|s| s.slot != *slot)).ok_or_else(|| {
                        StoreError::invalid(format!(
                            "table {} declares more than {INDEX_SLOTS} indexes, the most the DynamoDB backend has",
                            self.name
                        ))
                    })?,
                };
                map.insert(
                    index.name.clone(),
                    Slot { slot, pk_attr: index.pk_attr.clone(), sk_attr: index.sk_attr.clone() },
                );
                added.push(index.name.clone());
            }
            if added.is_empty() && existed {
                self.indexes = map;
                return Ok(Vec::new());
            }
            let json = serde_json::to_string(&map).unwrap_or_else(|_| "{}".into());
            let mut put = self
                .client
                .put_item()
                .table_name(&self.physical)
                .item("pk", s(REGISTRY_PK))
                .item("sk", s(&self.name))
                .item("idx", s(json))
                .item("v", n(version + 1));
            put = if existed {
                put.condition_expression("v = :v").expression_attribute_values(":v", n(version))
            } else {
                put.condition_expression("attribute_not_exists(pk)")
            };
            match put.send().await {
                Ok(_) => {
                    self.indexes = map;
                    return Ok(if existed { added } else { Vec::new() });
                }
                Err(e) if is_condition_failure(&e) => continue,
                Err(e) => return Err(aws_error("PutItem", e)),
            }
        }
        Err(StoreError::new(StoreErrorKind::Backend, format!("index registry of {} kept changing", self.name)))
    }

    /// Writes the GSI keys of `names` on every item of this den table.
    async fn backfill(&self, names: &[String]) -> StoreResult<()> {
        let mut start: Option<Attrs> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.physical)
                .filter_expression("begins_with(pk, :prefix)")
                .expression_attribute_values(":prefix", s(self.prefix()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| aws_error("Scan", e))?;
            for raw in out.items() {
                let Ok(item) = self.parse(raw) else { continue };
                let mut update = self
                    .client
                    .update_item()
                    .table_name(&self.physical)
                    .key("pk", raw.get("pk").cloned().unwrap_or_else(|| s("")))
                    .key("sk", raw.get("sk").cloned().unwrap_or_else(|| s("")))
                    .condition_expression("attribute_exists(pk)");
                let mut sets = Vec::new();
                for name in names {
                    let Some(slot) = self.indexes.get(name) else { continue };
                    if let Some((gpk, gsk)) = self.index_keys(name, slot, &item.pk, &item.sk, &item.attrs) {
                        sets.push(format!("g{0}pk = :g{0}pk, g{0}sk = :g{0}sk", slot.slot));
                        update = update
                            .expression_attribute_values(format!(":g{}pk", slot.slot), s(gpk))
                            .expression_attribute_values(format!(":g{}sk", slot.slot), s(gsk));
                    }
                }
                if sets.is_empty() {
                    continue;
                }
                match update.update_expression(format!("SET {}", sets.join(", "))).send().await {
                    Ok(_) => {}
                    Err(e) if is_condition_failure(&e) => {}
                    Err(e) => return Err(aws_error("UpdateItem", e)),
                }
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(()),
            }
        }
    }

    fn prefix(&self) -> String {
        format!("{}#", self.name)
    }

    fn physical_pk(&self, pk: &str) -> String {
        format!("{}#{pk}", self.name)
    }

    /// Stored sort key: prefixed because DynamoDB refuses empty key strings
    /// and den allows an empty sort key; the prefix keeps the order.
    fn physical_sk(sk: &str) -> String {
        format!("#{sk}")
    }

    /// The GSI keys of an item for one index, when the item is in it.
    fn index_keys(
        &self,
        name: &str,
        slot: &Slot,
        pk: &str,
        sk: &str,
        attrs: &Map<String, Value>,
    ) -> Option<(String, String)> {
        let value = attrs.get(&slot.pk_attr)?.as_str()?;
        let sort = slot.sk_attr.as_ref().and_then(|a| attrs.get(a)).and_then(Value::as_str).unwrap_or("");
        Some((format!("{}#{name}#{value}", self.name), format!("{sort}{SEP}{pk}{SEP}{sk}")))
    }

    fn parse(&self, raw: &Attrs) -> StoreResult<Item> {
        let bad = |what: &str| StoreError::new(StoreErrorKind::Backend, format!("stored item has no valid {what}"));
        let pk = get_s(raw, "pk").and_then(|p| p.strip_prefix(&self.prefix())).ok_or_else(|| bad("pk"))?;
        let sk = get_s(raw, "sk").and_then(|p| p.strip_prefix('#')).ok_or_else(|| bad("sk"))?;
        let attrs: Map<String, Value> = serde_json::from_str(get_s(raw, "a").unwrap_or("{}"))
            .map_err(|e| StoreError::backend(format!("item ({pk}, {sk}) holds malformed JSON"), e))?;
        Ok(Item {
            pk: pk.to_owned(),
            sk: sk.to_owned(),
            attrs,
            version: u64::try_from(get_n(raw, "v").unwrap_or(0)).unwrap_or(0),
            expires_at: get_n(raw, "exp").map(Timestamp),
        })
    }

    fn live(&self, raw: &Attrs) -> bool {
        get_n(raw, "exp").is_none_or(|exp| exp > self.clock.now().0)
    }

    fn encoded_attrs(put: &Put) -> StoreResult<String> {
        validate_key("pk", &put.pk)?;
        validate_key("sk", &put.sk)?;
        let attrs = serde_json::to_string(&put.attrs).map_err(|e| StoreError::backend("attributes", e))?;
        if attrs.len() + put.pk.len() + put.sk.len() > MAX_ITEM_BYTES {
            return Err(StoreError::invalid(format!("item is {} bytes; the limit is {MAX_ITEM_BYTES}", attrs.len())));
        }
        Ok(attrs)
    }

    /// Replaces the whole item with version 1, if `condition` holds.
    async fn put_fresh(&self, put: &Put, attrs: &str, condition: &str) -> StoreResult<Option<u64>> {
        let mut req = self
            .client
            .put_item()
            .table_name(&self.physical)
            .item("pk", s(self.physical_pk(&put.pk)))
            .item("sk", s(Self::physical_sk(&put.sk)))
            .item("a", s(attrs))
            .item("v", n(1))
            .condition_expression(condition)
            .expression_attribute_names("#exp", "exp")
            .expression_attribute_values(":now", n(self.clock.now().0));
        if let Some(at) = put.expires_at {
            req = req.item("exp", n(at.0)).item("ttl", n(at.0.div_euclid(1000) + 1));
        }
        for (name, slot) in &self.indexes {
            if let Some((gpk, gsk)) = self.index_keys(name, slot, &put.pk, &put.sk, &put.attrs) {
                req = req.item(format!("g{}pk", slot.slot), s(gpk)).item(format!("g{}sk", slot.slot), s(gsk));
            }
        }
        match req.send().await {
            Ok(_) => Ok(Some(1)),
            Err(e) if is_condition_failure(&e) => Ok(None),
            Err(e) => Err(put_error(e)),
        }
    }

    /// Updates the item in place, bumping its version, if `condition` holds.
    async fn put_update(
        &self,
        put: &Put,
        attrs: &str,
        condition: &str,
        version: Option<u64>,
    ) -> StoreResult<Option<u64>> {
        let mut sets = vec!["a = :a".to_owned(), "v = if_not_exists(v, :zero) + :one".to_owned()];
        let mut removes = Vec::new();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.physical)
            .key("pk", s(self.physical_pk(&put.pk)))
            .key("sk", s(Self::physical_sk(&put.sk)))
            .condition_expression(condition)
            .expression_attribute_names("#exp", "exp")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":a", s(attrs))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":now", n(self.clock.now().0))
            .return_values(ReturnValue::UpdatedNew);
        if let Some(v) = version {
            req = req.expression_attribute_values(":ver", n(v));
        }
        match put.expires_at {
            Some(at) => {
                sets.push("#exp = :exp, #ttl = :ttl".into());
                req = req
                    .expression_attribute_values(":exp", n(at.0))
                    .expression_attribute_values(":ttl", n(at.0.div_euclid(1000) + 1));
            }
            None => removes.push("#exp, #ttl".to_owned()),
        }
        for (name, slot) in &self.indexes {
            let i = slot.slot;
            match self.index_keys(name, slot, &put.pk, &put.sk, &put.attrs) {
                Some((gpk, gsk)) => {
                    sets.push(format!("g{i}pk = :g{i}pk, g{i}sk = :g{i}sk"));
                    req = req
                        .expression_attribute_values(format!(":g{i}pk"), s(gpk))
                        .expression_attribute_values(format!(":g{i}sk"), s(gsk));
                }
                None => removes.push(format!("g{i}pk, g{i}sk")),
            }
        }
        let mut expression = format!("SET {}", sets.join(", "));
        if !removes.is_empty() {
            expression.push_str(&format!(" REMOVE {}", removes.join(", ")));
        }
        match req.update_expression(expression).send().await {
            Ok(out) => {
                let v = out.attributes.as_ref().and_then(|a| get_n(a, "v")).unwrap_or(1);
                Ok(Some(u64::try_from(v).unwrap_or(1)))
            }
            Err(e) if is_condition_failure(&e) => Ok(None),
            Err(e) => Err(put_error(e)),
        }
    }

    fn condition_failed(&self, pk: &str, sk: &str) -> StoreError {
        StoreError::new(StoreErrorKind::ConditionFailed, format!("condition failed for ({pk}, {sk}) in {}", self.name))
    }
}

/// A write DynamoDB refused as too large is the caller's error, said plainly.
fn put_error<E>(e: E) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if e.code() == Some("ValidationException") && e.message().is_some_and(|m| m.contains("size")) {
        StoreError::invalid(format!("item is over DynamoDB's 400 KB item size limit: {}", e.message().unwrap_or("")))
    } else {
        aws_error("write", e)
    }
}

/// Live: no expiry, or an expiry still ahead.
const LIVE: &str = "(attribute_not_exists(#exp) OR #exp > :now)";

#[async_trait]
impl Table for DynamoTable {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self, pk: &str, sk: &str) -> StoreResult<Option<Item>> {
        validate_key("pk", pk)?;
        validate_key("sk", sk)?;
        let out = self
            .client
            .get_item()
            .table_name(&self.physical)
            .key("pk", s(self.physical_pk(pk)))
            .key("sk", s(Self::physical_sk(sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("GetItem", e))?;
        match out.item {
            Some(raw) if self.live(&raw) => Ok(Some(self.parse(&raw)?)),
            _ => Ok(None),
        }
    }

    async fn put(&self, put: Put) -> StoreResult<u64> {
        let attrs = Self::encoded_attrs(&put)?;
        let written = match put.condition {
            Condition::Absent => self.put_fresh(&put, &attrs, "attribute_not_exists(v) OR #exp <= :now").await?,
            Condition::Exists => {
                self.put_update(&put, &attrs, &format!("attribute_exists(v) AND {LIVE}"), None).await?
            }
            Condition::VersionEquals(v) => {
                self.put_update(&put, &attrs, &format!("v = :ver AND {LIVE}"), Some(v)).await?
            }
            Condition::None => {
                // Update a live or missing item in place; an expired one that
                // DynamoDB has not deleted yet is replaced and starts over.
                let mut written = None;
                for _ in 0..5 {
                    let cond = format!("attribute_not_exists(v) OR {LIVE}");
                    written = self.put_update(&put, &attrs, &cond, None).await?;
                    if written.is_some() {
                        break;
                    }
                    written = self.put_fresh(&put, &attrs, "#exp <= :now").await?;
                    if written.is_some() {
                        break;
                    }
                }
                Some(written.ok_or_else(|| {
                    StoreError::new(StoreErrorKind::Backend, format!("({}, {}) kept changing", put.pk, put.sk))
                })?)
            }
        };
        written.ok_or_else(|| self.condition_failed(&put.pk, &put.sk))
    }

    async fn delete(&self, pk: &str, sk: &str, condition: Condition) -> StoreResult<bool> {
        validate_key("pk", pk)?;
        validate_key("sk", sk)?;
        let mut req = self
            .client
            .delete_item()
            .table_name(&self.physical)
            .key("pk", s(self.physical_pk(pk)))
            .key("sk", s(Self::physical_sk(sk)))
            .return_values(ReturnValue::AllOld);
        let expression = match condition {
            Condition::None => None,
            Condition::Absent => Some("attribute_not_exists(v) OR #exp <= :now".to_owned()),
            Condition::Exists => Some(format!("attribute_exists(v) AND {LIVE}")),
            Condition::VersionEquals(v) => {
                req = req.expression_attribute_values(":ver", n(v));
                Some(format!("v = :ver AND {LIVE}"))
            }
        };
        if let Some(expression) = expression {
            req = req
                .condition_expression(expression)
                .expression_attribute_names("#exp", "exp")
                .expression_attribute_values(":now", n(self.clock.now().0));
        }
        match req.send().await {
            Ok(out) => Ok(out.attributes.as_ref().is_some_and(|old| !old.is_empty() && self.live(old))),
            Err(e) if is_condition_failure(&e) => Err(self.condition_failed(pk, sk)),
            Err(e) => Err(aws_error("DeleteItem", e)),
        }
    }

    async fn query(&self, query: Query) -> StoreResult<Page> {
        if query.limit == 0 || query.limit > MAX_QUERY_LIMIT {
            return Err(StoreError::invalid(format!("query limit must be 1..={MAX_QUERY_LIMIT}")));
        }
        validate_key("pk", &query.pk)?;
        let (index, key_pk, key_sk, pk_value) = match &query.index {
            None => (None, "pk".to_owned(), "sk".to_owned(), self.physical_pk(&query.pk)),
            Some(name) => {
                let slot = self
                    .indexes
                    .get(name)
                    .ok_or_else(|| StoreError::invalid(format!("table {} has no index {name:?}", self.name)))?;
                let i = slot.slot;
                (
                    Some(format!("gsi{i}")),
                    format!("g{i}pk"),
                    format!("g{i}sk"),
                    format!("{}#{name}#{}", self.name, query.pk),
                )
            }
        };
        let on_index = index.is_some();
        // Sort-key bounds in stored form: table sort keys carry a '#' prefix,
        // index sort keys are `value SEP pk SEP sk`.
        let table_sk = |v: &str| Self::physical_sk(v);
        let (sk_expr, bounds): (Option<&str>, Vec<String>) = match &query.sk {
            SkCondition::Any => (None, vec![]),
            SkCondition::Prefix(p) if p.is_empty() => (None, vec![]),
            SkCondition::Eq(v) if on_index => {
                (Some("#sk BETWEEN :b0 AND :b1"), vec![format!("{v}{SEP}"), format!("{v}{AFTER}")])
            }
            SkCondition::Eq(v) => (Some("#sk = :b0"), vec![table_sk(v)]),
            SkCondition::Prefix(p) => {
                (Some("begins_with(#sk, :b0)"), vec![if on_index { p.clone() } else { table_sk(p) }])
            }
            SkCondition::Between(lo, hi) => {
                if lo > hi {
                    return Ok(Page { items: vec![], cursor: None });
                }
                if on_index {
                    (Some("#sk BETWEEN :b0 AND :b1"), vec![lo.clone(), format!("{hi}{AFTER}")])
                } else {
                    (Some("#sk BETWEEN :b0 AND :b1"), vec![table_sk(lo), table_sk(hi)])
                }
            }
            SkCondition::Lt(v) => (Some("#sk < :b0"), vec![if on_index { v.clone() } else { table_sk(v) }]),
            SkCondition::Le(v) if on_index => (Some("#sk < :b0"), vec![format!("{v}{AFTER}")]),
            SkCondition::Le(v) => (Some("#sk <= :b0"), vec![table_sk(v)]),
            SkCondition::Gt(v) if on_index => (Some("#sk > :b0"), vec![format!("{v}{AFTER}")]),
            SkCondition::Gt(v) => (Some("#sk > :b0"), vec![table_sk(v)]),
            SkCondition::Ge(v) => (Some("#sk >= :b0"), vec![if on_index { v.clone() } else { table_sk(v) }]),
        };
        let mut start = match &query.cursor {
            None => None,
            Some(cursor) => {
                let parts = decode_cursor(cursor, if on_index { 4 } else { 2 })?;
                let belongs = if on_index { parts[2] == pk_value } else { parts[0] == pk_value };
                if !belongs {
                    return Err(StoreError::invalid("the query cursor is malformed or belongs to another query"));
                }
                let mut key: Attrs = HashMap::from([("pk".into(), s(&parts[0])), ("sk".into(), s(&parts[1]))]);
                if on_index {
                    key.insert(key_pk.clone(), s(&parts[2]));
                    key.insert(key_sk.clone(), s(&parts[3]));
                }
                Some(key)
            }
        };
        let mut items = Vec::new();
        let cursor = loop {
            let remaining = query.limit - items.len();
            let mut req = self
                .client
                .query()
                .table_name(&self.physical)
                .set_index_name(index.clone())
                .consistent_read(!on_index)
                .key_condition_expression(match sk_expr {
                    Some(e) => format!("#pk = :pk AND {e}"),
                    None => "#pk = :pk".to_owned(),
                })
                .filter_expression(LIVE)
                .expression_attribute_names("#pk", &key_pk)
                .expression_attribute_names("#exp", "exp")
                .expression_attribute_values(":pk", s(&pk_value))
                .expression_attribute_values(":now", n(self.clock.now().0))
                .scan_index_forward(!query.reverse)
                .limit(i32::try_from(remaining).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take());
            if sk_expr.is_some() {
                req = req.expression_attribute_names("#sk", &key_sk);
            }
            for (i, b) in bounds.iter().enumerate() {
                req = req.expression_attribute_values(format!(":b{i}"), s(b));
            }
            let out = req.send().await.map_err(|e| aws_error("Query", e))?;
            for raw in out.items() {
                items.push(self.parse(raw)?);
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => {
                    if items.len() >= query.limit {
                        let part = |name: &str| get_s(&key, name).unwrap_or_default().to_owned();
                        let parts: Vec<String> = if on_index {
                            vec![part("pk"), part("sk"), part(&key_pk), part(&key_sk)]
                        } else {
                            vec![part("pk"), part("sk")]
                        };
                        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
                        break Some(encode_cursor(&refs));
                    }
                    start = Some(key);
                }
                _ => break None,
            }
        };
        Ok(Page { items, cursor })
    }

    async fn sweep_expired(&self, limit: usize) -> StoreResult<u64> {
        let mut deleted = 0u64;
        let mut start: Option<Attrs> = None;
        let now = self.clock.now().0;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.physical)
                .filter_expression("begins_with(pk, :prefix) AND #exp <= :now")
                .projection_expression("pk, sk")
                .expression_attribute_names("#exp", "exp")
                .expression_attribute_values(":prefix", s(self.prefix()))
                .expression_attribute_values(":now", n(now))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| aws_error("Scan", e))?;
            for key in out.items() {
                if usize::try_from(deleted).unwrap_or(usize::MAX) >= limit {
                    return Ok(deleted);
                }
                let res = self
                    .client
                    .delete_item()
                    .table_name(&self.physical)
                    .key("pk", key.get("pk").cloned().unwrap_or_else(|| s("")))
                    .key("sk", key.get("sk").cloned().unwrap_or_else(|| s("")))
                    .condition_expression("#exp <= :now")
                    .expression_attribute_names("#exp", "exp")
                    .expression_attribute_values(":now", n(now))
                    .send()
                    .await;
                match res {
                    Ok(_) => deleted += 1,
                    Err(e) if is_condition_failure(&e) => {}
                    Err(e) => return Err(aws_error("DeleteItem", e)),
                }
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(deleted),
            }
        }
    }
}
