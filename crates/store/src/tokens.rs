//! API tokens: who may call the API. The store keeps each token's SHA-256 (`hash`, hex), its
//! name, role, sandbox scopes and times, never its text; a node hashes the token a request
//! carries and looks the hash up (through its own short cache, `shoal-api`'s `auth.rs`).

use crate::db::{query_one, Row, Value};
use crate::{Result, Store, StoreError};
use shoal_core::Role;

/// A token to store.
#[derive(Clone, Debug)]
pub struct NewToken {
    pub id: String,
    pub name: String,
    /// SHA-256 of the token's text, in hex.
    pub hash: String,
    /// The part of the text that may be shown (`shoal_api_` and 6 characters).
    pub prefix: String,
    pub role: Role,
    pub sandboxes: Vec<String>,
    pub created_by: String,
    /// Valid for this long from its creation (store clock); `None`: until revoked.
    pub expires_in_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub role: Role,
    pub sandboxes: Vec<String>,
    pub created_by: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl TokenRow {
    /// Whether the token may be used at `now` (store milliseconds).
    pub fn live_at(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
}

const COLUMNS: &str = "id, name, prefix, role, sandboxes, created_by, created_at, last_used_at, expires_at, revoked_at";

fn token_row(r: &Row) -> Result<TokenRow> {
    Ok(TokenRow {
        id: r.text(0)?,
        name: r.text(1)?,
        prefix: r.text(2)?,
        role: r.named(3, "token role", Role::parse)?,
        sandboxes: sandboxes_of(&r.text(4)?)?,
        created_by: r.text(5)?,
        created_at: r.i64(6)?,
        last_used_at: r.opt_i64(7)?,
        expires_at: r.opt_i64(8)?,
        revoked_at: r.opt_i64(9)?,
    })
}

/// The token with this id, and the store's clock now.
pub(crate) async fn token_by_id_in(c: &mut dyn crate::db::Tx, id: &str) -> Result<Option<(TokenRow, i64)>> {
    let row = query_one(c, &format!("SELECT {COLUMNS}, {{now}} FROM tokens WHERE id = $1"), vec![id.into()]).await?;
    row.map(|r| Ok((token_row(&r)?, r.i64(10)?))).transpose()
}

/// A token's or user's stored sandbox globs.
pub(crate) fn sandboxes_of(json: &str) -> Result<Vec<String>> {
    serde_json::from_str(json).map_err(|e| StoreError::Internal(format!("stored sandbox globs are invalid: {e}")))
}

fn insert_params(t: &NewToken) -> Result<Vec<Value>> {
    let scopes = serde_json::to_string(&t.sandboxes).map_err(|e| StoreError::Internal(e.to_string()))?;
    Ok(vec![
        t.id.clone().into(),
        t.name.clone().into(),
        t.hash.clone().into(),
        t.prefix.clone().into(),
        t.role.as_str().into(),
        scopes.into(),
        t.created_by.clone().into(),
        t.expires_in_ms.into(),
    ])
}

const INSERT: &str = "INSERT INTO tokens (id, name, hash, prefix, role, sandboxes, created_by, created_at, expires_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, {now}, {now} + $8)";

/// The `shoal_meta` key whose row the first-token check locks, so that nodes starting at once
/// against an empty store create one admin token between them, not one each.
const BOOTSTRAP_LOCK: &str = "token_bootstrap";

impl Store {
    /// Stores a new token; [`StoreError::Conflict`] if a token not revoked has its name.
    pub async fn create_token(&self, token: &NewToken) -> Result<TokenRow> {
        let mut tx = self.begin_write().await?;
        let taken = query_one(
            tx.as_mut(),
            "SELECT id FROM tokens WHERE name = $1 AND revoked_at IS NULL",
            vec![token.name.clone().into()],
        )
        .await?;
        if taken.is_some() {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "a token named `{}` exists; pick another name, or revoke that one first",
                token.name
            )));
        }
        tx.execute(INSERT, insert_params(token)?).await?;
        let row = query_one(
            tx.as_mut(),
            &format!("SELECT {COLUMNS} FROM tokens WHERE id = $1"),
            vec![token.id.clone().into()],
        )
        .await?
        .ok_or_else(|| StoreError::Internal("a token vanished right after its insert".into()))?;
        tx.commit().await?;
        token_row(&row)
    }

    /// Stores `token` (an admin token) only if no admin token for every sandbox (`*`) may be
    /// used now; says whether it did. Nodes that call this at once agree: the check and the insert run under one
    /// row lock (PostgreSQL) or one writer (SQLite), so one of them creates it.
    pub async fn bootstrap_token(&self, token: &NewToken) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        tx.execute(
            "INSERT INTO shoal_meta (key, value) VALUES ($1, '') ON CONFLICT (key) DO NOTHING",
            vec![BOOTSTRAP_LOCK.into()],
        )
        .await?;
        query_one(tx.as_mut(), "SELECT value FROM shoal_meta WHERE key = $1 {for_update}", vec![BOOTSTRAP_LOCK.into()])
            .await?;
        let live = query_one(
            tx.as_mut(),
            "SELECT id FROM tokens WHERE role = 'admin' AND sandboxes LIKE '%\"*\"%' AND revoked_at IS NULL
             AND (expires_at IS NULL OR expires_at > {now})",
            vec![],
        )
        .await?;
        if live.is_some() {
            tx.rollback().await?;
            return Ok(false);
        }
        // A name taken by a token that cannot serve (not admin) gives way to this one's id.
        let taken = query_one(
            tx.as_mut(),
            "SELECT id FROM tokens WHERE name = $1 AND revoked_at IS NULL",
            vec![token.name.clone().into()],
        )
        .await?;
        let mut token = token.clone();
        if taken.is_some() {
            token.name = format!("{}-{}", token.name, token.id);
        }
        tx.execute(INSERT, insert_params(&token)?).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The token whose text hashes to `hash`, and the store's clock now (0 when there is none).
    pub async fn token_by_hash(&self, hash: &str) -> Result<(Option<TokenRow>, i64)> {
        let mut c = self.read().await?;
        let rows =
            c.query(&format!("SELECT {COLUMNS}, {{now}} FROM tokens WHERE hash = $1"), vec![hash.into()]).await?;
        // One query, found or not: unknown tokens cost what known ones do.
        match rows.first() {
            Some(r) => Ok((Some(token_row(r)?), r.i64(10)?)),
            None => Ok((None, 0)),
        }
    }

    /// Every token, revoked ones too, oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>> {
        self.read_rows(&format!("SELECT {COLUMNS} FROM tokens ORDER BY created_at, id"), vec![], token_row).await
    }

    /// Revokes the token with this id, or the one not revoked with this name; a revoked one
    /// stays revoked (its first time kept). [`StoreError::NotFound`] if there is none.
    pub async fn revoke_token(&self, id_or_name: &str) -> Result<TokenRow> {
        let mut tx = self.begin_write().await?;
        let found = query_one(
            tx.as_mut(),
            &format!(
                "SELECT {COLUMNS} FROM tokens WHERE id = $1 OR (name = $1 AND revoked_at IS NULL) ORDER BY revoked_at IS NULL DESC {{for_update}}"
            ),
            vec![id_or_name.into()],
        )
        .await?;
        let Some(found) = found.as_ref().map(token_row).transpose()? else {
            tx.rollback().await?;
            return Err(StoreError::NotFound(format!(
                "no token with id or name `{id_or_name}`; `shoal token ls` lists them"
            )));
        };
        tx.execute(
            "UPDATE tokens SET revoked_at = {now} WHERE id = $1 AND revoked_at IS NULL",
            vec![found.id.clone().into()],
        )
        .await?;
        let row = query_one(tx.as_mut(), &format!("SELECT {COLUMNS} FROM tokens WHERE id = $1"), vec![found.id.into()])
            .await?
            .ok_or_else(|| StoreError::Internal("a token vanished while being revoked".into()))?;
        tx.commit().await?;
        token_row(&row)
    }

    /// Records that these tokens were used now.
    pub async fn touch_tokens(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for id in ids {
            tx.execute("UPDATE tokens SET last_used_at = {now} WHERE id = $1", vec![id.clone().into()]).await?;
        }
        tx.commit().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn token(id: &str, name: &str, role: Role) -> NewToken {
        NewToken {
            id: id.into(),
            name: name.into(),
            hash: format!("{id:0>64}"),
            prefix: "shoal_api_abcdef".into(),
            role,
            sandboxes: vec!["*".into()],
            created_by: "test".into(),
            expires_in_ms: None,
        }
    }

    /// Nodes starting at once on an empty store make one admin token between them; a later
    /// one makes none while it may be used, and one again once none may.
    async fn one_first_token(url: &str) {
        let mut stores = Vec::new();
        for _ in 0..4 {
            stores.push(Arc::new(Store::open(url, 2).await.unwrap()));
        }
        let tasks: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let s = s.clone();
                tokio::spawn(
                    async move { s.bootstrap_token(&token(&format!("b{i}"), "admin", Role::Admin)).await.unwrap() },
                )
            })
            .collect();
        let mut made = 0;
        for t in tasks {
            made += usize::from(t.await.unwrap());
        }
        assert_eq!(made, 1, "first tokens made");
        let store = &stores[0];
        assert!(!store.bootstrap_token(&token("later", "admin", Role::Admin)).await.unwrap());
        // An admin for some sandboxes does not count: nobody could make tokens with it.
        let mut scoped = token("scoped", "scoped", Role::Admin);
        scoped.sandboxes = vec!["team-*".into()];
        store.create_token(&scoped).await.unwrap();
        let first = store.list_tokens().await.unwrap();
        assert_eq!(first.len(), 2);
        store.revoke_token(&first[0].id).await.unwrap();
        // The revoked one keeps its name taken only while live: the new one is `admin` again.
        assert!(store.bootstrap_token(&token("again", "admin", Role::Admin)).await.unwrap());
        let all = store.list_tokens().await.unwrap();
        assert_eq!(all.iter().filter(|t| t.revoked_at.is_none()).count(), 2, "the new one and the scoped one: {all:?}");
    }

    /// Made, found by hash, named once among live tokens, revoked (by id or name), expired.
    async fn tokens_round_trip(url: &str) {
        let store = Store::open(url, 2).await.unwrap();
        let made = store.create_token(&token("t1", "ci", Role::Runner)).await.unwrap();
        assert_eq!((made.role, made.sandboxes.clone(), made.revoked_at), (Role::Runner, vec!["*".to_owned()], None));
        assert!(matches!(store.create_token(&token("t2", "ci", Role::Viewer)).await, Err(StoreError::Conflict(_))));
        let (found, now) = store.token_by_hash(&format!("{:0>64}", "t1")).await.unwrap();
        assert_eq!(found.as_ref(), Some(&made));
        assert!(found.unwrap().live_at(now));
        assert_eq!(store.token_by_hash("nope").await.unwrap().0, None);
        let revoked = store.revoke_token("ci").await.unwrap();
        assert!(revoked.revoked_at.is_some());
        // Revoking again keeps the first time; the name is free again.
        assert_eq!(store.revoke_token("t1").await.unwrap().revoked_at, revoked.revoked_at);
        assert!(matches!(store.revoke_token("ci").await, Err(StoreError::NotFound(_))));
        store.create_token(&token("t3", "ci", Role::Viewer)).await.unwrap();
        let mut brief = token("t4", "brief", Role::Viewer);
        brief.expires_in_ms = Some(1);
        let brief = store.create_token(&brief).await.unwrap();
        assert_eq!(brief.expires_at, Some(brief.created_at + 1));
        store.touch_tokens(&["t3".into()]).await.unwrap();
        let listed = store.list_tokens().await.unwrap();
        assert_eq!(listed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["t1", "t3", "t4"]);
        assert!(listed[1].last_used_at.is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_tokens() {
        let dir = tempfile::tempdir().unwrap();
        one_first_token(&format!("sqlite://{}/a.db", dir.path().display())).await;
        tokens_round_trip(&format!("sqlite://{}/b.db", dir.path().display())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_tokens() {
        one_first_token(&shoal_testkit::postgres().fresh_database()).await;
        tokens_round_trip(&shoal_testkit::postgres().fresh_database()).await;
    }
}
