//! The DynamoDB-shaped table API.

use async_trait::async_trait;
use base64::Engine as _;
use den_core::Timestamp;
use serde_json::{Map, Value};

use crate::{StoreError, StoreResult};

/// Largest item den stores, the same as DynamoDB's 400 KB item limit.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// Largest page a query returns in one call.
pub const MAX_QUERY_LIMIT: usize = 1000;

/// The declaration of a table: its name and secondary indexes.
///
/// Modules declare their tables once at start; the backend creates whatever
/// is missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    /// Table name, unique in the store: `[a-z0-9_.-]{1,64}`.
    pub name: String,
    /// Secondary indexes, each keyed by attributes of the items.
    pub indexes: Vec<IndexSpec>,
}

impl TableSpec {
    /// A table without secondary indexes.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), indexes: Vec::new() }
    }

    /// Adds a secondary index.
    #[must_use]
    pub fn with_index(mut self, index: IndexSpec) -> Self {
        self.indexes.push(index);
        self
    }
}

/// A secondary index: items are found by the string values of two of their
/// attributes, like a DynamoDB global secondary index.
///
/// An item that lacks the partition attribute, or holds a non-string in it,
/// is not in the index (indexes are sparse). Index keys compare as strings, so
/// store numbers zero-padded when they must sort.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexSpec {
    /// Index name, unique in the table.
    pub name: String,
    /// Attribute holding the index partition key.
    pub pk_attr: String,
    /// Attribute holding the index sort key; items without it sort as "".
    pub sk_attr: Option<String>,
}

impl IndexSpec {
    /// An index on `pk_attr`, sorted by `sk_attr`.
    #[must_use]
    pub fn new(name: impl Into<String>, pk_attr: impl Into<String>, sk_attr: Option<&str>) -> Self {
        Self { name: name.into(), pk_attr: pk_attr.into(), sk_attr: sk_attr.map(str::to_owned) }
    }
}

/// A stored item.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// Partition key.
    pub pk: String,
    /// Sort key.
    pub sk: String,
    /// The attributes, a JSON object.
    pub attrs: Map<String, Value>,
    /// Incremented by every write, starting at 1: the basis of optimistic concurrency.
    pub version: u64,
    /// When the item expires; expired items are invisible to every read.
    pub expires_at: Option<Timestamp>,
}

/// When a write may happen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Condition {
    /// Always.
    #[default]
    None,
    /// Only when no live item has this key.
    Absent,
    /// Only when a live item has this key.
    Exists,
    /// Only when the live item's version equals this one.
    VersionEquals(u64),
}

/// A write of one whole item.
#[derive(Clone, Debug, PartialEq)]
pub struct Put {
    /// Partition key.
    pub pk: String,
    /// Sort key.
    pub sk: String,
    /// The attributes.
    pub attrs: Map<String, Value>,
    /// Expiry time, if the item has a TTL.
    pub expires_at: Option<Timestamp>,
    /// When the write may happen.
    pub condition: Condition,
}

impl Put {
    /// An unconditional write of `attrs` at (pk, sk) without TTL.
    #[must_use]
    pub fn new(pk: impl Into<String>, sk: impl Into<String>, attrs: Map<String, Value>) -> Self {
        Self { pk: pk.into(), sk: sk.into(), attrs, expires_at: None, condition: Condition::None }
    }

    /// Sets the condition.
    #[must_use]
    pub fn condition(mut self, condition: Condition) -> Self {
        self.condition = condition;
        self
    }

    /// Sets the expiry time.
    #[must_use]
    pub fn expires_at(mut self, at: Timestamp) -> Self {
        self.expires_at = Some(at);
        self
    }
}

/// Which sort keys a query selects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SkCondition {
    /// Every sort key.
    #[default]
    Any,
    /// Sort keys equal to this.
    Eq(String),
    /// Sort keys starting with this (`begins_with`).
    Prefix(String),
    /// Sort keys in `[low, high]`, both inclusive (`BETWEEN`).
    Between(String, String),
    /// Sort keys `< s`.
    Lt(String),
    /// Sort keys `<= s`.
    Le(String),
    /// Sort keys `> s`.
    Gt(String),
    /// Sort keys `>= s`.
    Ge(String),
}

/// A query by partition key, on the table or on one of its indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// Index to query; `None` queries the table's own keys.
    pub index: Option<String>,
    /// Partition key (of the table, or of the index).
    pub pk: String,
    /// Sort-key selection.
    pub sk: SkCondition,
    /// Newest (largest sort key) first.
    pub reverse: bool,
    /// Most items in one page, 1..=[`MAX_QUERY_LIMIT`].
    pub limit: usize,
    /// Continue after the page that returned this cursor.
    pub cursor: Option<String>,
}

impl Query {
    /// All items under `pk`, ascending, in pages of 100.
    #[must_use]
    pub fn pk(pk: impl Into<String>) -> Self {
        Self { index: None, pk: pk.into(), sk: SkCondition::Any, reverse: false, limit: 100, cursor: None }
    }

    /// Queries index `name` instead of the table's keys.
    #[must_use]
    pub fn on_index(mut self, name: impl Into<String>) -> Self {
        self.index = Some(name.into());
        self
    }

    /// Selects sort keys.
    #[must_use]
    pub fn sk(mut self, sk: SkCondition) -> Self {
        self.sk = sk;
        self
    }

    /// Largest sort key first.
    #[must_use]
    pub fn reverse(mut self) -> Self {
        self.reverse = true;
        self
    }

    /// Page size.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Continues from a cursor.
    #[must_use]
    pub fn cursor(mut self, cursor: Option<String>) -> Self {
        self.cursor = cursor;
        self
    }
}

/// One page of query results.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    /// Items in the requested order.
    pub items: Vec<Item>,
    /// Present when more items may follow: pass it back in [`Query::cursor`].
    pub cursor: Option<String>,
}

/// A table with DynamoDB semantics: items keyed by (pk, sk) holding JSON
/// attributes, conditional writes, queries by partition key, secondary
/// indexes and per-item TTL.
///
/// Expired items are invisible to every read and to conditions, whether or
/// not the backend has deleted them yet; [`Table::sweep_expired`] deletes them.
#[async_trait]
pub trait Table: Send + Sync + std::fmt::Debug {
    /// The table's name.
    fn name(&self) -> &str;

    /// The live item at (pk, sk).
    async fn get(&self, pk: &str, sk: &str) -> StoreResult<Option<Item>>;

    /// Writes an item if its condition holds; returns the new version.
    /// A failed condition is an error of kind `ConditionFailed`.
    async fn put(&self, put: Put) -> StoreResult<u64>;

    /// Deletes the item at (pk, sk) if the condition holds; returns whether a
    /// live item was deleted.
    async fn delete(&self, pk: &str, sk: &str, condition: Condition) -> StoreResult<bool>;

    /// One page of a query.
    async fn query(&self, query: Query) -> StoreResult<Page>;

    /// Deletes up to `limit` expired items; returns how many were deleted.
    async fn sweep_expired(&self, limit: usize) -> StoreResult<u64>;
}

pub(crate) fn validate_table_name(name: &str) -> StoreResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(crate::StoreError::invalid(format!("table name {name:?} must match [a-z0-9_.-]{{1,64}}")))
    }
}

pub(crate) fn validate_key(what: &str, key: &str) -> StoreResult<()> {
    if key.len() > 1024 {
        return Err(crate::StoreError::invalid(format!("{what} is {} bytes; at most 1024", key.len())));
    }
    Ok(())
}

/// An opaque query cursor made of key parts.
pub(crate) fn encode_cursor(parts: &[&str]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(parts).unwrap_or_default())
}

/// The key parts of a cursor made by [`encode_cursor`], `len` of them.
pub(crate) fn decode_cursor(cursor: &str, len: usize) -> StoreResult<Vec<String>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Vec<String>>(&bytes).ok())
        .filter(|parts| parts.len() == len)
        .ok_or_else(|| StoreError::invalid("the query cursor is malformed or belongs to another query"))
}
