//! What schedules and listeners share as definitions: a row found by id or name, created,
//! replaced and deleted in a write transaction each, and listed by name.
//!
//! A kind of definition says only what is its own ([`Definitions`]): its table, the noun its
//! errors use, its columns and row parser, and the rows that go with it. The SQL for its own
//! fields stays in its module, and so does anything it does inside the transaction between
//! finding the row and changing it (a schedule withdraws the firings it claimed ahead).

use crate::db::{query_one, Row, Tx, Value};
use crate::{Result, Store, StoreError};
use std::collections::BTreeMap;

/// One kind of definition.
pub(crate) struct Definitions<T> {
    pub table: &'static str,
    /// What the kind is called in its errors: "no schedule ...", "a schedule named ...".
    pub noun: &'static str,
    /// Every column, in the order `parse` reads them.
    pub columns: &'static str,
    pub parse: fn(&Row) -> Result<T>,
    /// The statements that delete the rows belonging to a definition (`$1` is its id), run
    /// before its own row is deleted.
    pub owned: &'static [&'static str],
}

impl<T> Definitions<T> {
    /// The definition `reference` names (its id or its name), locked for the transaction if
    /// `lock`.
    async fn find_in(&self, tx: &mut dyn Tx, reference: &str, lock: bool) -> Result<Option<T>> {
        let sql = format!(
            "SELECT {} FROM {} WHERE id = $1 OR name = $1 {}",
            self.columns,
            self.table,
            if lock { "{for_update}" } else { "" }
        );
        query_one(tx, &sql, vec![reference.into()]).await?.as_ref().map(self.parse).transpose()
    }

    pub async fn get(&self, store: &Store, reference: &str) -> Result<Option<T>> {
        let mut c = store.read().await?;
        self.find_in(c.as_mut(), reference, false).await
    }

    pub async fn list(&self, store: &Store) -> Result<Vec<T>> {
        store.read_rows(&format!("SELECT {} FROM {} ORDER BY name", self.columns, self.table), vec![], self.parse).await
    }

    /// Inserts a definition under a new id and returns it. `values` is the SQL of the
    /// `VALUES` list, every column in order, in which `$1` is the new id, `$2` the name and
    /// `$3` on the other `fields`. A name already taken is a conflict that says so.
    pub async fn insert(&self, store: &Store, name: &str, values: &str, fields: Vec<Value>) -> Result<T> {
        let id = uuid::Uuid::now_v7().to_string();
        let mut params = vec![id.into(), name.into()];
        params.extend(fields);
        let mut tx = store.begin_write().await?;
        let row = query_one(
            tx.as_mut(),
            &format!(
                "INSERT INTO {table} ({columns}) VALUES ({values})
                 RETURNING {columns}",
                table = self.table,
                columns = self.columns
            ),
            params,
        )
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => {
                StoreError::Conflict(format!("a {} named `{name}` already exists; pick another name", self.noun))
            }
            other => other,
        })?
        .ok_or_else(|| StoreError::Internal(format!("{} insert returned no row", self.noun)))?;
        let row = (self.parse)(&row)?;
        tx.commit().await?;
        Ok(row)
    }

    /// Begins a write transaction holding the definition `reference` names locked, or says
    /// there is none (rolling the transaction back at once, not when it is dropped).
    pub async fn lock(&self, store: &Store, reference: &str) -> Result<(Box<dyn Tx>, T)> {
        let mut tx = store.begin_write().await?;
        let Some(old) = self.find_in(tx.as_mut(), reference, true).await? else {
            tx.rollback().await?;
            return Err(StoreError::NotFound(format!("no {} `{reference}`", self.noun)));
        };
        Ok((tx, old))
    }

    /// Changes the definition `id` in `tx` (from [`Definitions::lock`]) and commits: `set`
    /// is the SQL of the `SET` list, in which `$1` is the id and `$2` on the `fields`.
    pub async fn update(&self, mut tx: Box<dyn Tx>, id: &str, set: &str, fields: Vec<Value>) -> Result<T> {
        let mut params = vec![id.into()];
        params.extend(fields);
        let row = query_one(
            tx.as_mut(),
            &format!("UPDATE {} SET {set} WHERE id = $1 RETURNING {}", self.table, self.columns),
            params,
        )
        .await?
        .ok_or_else(|| StoreError::Internal(format!("{} update returned no row", self.noun)))?;
        let row = (self.parse)(&row)?;
        tx.commit().await?;
        Ok(row)
    }

    /// Deletes the definition `id` with the rows it owns in `tx` (from
    /// [`Definitions::lock`]) and commits.
    pub async fn delete(&self, mut tx: Box<dyn Tx>, id: &str) -> Result<()> {
        let own = format!("DELETE FROM {} WHERE id = $1", self.table);
        for sql in self.owned.iter().copied().chain([own.as_str()]) {
            tx.execute(sql, vec![id.into()]).await?;
        }
        tx.commit().await
    }
}

/// A definition's job as stored, the columns `sandbox`, `job` and `params` (a JSON object of
/// strings), which both kinds have in this order; a kind's own columns follow.
pub(crate) fn job_fields(sandbox: &str, job: &str, params: &BTreeMap<String, String>) -> Result<Vec<Value>> {
    let params = serde_json::to_string(params).map_err(|e| StoreError::Internal(e.to_string()))?;
    Ok(vec![sandbox.into(), job.into(), params.into()])
}

/// A stored definition's job parameters, read back; `noun` says whose they are.
pub(crate) fn stored_params(r: &Row, i: usize, noun: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(&r.text(i)?)
        .map_err(|e| StoreError::Internal(format!("stored {noun} params are invalid: {e}")))
}

/// Who owns a schedule or listener: whose rights its jobs start with (checked again at each
/// firing or event through [`Store::rights_of`]). Stored as the columns `owner` and
/// `owner_name`, which both kinds have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// `token:ID` or `user:ID`.
    pub acts_as: String,
    /// `token:NAME` or `user:NAME`, as shown.
    pub label: String,
}

impl Owner {
    /// The owner in columns `i` and `i + 1`, if it has one.
    pub(crate) fn read(r: &Row, i: usize) -> Result<Option<Owner>> {
        Ok(match (r.opt_text(i)?, r.opt_text(i + 1)?) {
            (Some(acts_as), Some(label)) => Some(Owner { acts_as, label }),
            _ => None,
        })
    }

    /// `fields` followed by the owner's two columns.
    pub(crate) fn with(&self, mut fields: Vec<Value>) -> Vec<Value> {
        fields.extend([self.acts_as.as_str().into(), self.label.as_str().into()]);
        fields
    }
}
