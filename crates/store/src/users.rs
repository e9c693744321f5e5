//! People: users with a password hash (Argon2id, as a PHC string; never the password), and
//! their login sessions, kept by the SHA-256 of the session's secret so that a session made
//! through one node works on every node.

use crate::db::{query_one, Row};
use crate::{Result, Store, StoreError};
use shoal_core::Role;

#[derive(Clone, Debug)]
pub struct NewUser {
    pub id: String,
    pub name: String,
    /// The Argon2id PHC string.
    pub password_hash: String,
    pub role: Role,
    pub sandboxes: Vec<String>,
    pub created_by: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct UserRow {
    pub id: String,
    pub name: String,
    pub password_hash: String,
    pub role: Role,
    pub sandboxes: Vec<String>,
    pub created_by: String,
    pub created_at: i64,
}

/// A session and the user it is of, as a request's cookie finds it.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRow {
    pub user: UserRow,
    pub created_at: i64,
    pub expires_at: i64,
    /// The store's clock when it was read.
    pub now: i64,
}

const USER_COLUMNS: &str = "u.id, u.name, u.password_hash, u.role, u.sandboxes, u.created_by, u.created_at";

fn user_row(r: &Row) -> Result<UserRow> {
    Ok(UserRow {
        id: r.text(0)?,
        name: r.text(1)?,
        password_hash: r.text(2)?,
        role: r.named(3, "user role", Role::parse)?,
        sandboxes: crate::tokens::sandboxes_of(&r.text(4)?)?,
        created_by: r.text(5)?,
        created_at: r.i64(6)?,
    })
}

impl Store {
    /// Stores a new user; [`StoreError::Conflict`] if the name is taken.
    pub async fn create_user(&self, user: &NewUser) -> Result<UserRow> {
        let scopes = serde_json::to_string(&user.sandboxes).map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut tx = self.begin_write().await?;
        let inserted = tx
            .execute(
                "INSERT INTO users (id, name, password_hash, role, sandboxes, created_by, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, {now}) ON CONFLICT (name) DO NOTHING",
                vec![
                    user.id.clone().into(),
                    user.name.clone().into(),
                    user.password_hash.clone().into(),
                    user.role.as_str().into(),
                    scopes.into(),
                    user.created_by.clone().into(),
                ],
            )
            .await?;
        if inserted == 0 {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "a user named `{}` exists; pick another name, or delete that one first",
                user.name
            )));
        }
        let row = query_one(
            tx.as_mut(),
            &format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1"),
            vec![user.id.clone().into()],
        )
        .await?
        .ok_or_else(|| StoreError::Internal("a user vanished right after its insert".into()))?;
        tx.commit().await?;
        user_row(&row)
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<UserRow>> {
        let mut c = self.read().await?;
        let row =
            query_one(c.as_mut(), &format!("SELECT {USER_COLUMNS} FROM users u WHERE u.name = $1"), vec![name.into()])
                .await?;
        row.as_ref().map(user_row).transpose()
    }

    pub async fn list_users(&self) -> Result<Vec<UserRow>> {
        self.read_rows(&format!("SELECT {USER_COLUMNS} FROM users u ORDER BY u.name"), vec![], user_row).await
    }

    /// Deletes a user (by id or name) and every session of theirs; [`StoreError::NotFound`] if
    /// there is none.
    pub async fn delete_user(&self, reference: &str) -> Result<UserRow> {
        let mut tx = self.begin_write().await?;
        let found = query_one(
            tx.as_mut(),
            &format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1 OR u.name = $1 {{for_update}}"),
            vec![reference.into()],
        )
        .await?;
        let Some(user) = found.as_ref().map(user_row).transpose()? else {
            tx.rollback().await?;
            return Err(StoreError::NotFound(format!(
                "no user with id or name `{reference}`; `shoal user ls` lists them"
            )));
        };
        tx.execute("DELETE FROM sessions WHERE user_id = $1", vec![user.id.clone().into()]).await?;
        tx.execute("DELETE FROM users WHERE id = $1", vec![user.id.clone().into()]).await?;
        tx.commit().await?;
        Ok(user)
    }

    /// Stores a session of `user_id`, valid for `ttl_ms` (store clock), kept by `hash`.
    pub async fn create_session(&self, hash: &str, user_id: &str, ttl_ms: i64) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        // Sessions long over are cleared as new ones are made: nothing else needs them.
        tx.execute("DELETE FROM sessions WHERE expires_at < {now} - 86400000", vec![]).await?;
        let row = query_one(
            tx.as_mut(),
            "INSERT INTO sessions (hash, user_id, created_at, expires_at) VALUES ($1, $2, {now}, {now} + $3)
             RETURNING expires_at",
            vec![hash.into(), user_id.into(), ttl_ms.into()],
        )
        .await?
        .ok_or_else(|| StoreError::Internal("a session vanished right after its insert".into()))?;
        tx.commit().await?;
        row.i64(0)
    }

    /// The session kept by `hash` and its user, expired or not (the caller judges by `now`).
    pub async fn session_by_hash(&self, hash: &str) -> Result<Option<SessionRow>> {
        let mut c = self.read().await?;
        let row = query_one(
            c.as_mut(),
            &format!(
                "SELECT {USER_COLUMNS}, s.created_at, s.expires_at, {{now}} FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.hash = $1"
            ),
            vec![hash.into()],
        )
        .await?;
        row.map(|r| {
            Ok(SessionRow { user: user_row(&r)?, created_at: r.i64(7)?, expires_at: r.i64(8)?, now: r.i64(9)? })
        })
        .transpose()
    }

    /// Ends a session (logout); whether there was one.
    pub async fn delete_session(&self, hash: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let n = tx.execute("DELETE FROM sessions WHERE hash = $1", vec![hash.into()]).await?;
        tx.commit().await?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, name: &str, role: Role) -> NewUser {
        NewUser {
            id: id.into(),
            name: name.into(),
            password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1${id}"),
            role,
            sandboxes: vec!["team-*".into()],
            created_by: "test".into(),
        }
    }

    /// Users made (a name once), found, listed by name; sessions made, found with their user,
    /// ended; a user's deletion ends their sessions.
    async fn users_and_sessions(url: &str) {
        let store = Store::open(url, 2).await.unwrap();
        let ann = store.create_user(&user("u1", "ann", Role::Editor)).await.unwrap();
        assert_eq!(
            (ann.name.as_str(), ann.role, ann.sandboxes.clone(), ann.password_hash.as_str()),
            ("ann", Role::Editor, vec!["team-*".to_owned()], "$argon2id$v=19$m=19456,t=2,p=1$u1")
        );
        assert!(matches!(store.create_user(&user("u2", "ann", Role::Viewer)).await, Err(StoreError::Conflict(_))));
        store.create_user(&user("u3", "bob", Role::Viewer)).await.unwrap();
        assert_eq!(store.user_by_name("ann").await.unwrap(), Some(ann.clone()));
        assert_eq!(store.user_by_name("nobody").await.unwrap(), None);
        let names: Vec<String> = store.list_users().await.unwrap().into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["ann", "bob"]);

        let expires = store.create_session(&"a".repeat(64), "u1", 60_000).await.unwrap();
        let found = store.session_by_hash(&"a".repeat(64)).await.unwrap().expect("the session");
        assert_eq!(found.user, ann);
        assert_eq!(found.expires_at, expires);
        assert_eq!(found.expires_at - found.created_at, 60_000);
        assert!(found.now >= found.created_at && found.now < found.expires_at, "{found:?}");
        // A session made to last 1 ms is over by the next read (the caller judges by `now`).
        store.create_session(&"b".repeat(64), "u1", 1).await.unwrap();
        store.create_session(&"c".repeat(64), "u3", 60_000).await.unwrap();
        let brief = loop {
            let s = store.session_by_hash(&"b".repeat(64)).await.unwrap().unwrap();
            if s.now >= s.expires_at {
                break s;
            }
        };
        assert_eq!(brief.user.name, "ann");
        assert!(store.delete_session(&"a".repeat(64)).await.unwrap());
        assert!(!store.delete_session(&"a".repeat(64)).await.unwrap());
        assert_eq!(store.session_by_hash(&"a".repeat(64)).await.unwrap(), None);

        // By name or by id; the sessions go with the user, others' stay.
        assert_eq!(store.delete_user("ann").await.unwrap().id, "u1");
        assert_eq!(store.session_by_hash(&"b".repeat(64)).await.unwrap(), None);
        assert!(store.session_by_hash(&"c".repeat(64)).await.unwrap().is_some());
        assert!(matches!(store.delete_user("ann").await, Err(StoreError::NotFound(_))));
        assert_eq!(store.delete_user("u3").await.unwrap().name, "bob");
        assert!(store.list_users().await.unwrap().is_empty());
        // The name is free again.
        store.create_user(&user("u4", "ann", Role::Admin)).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_users_and_sessions() {
        let dir = tempfile::tempdir().unwrap();
        users_and_sessions(&format!("sqlite://{}/u.db", dir.path().display())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_users_and_sessions() {
        users_and_sessions(&shoal_testkit::postgres().fresh_database()).await;
    }
}
