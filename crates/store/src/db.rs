//! The thin layer both backends share: values, rows, transactions and SQL dialect rendering.
//!
//! Every query in this crate is written once, with `$1`-style placeholders and a few
//! `{token}`s for the places where SQLite and PostgreSQL differ; [`render`] turns it into
//! either dialect. That is what keeps "the same behaviour on both backends" true by
//! construction rather than by two copies kept in step by hand.

use crate::{Result, StoreError};
use async_trait::async_trait;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    I64(i64),
    Text(String),
    Bytes(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::I64(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// One result row; accessors turn a type mismatch into an internal error, not a panic.
#[derive(Clone, Debug)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn get(&self, i: usize) -> Result<&Value> {
        self.0.get(i).ok_or_else(|| StoreError::Internal(format!("row has no column {i}")))
    }
    pub fn i64(&self, i: usize) -> Result<i64> {
        match self.get(i)? {
            Value::I64(v) => Ok(*v),
            other => Err(StoreError::Internal(format!("column {i}: expected an integer, got {other:?}"))),
        }
    }
    pub fn opt_i64(&self, i: usize) -> Result<Option<i64>> {
        match self.get(i)? {
            Value::Null => Ok(None),
            _ => self.i64(i).map(Some),
        }
    }
    pub fn text(&self, i: usize) -> Result<String> {
        match self.get(i)? {
            Value::Text(v) => Ok(v.clone()),
            other => Err(StoreError::Internal(format!("column {i}: expected text, got {other:?}"))),
        }
    }
    pub fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.get(i)? {
            Value::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }
    /// A text column holding an enum's name, read by its `parse`. A name this version does
    /// not know (a newer version wrote it, or a bug did) is an error naming it: `what` says
    /// whose it is (`firing outcome`).
    pub fn named<T>(&self, i: usize, what: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
        let name = self.text(i)?;
        parse(&name).ok_or_else(|| {
            StoreError::Internal(format!("the store holds {what} `{name}`, which this version does not know"))
        })
    }
    pub fn opt_named<T>(&self, i: usize, what: &str, parse: fn(&str) -> Option<T>) -> Result<Option<T>> {
        match self.get(i)? {
            Value::Null => Ok(None),
            _ => self.named(i, what, parse).map(Some),
        }
    }
    pub fn bytes(&self, i: usize) -> Result<Vec<u8>> {
        match self.get(i)? {
            Value::Bytes(v) => Ok(v.clone()),
            Value::Text(v) => Ok(v.clone().into_bytes()),
            other => Err(StoreError::Internal(format!("column {i}: expected bytes, got {other:?}"))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Renders a query written for both backends into one dialect.
///
/// Tokens: `{now}` is the store's clock in milliseconds since the epoch (the one clock every
/// lease, firing and timeout is decided by); `{skip_locked}`, `{for_update}` and
/// `{for_share}` are row locks, which SQLite does not need because its writers are
/// serialised by `BEGIN IMMEDIATE`; `{blob}` is the binary type's name.
pub fn render(dialect: Dialect, sql: &str) -> String {
    match dialect {
        Dialect::Postgres => sql
            .replace("{now}", "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT")
            .replace("{skip_locked}", "FOR UPDATE SKIP LOCKED")
            .replace("{for_update}", "FOR UPDATE")
            .replace("{for_share}", "FOR SHARE")
            .replace("{blob}", "BYTEA"),
        Dialect::Sqlite => {
            let sql = sql
                .replace("{now}", "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)")
                .replace("{skip_locked}", "")
                .replace("{for_update}", "")
                .replace("{for_share}", "")
                .replace("{blob}", "BLOB");
            // `$1` is a named parameter in SQLite, numbered by first appearance; `?1` is
            // positional, which is what the queries mean.
            let mut out = String::with_capacity(sql.len());
            let mut chars = sql.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                    out.push('?');
                } else {
                    out.push(c);
                }
            }
            out
        }
    }
}

/// A transaction (or, for [`Tx::autocommit`] handles, a plain connection).
#[async_trait]
pub trait Tx: Send {
    fn dialect(&self) -> Dialect;
    /// Runs a query written for both backends (see [`render`]) and returns its rows.
    async fn query(&mut self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>>;
    /// Runs a statement and returns the number of rows it changed.
    async fn execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64>;
    /// Runs several statements without parameters (schema migrations).
    async fn batch(&mut self, sql: &str) -> Result<()>;
    async fn commit(self: Box<Self>) -> Result<()>;
    /// Ends the transaction without keeping its changes. Dropping a transaction also rolls it
    /// back, but later (PostgreSQL row locks would be held until then), so paths that end a
    /// transaction early call this.
    async fn rollback(self: Box<Self>) -> Result<()>;
}

/// Helpers on top of [`Tx`].
pub async fn query_one(tx: &mut dyn Tx, sql: &str, params: Vec<Value>) -> Result<Option<Row>> {
    Ok(tx.query(sql, params).await?.into_iter().next())
}
