//! The cluster secret kept in the store, for clusters whose nodes set no `cluster.secret`.
//!
//! Nodes sign the requests they forward to each other (and authenticate gossip) with one
//! shared secret. Keeping a generated one in the store makes a cluster work with no setup,
//! and it does not lower the bar for an attacker: every node must reach the store anyway,
//! and whoever holds the store's credentials can already change every execution, lease and
//! sandbox, so they are fully trusted whether or not the secret is in there. Operators who
//! want the secret out of the database, or want to rotate it, set `cluster.secret` on every
//! node; a node that sets it never reads this one.

use crate::db::query_one;
use crate::{Result, Store, StoreError};
use rand::RngCore;

/// The `shoal_meta` key the generated secret is kept under.
const KEY: &str = "cluster_secret";

impl Store {
    /// The cluster secret kept in the store, created (32 random bytes, hex-encoded) by
    /// whichever node asks first.
    ///
    /// Concurrent first calls from several nodes agree: each tries to insert its own
    /// candidate, only the first insert wins (`ON CONFLICT DO NOTHING`), and all read back the
    /// winner in the same transaction. The secret is the hex text's bytes, exactly as if it
    /// had been written in `cluster.secret`, so an operator can copy it into every node's
    /// configuration and nothing changes.
    pub async fn cluster_secret(&self) -> Result<Vec<u8>> {
        if let Some(secret) = self.read_cluster_secret().await? {
            return Ok(secret);
        }
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let candidate: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut tx = self.begin_write().await?;
        tx.execute(
            "INSERT INTO shoal_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            vec![KEY.into(), candidate.into()],
        )
        .await?;
        let row = query_one(tx.as_mut(), "SELECT value FROM shoal_meta WHERE key = $1", vec![KEY.into()]).await?;
        tx.commit().await?;
        let row =
            row.ok_or_else(|| StoreError::Internal("the cluster secret vanished right after its insert".into()))?;
        Ok(row.text(0)?.into_bytes())
    }

    async fn read_cluster_secret(&self) -> Result<Option<Vec<u8>>> {
        let mut c = self.read().await?;
        let row = query_one(c.as_mut(), "SELECT value FROM shoal_meta WHERE key = $1", vec![KEY.into()]).await?;
        row.map(|r| r.text(0).map(String::into_bytes)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use crate::Store;
    use std::sync::Arc;

    /// Several handles (as several nodes would have) asking at once all get the same secret.
    async fn concurrent_callers_agree(url: &str) {
        let mut stores = Vec::new();
        for _ in 0..4 {
            stores.push(Arc::new(Store::open(url, 2).await.unwrap()));
        }
        let tasks: Vec<_> = stores
            .iter()
            .flat_map(|s| [s.clone(), s.clone()])
            .map(|s| tokio::spawn(async move { s.cluster_secret().await.unwrap() }))
            .collect();
        let mut secrets = Vec::new();
        for t in tasks {
            secrets.push(t.await.unwrap());
        }
        let first = secrets[0].clone();
        assert_eq!(first.len(), 64, "32 bytes, hex-encoded: {:?}", String::from_utf8_lossy(&first));
        assert!(first.iter().all(u8::is_ascii_hexdigit));
        assert!(secrets.iter().all(|s| *s == first), "callers disagree: {secrets:?}");
        // And it is kept: a later handle reads the same one.
        let later = Store::open(url, 1).await.unwrap();
        assert_eq!(later.cluster_secret().await.unwrap(), first);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_concurrent_callers_agree() {
        let dir = tempfile::tempdir().unwrap();
        concurrent_callers_agree(&format!("sqlite://{}/shoal.db", dir.path().display())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_concurrent_callers_agree() {
        concurrent_callers_agree(&shoal_testkit::postgres().fresh_database()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_stores_have_different_secrets() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = Store::open(&format!("sqlite://{}/shoal.db", a.path().display()), 1).await.unwrap();
        let b = Store::open(&format!("sqlite://{}/shoal.db", b.path().display()), 1).await.unwrap();
        assert_ne!(a.cluster_secret().await.unwrap(), b.cluster_secret().await.unwrap());
    }
}
