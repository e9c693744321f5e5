//! Job secrets as the store keeps them: sealed. The nodes encrypt a value (an AEAD, under a
//! key kept in a file beside each node, never here) before it reaches the store and decrypt
//! it only to start an attempt, so the store, its backups and anyone who reads its tables hold
//! ciphertext, a nonce and the id of the key that sealed it. A secret belongs to a sandbox or,
//! with `sandbox` `''`, to the whole cluster.

use crate::db::{query_one, Row, Value};
use crate::{Result, Store, StoreError};

/// A secret as listed: never its value, nor its ciphertext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRow {
    pub sandbox: Option<String>,
    pub name: String,
    pub key_id: String,
    pub created_by: String,
    pub created_at: i64,
    pub updated_by: String,
    pub updated_at: i64,
}

/// A secret sealed: as a node stores it and opens it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedSecret {
    pub sandbox: Option<String>,
    pub name: String,
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    pub key_id: String,
}

const ROW_COLUMNS: &str = "sandbox, name, key_id, created_by, created_at, updated_by, updated_at";
const SEALED_COLUMNS: &str = "sandbox, name, ciphertext, nonce, key_id";

fn sandbox_value(sandbox: Option<&str>) -> Value {
    sandbox.unwrap_or("").into()
}

fn sandbox_of(r: &Row, i: usize) -> Result<Option<String>> {
    Ok(Some(r.text(i)?).filter(|s| !s.is_empty()))
}

fn secret_row(r: &Row) -> Result<SecretRow> {
    Ok(SecretRow {
        sandbox: sandbox_of(r, 0)?,
        name: r.text(1)?,
        key_id: r.text(2)?,
        created_by: r.text(3)?,
        created_at: r.i64(4)?,
        updated_by: r.text(5)?,
        updated_at: r.i64(6)?,
    })
}

fn sealed_row(r: &Row) -> Result<SealedSecret> {
    Ok(SealedSecret {
        sandbox: sandbox_of(r, 0)?,
        name: r.text(1)?,
        ciphertext: r.bytes(2)?,
        nonce: r.bytes(3)?,
        key_id: r.text(4)?,
    })
}

impl Store {
    /// Sets a secret, sealed by the caller, made or replaced by `by` (`token:NAME`,
    /// `user:NAME`); whether it was made.
    pub async fn put_secret(&self, s: &SealedSecret, by: &str) -> Result<(SecretRow, bool)> {
        let key = || vec![sandbox_value(s.sandbox.as_deref()), s.name.clone().into()];
        let mut tx = self.begin_write().await?;
        let existed =
            query_one(tx.as_mut(), "SELECT 1 FROM secrets WHERE sandbox = $1 AND name = $2 {for_update}", key())
                .await?
                .is_some();
        let mut params = key();
        params.extend([
            Value::Bytes(s.ciphertext.clone()),
            Value::Bytes(s.nonce.clone()),
            s.key_id.clone().into(),
            by.into(),
        ]);
        if existed {
            tx.execute(
                "UPDATE secrets SET ciphertext = $3, nonce = $4, key_id = $5, updated_by = $6, updated_at = {now}
                 WHERE sandbox = $1 AND name = $2",
                params,
            )
            .await?;
        } else {
            tx.execute(
                "INSERT INTO secrets (sandbox, name, ciphertext, nonce, key_id, created_by, created_at, updated_by, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, {now}, $6, {now})",
                params,
            )
            .await?;
        }
        let row = query_one(
            tx.as_mut(),
            &format!("SELECT {ROW_COLUMNS} FROM secrets WHERE sandbox = $1 AND name = $2"),
            key(),
        )
        .await?
        .ok_or_else(|| StoreError::Internal("a secret vanished right after it was set".into()))?;
        tx.commit().await?;
        Ok((secret_row(&row)?, !existed))
    }

    /// Every secret, cluster-wide ones first, then by sandbox and name; never a value.
    pub async fn list_secrets(&self) -> Result<Vec<SecretRow>> {
        self.read_rows(&format!("SELECT {ROW_COLUMNS} FROM secrets ORDER BY sandbox, name"), vec![], secret_row).await
    }

    /// Deletes a secret; [`StoreError::NotFound`] if there is none.
    pub async fn delete_secret(&self, sandbox: Option<&str>, name: &str) -> Result<SecretRow> {
        let key = vec![sandbox_value(sandbox), name.into()];
        let mut tx = self.begin_write().await?;
        let found = query_one(
            tx.as_mut(),
            &format!("SELECT {ROW_COLUMNS} FROM secrets WHERE sandbox = $1 AND name = $2 {{for_update}}"),
            key.clone(),
        )
        .await?;
        let Some(row) = found.as_ref().map(secret_row).transpose()? else {
            tx.rollback().await?;
            return Err(StoreError::NotFound(match sandbox {
                Some(s) => format!("no secret `{name}` in sandbox `{s}`; `shoal secret ls --sandbox {s}` lists them"),
                None => format!("no cluster-wide secret `{name}`; `shoal secret ls` lists them"),
            }));
        };
        tx.execute("DELETE FROM secrets WHERE sandbox = $1 AND name = $2", key).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// The secrets named `names` that a job of `sandbox` sees: that sandbox's, and the
    /// cluster-wide ones (both may be returned for one name; the caller prefers the sandbox's).
    pub async fn sealed_secrets(&self, sandbox: Option<&str>, names: &[String]) -> Result<Vec<SealedSecret>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let list = (0..names.len()).map(|i| format!("${}", i + 2)).collect::<Vec<_>>().join(", ");
        let mut params = vec![sandbox_value(sandbox)];
        params.extend(names.iter().map(|n| Value::from(n.as_str())));
        self.read_rows(
            &format!("SELECT {SEALED_COLUMNS} FROM secrets WHERE sandbox IN ('', $1) AND name IN ({list})"),
            params,
            sealed_row,
        )
        .await
    }

    /// Every secret sealed with another key than `key_id`, to seal again.
    pub async fn sealed_secrets_not_under(&self, key_id: &str) -> Result<Vec<SealedSecret>> {
        self.read_rows(
            &format!("SELECT {SEALED_COLUMNS} FROM secrets WHERE key_id <> $1 ORDER BY sandbox, name"),
            vec![key_id.into()],
            sealed_row,
        )
        .await
    }

    /// Replaces a secret's ciphertext with `new`'s (the same value sealed again), only if it
    /// is still as `old` read it (compare-and-set on the nonce): a value set meanwhile is kept.
    /// Whether it was replaced. The secret's times and authors stay: its value did not change.
    pub async fn reseal_secret(&self, old: &SealedSecret, new: &SealedSecret) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let n = tx
            .execute(
                "UPDATE secrets SET ciphertext = $3, nonce = $4, key_id = $5 WHERE sandbox = $1 AND name = $2 AND nonce = $6",
                vec![
                    sandbox_value(old.sandbox.as_deref()),
                    old.name.clone().into(),
                    Value::Bytes(new.ciphertext.clone()),
                    Value::Bytes(new.nonce.clone()),
                    new.key_id.clone().into(),
                    Value::Bytes(old.nonce.clone()),
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    /// The ids of the keys the store's secrets are sealed with, and how many each sealed.
    pub async fn secret_key_ids(&self) -> Result<Vec<(String, i64)>> {
        self.read_rows("SELECT key_id, COUNT(*) FROM secrets GROUP BY key_id ORDER BY key_id", vec![], |r| {
            Ok((r.text(0)?, r.i64(1)?))
        })
        .await
    }
}
