//! The node registry and node leases, on the store's clock.
//!
//! A node owns its attempts only while its lease is live. Every start bumps the node's
//! generation, so a second process that claims the same node id pushes the first out
//! (its renewals then fail with [`StoreError::LeaseLost`]) instead of both running.

use crate::db::{query_one, Row, Tx};
use crate::{Result, Store, StoreError};
use shoal_core::placement::RegistryState;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct NodeRegistration {
    pub id: String,
    pub url: String,
    pub state: RegistryState,
    pub tags: Vec<String>,
    pub slots: u32,
    pub version: String,
    /// Where the node gossips (`host:port`); other nodes use it to find the cluster.
    pub gossip_addr: String,
    /// The node's store session (see [`crate::NodeSession`]).
    pub session_key: i64,
}

/// What a node publishes with every lease renewal.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    pub state: RegistryState,
    pub running: i64,
    /// Machine CPU and memory use, in tenths of a percent.
    pub cpu_permille: i64,
    pub memory_permille: i64,
    /// How long this node's renewals had been failing before this one, in milliseconds on the
    /// node's own clock (0: the last one succeeded). See [`Store::renew_lease`].
    pub failing_ms: i64,
}

#[derive(Clone, Debug)]
pub struct NodeLease {
    pub generation: i64,
    pub expires_at: i64,
}

#[derive(Clone, Debug)]
pub struct Renewal {
    pub expires_at: i64,
    /// The lease had already run out when it was renewed: other nodes may have taken this
    /// node's attempts in the meantime.
    pub had_expired: bool,
    /// How many other nodes' leases that had run out since the last renewal by anyone this
    /// renewal gave back, as a possible first write after a store outage ([`Store::renew_lease`]).
    pub extended: u64,
    /// The other nodes whose lease is live, as of this renewal: the members a node asks,
    /// through gossip, whether they reach the store when its own renewals fail.
    pub members: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct NodeRow {
    pub id: String,
    pub url: String,
    pub generation: i64,
    pub state: RegistryState,
    pub tags: Vec<String>,
    pub slots: i64,
    pub running: i64,
    pub version: String,
    pub started_at: i64,
    pub renewed_at: i64,
    pub lease_expires_at: i64,
    pub gossip_addr: String,
    pub session_key: i64,
    pub cpu_permille: i64,
    pub memory_permille: i64,
    /// The store's clock when the row was read, to compute lease ages without node clocks.
    pub now: i64,
}

fn ttl_ms(ttl: Duration) -> i64 {
    ttl.as_millis().min(i64::MAX as u128) as i64
}

impl Store {
    /// Registers (or re-registers) a node and gives it a fresh lease and a new generation.
    pub async fn register_node(&self, reg: &NodeRegistration, ttl: Duration) -> Result<NodeLease> {
        let tags = serde_json::to_string(&reg.tags).map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut tx = self.begin_write().await?;
        lock_every_node(tx.as_mut()).await?;
        // A node that joins may be the first to write after a store outage: the leases that
        // ran out in it are given back before its reaper can take them (`give_back`).
        give_back(tx.as_mut(), &reg.id, ttl_ms(ttl)).await?;
        // An earlier process of this node that did not stop gracefully died, whether or not
        // its lease had run out yet: cluster listeners hear of it.
        let previous = query_one(
            tx.as_mut(),
            "SELECT generation, state FROM nodes WHERE id = $1 {for_update}",
            vec![reg.id.as_str().into()],
        )
        .await?;
        if let Some(p) = previous {
            if p.text(1)? != "stopped" {
                crate::listeners::insert_node_event(tx.as_mut(), &reg.id, p.i64(0)?, "node_died").await?;
            }
        }
        let row = query_one(
            tx.as_mut(),
            "INSERT INTO nodes (id, url, generation, state, tags, slots, running, version, started_at, renewed_at,
                 lease_expires_at, gossip_addr, session_key)
             VALUES ($1, $2, 1, $3, $4, $5, 0, $6, {now}, {now}, {now} + $7, $8, $9)
             ON CONFLICT (id) DO UPDATE SET url = $2, generation = nodes.generation + 1, state = $3, tags = $4,
                 slots = $5, running = 0, version = $6, started_at = {now}, renewed_at = {now}, lease_expires_at = {now} + $7,
                 gossip_addr = $8, session_key = $9
             RETURNING generation, lease_expires_at",
            vec![
                reg.id.as_str().into(),
                reg.url.as_str().into(),
                reg.state.as_str().into(),
                tags.into(),
                i64::from(reg.slots).into(),
                reg.version.as_str().into(),
                ttl_ms(ttl).into(),
                reg.gossip_addr.as_str().into(),
                reg.session_key.into(),
            ],
        )
        .await?
        .ok_or_else(|| StoreError::Internal("node upsert returned no row".into()))?;
        crate::listeners::insert_node_event(tx.as_mut(), &reg.id, row.i64(0)?, "node_joined").await?;
        tx.commit().await?;
        Ok(NodeLease { generation: row.i64(0)?, expires_at: row.i64(1)? })
    }

    /// Extends the node's lease to `now + ttl` (store time) and publishes its state and load.
    ///
    /// A renewal whose node had been failing to renew (`status.failing_ms > 0`) may be the
    /// first write after a store outage: it also gives back the leases that ran out since the
    /// last renewal by anyone (`give_back`), so that nodes which kept their attempts running
    /// through the outage (docs/design/store-outage.md) have a whole lease to renew in before
    /// anyone takes them over.
    pub async fn renew_lease(
        &self,
        node: &str,
        generation: i64,
        ttl: Duration,
        status: &NodeStatus,
    ) -> Result<Renewal> {
        let tx = self.acquire_lease_write().await?.begin().await?;
        self.renew_in(tx, node, generation, ttl, status).await
    }

    /// [`Store::renew_lease`] within `bound`. When it takes longer, the error says which
    /// part did: waiting for a connection of this node's own pool (a wedge inside this
    /// process, whatever the store does) or waiting for the store to answer. The renewal is
    /// rolled back either way.
    pub async fn renew_lease_within(
        &self,
        node: &str,
        generation: i64,
        ttl: Duration,
        status: &NodeStatus,
        bound: Duration,
    ) -> Result<Renewal> {
        let deadline = tokio::time::Instant::now() + bound;
        let ms = bound.as_millis();
        let acquired = tokio::time::timeout_at(deadline, self.acquire_lease_write()).await.map_err(|_| {
            let pool = self.pool_report();
            StoreError::Unavailable(if pool.stuck_in_database(bound) {
                format!(
                    "lease renewal waited more than {ms}ms behind this node's other writers, which wait \
                     on the store itself ({pool}): the store is slow or locked by another process"
                )
            } else {
                format!(
                    "lease renewal waited more than {ms}ms for this node's own store pool ({pool}); \
                     this node's own transactions hold it, whatever the store does"
                )
            })
        })??;
        let renewal = async { self.renew_in(acquired.begin().await?, node, generation, ttl, status).await };
        tokio::time::timeout_at(deadline, renewal).await.map_err(|_| {
            StoreError::Unavailable(format!(
                "lease renewal: the store did not answer within {ms}ms (this node's pool: {})",
                self.pool_report()
            ))
        })?
    }

    async fn renew_in(
        &self,
        mut tx: Box<dyn Tx>,
        node: &str,
        generation: i64,
        ttl: Duration,
        status: &NodeStatus,
    ) -> Result<Renewal> {
        if status.failing_ms > 0 {
            lock_every_node(tx.as_mut()).await?;
        }
        let row = query_one(
            tx.as_mut(),
            "SELECT generation, lease_expires_at < {now}, state FROM nodes WHERE id = $1 {for_update}",
            vec![node.into()],
        )
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Err(StoreError::LeaseLost(0));
        };
        let current = row.i64(0)?;
        if current != generation {
            tx.rollback().await?;
            return Err(StoreError::LeaseLost(current));
        }
        if row.text(2)? == "lost" {
            tx.rollback().await?;
            return Err(StoreError::LeaseEnded);
        }
        let had_expired = row.i64(1)? != 0;
        let extended = if status.failing_ms > 0 { give_back(tx.as_mut(), node, ttl_ms(ttl)).await? } else { 0 };
        let members = tx
            .query("SELECT id FROM nodes WHERE id <> $1 AND lease_expires_at > {now} ORDER BY id", vec![node.into()])
            .await?
            .iter()
            .map(|r| r.text(0))
            .collect::<Result<Vec<_>>>()?;
        let row = query_one(
            tx.as_mut(),
            "UPDATE nodes SET lease_expires_at = {now} + $3, renewed_at = {now}, state = $4, running = $5,
                 cpu_permille = $6, memory_permille = $7
             WHERE id = $1 AND generation = $2 RETURNING lease_expires_at",
            vec![
                node.into(),
                generation.into(),
                ttl_ms(ttl).into(),
                status.state.as_str().into(),
                status.running.into(),
                status.cpu_permille.into(),
                status.memory_permille.into(),
            ],
        )
        .await?
        .ok_or(StoreError::LeaseLost(current))?;
        tx.commit().await?;
        Ok(Renewal { expires_at: row.i64(0)?, had_expired, extended, members })
    }

    /// Ends the node's lease at once (clean shutdown), so nothing waits for it to expire.
    pub async fn release_lease(&self, node: &str, generation: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        // A stop after the lease ran out is a death the cluster already acted on, not a leave.
        let live = query_one(
            tx.as_mut(),
            "SELECT lease_expires_at > {now} FROM nodes WHERE id = $1 AND generation = $2 {for_update}",
            vec![node.into(), generation.into()],
        )
        .await?
        .map(|r| r.i64(0))
        .transpose()?;
        tx.execute(
            "UPDATE nodes SET lease_expires_at = {now}, state = 'stopped', running = 0 WHERE id = $1 AND generation = $2",
            vec![node.into(), generation.into()],
        )
        .await?;
        if live == Some(1) {
            crate::listeners::insert_node_event(tx.as_mut(), node, generation, "node_left").await?;
        }
        tx.commit().await
    }

    /// Ends the lease of a node that other nodes found dead: gossip lost it and its store
    /// session has ended (checked here, in the same transaction, so a node whose session is
    /// alive is never ended early). Returns whether the lease was ended. Its attempts are
    /// then taken over by the normal reaping of expired leases.
    pub async fn end_dead_node_lease(&self, node: &str, generation: i64, session_key: i64) -> Result<bool> {
        if !self.session_ended(session_key).await? {
            return Ok(false);
        }
        let mut tx = self.begin_write().await?;
        let n = tx
            .execute(
                "UPDATE nodes SET lease_expires_at = {now}, state = 'lost'
                 WHERE id = $1 AND generation = $2 AND session_key = $3 AND lease_expires_at > {now}",
                vec![node.into(), generation.into(), session_key.into()],
            )
            .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Records the key of the node's new store session (after the old one was lost).
    pub async fn set_session_key(&self, node: &str, generation: i64, key: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        tx.execute(
            "UPDATE nodes SET session_key = $3 WHERE id = $1 AND generation = $2",
            vec![node.into(), generation.into(), key.into()],
        )
        .await?;
        tx.commit().await
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeRow>> {
        self.read_rows(
            "SELECT id, url, generation, state, tags, slots, running, version, started_at, renewed_at, lease_expires_at, {now},
                 gossip_addr, session_key, cpu_permille, memory_permille
             FROM nodes ORDER BY id",
            vec![],
            node_row,
        )
        .await
    }
}

/// The store's half of riding through an outage (docs/design/store-outage.md). `S` is the
/// latest renewal by any node (this one's last included): nobody renewed after it. Every
/// lease but `node`'s that ran out after `S`, or ends within `ttl_ms`, is set to end `ttl_ms`
/// from now. Leases that ran out before `S` stay out: a node renewed after they had, so their
/// owners were not riding (a rider's lease ends after the moment every member had failed).
/// Released and ended leases stay out. Returns how many that had run out were given back.
///
/// Cheap and harmless when there was no outage: live leases only move a little later, and a
/// lease that ran out a moment ago waits one lease longer to be taken over.
///
/// The caller has locked every row with [`lock_every_node`] before any other.
async fn give_back(tx: &mut dyn Tx, node: &str, ttl_ms: i64) -> Result<u64> {
    let latest = query_one(tx, "SELECT MAX(renewed_at) FROM nodes WHERE state NOT IN ('stopped', 'lost')", vec![])
        .await?
        .map(|r| r.opt_i64(0))
        .transpose()?
        .flatten();
    let Some(latest) = latest else { return Ok(0) };
    let which = "id <> $1 AND state NOT IN ('stopped', 'lost') AND lease_expires_at > $2";
    let ran_out = query_one(
        tx,
        &format!("SELECT COUNT(*) FROM nodes WHERE {which} AND lease_expires_at <= {{now}}"),
        vec![node.into(), latest.into()],
    )
    .await?
    .map_or(Ok(0), |r| r.i64(0))?;
    tx.execute(
        &format!("UPDATE nodes SET lease_expires_at = {{now}} + $3 WHERE {which} AND lease_expires_at < {{now}} + $3"),
        vec![node.into(), latest.into(), ttl_ms.into()],
    )
    .await?;
    Ok(ran_out as u64)
}

/// Locks every node's row, in id order, before a transaction that may change other nodes'
/// rows: two of them at once, each holding its own row first, would deadlock on each other's.
/// (An ordinary renewal locks its own row alone, so it never waits while holding one.)
async fn lock_every_node(tx: &mut dyn Tx) -> Result<()> {
    tx.query("SELECT id FROM nodes ORDER BY id {for_update}", vec![]).await.map(drop)
}

fn node_row(r: &Row) -> Result<NodeRow> {
    Ok(NodeRow {
        id: r.text(0)?,
        url: r.text(1)?,
        generation: r.i64(2)?,
        state: r.named(3, "node state", RegistryState::parse)?,
        tags: serde_json::from_str(&r.text(4)?).unwrap_or_default(),
        slots: r.i64(5)?,
        running: r.i64(6)?,
        version: r.text(7)?,
        started_at: r.i64(8)?,
        renewed_at: r.i64(9)?,
        lease_expires_at: r.i64(10)?,
        now: r.i64(11)?,
        gossip_addr: r.text(12)?,
        session_key: r.i64(13)?,
        cpu_permille: r.i64(14)?,
        memory_permille: r.i64(15)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn reg(id: &str) -> NodeRegistration {
        NodeRegistration {
            id: id.into(),
            url: format!("http://{id}"),
            state: RegistryState::Active,
            tags: vec![],
            slots: 1,
            version: "test".into(),
            gossip_addr: String::new(),
            session_key: 0,
        }
    }

    const STATUS: NodeStatus =
        NodeStatus { state: RegistryState::Active, running: 0, cpu_permille: 0, memory_permille: 0, failing_ms: 0 };
    const BOUND: Duration = Duration::from_millis(300);

    /// A renewal that cannot finish in time says whether this node's own pool or the store
    /// held it up, and a wedge of either kind ends as soon as its cause does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_renewal_names_what_held_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.db");
        let store = Arc::new(Store::open(&format!("sqlite://{}", path.display()), 4).await.unwrap());
        let ttl = Duration::from_secs(30);
        let generation = store.register_node(&reg("n1"), ttl).await.unwrap().generation;
        let renew = || store.renew_lease_within("n1", generation, ttl, &STATUS, BOUND);

        // A transaction of this node that just sits there: its own pool holds the renewal.
        let held = store.begin_write().await.unwrap();
        let e = renew().await.unwrap_err().to_string();
        assert!(e.contains("this node's own store pool"), "{e}");
        drop(held);
        renew().await.unwrap();

        // A writer of this node whose statement runs long inside the database (a slow disk,
        // say): the renewal waits for it, and names the store, not the pool.
        let slow = tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.begin_write().await.unwrap();
                tx.query(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
                    vec![],
                )
                .await
                .map(drop)
            }
        });
        let start = std::time::Instant::now();
        // (Its `BEGIN` takes no time; a call inside for a while is the statement.)
        while store.pool_report().longest_call.is_none_or(|c| c < Duration::from_millis(100)) {
            assert!(start.elapsed() < Duration::from_secs(5), "the slow statement never reached the database");
            tokio::task::yield_now().await;
        }
        let e = renew().await.unwrap_err().to_string();
        assert!(e.contains("behind this node's other writers, which wait on the store itself"), "{e}");
        // Dropping the writer interrupts its statement.
        slow.abort();
        let _ = slow.await;
        renew().await.unwrap();

        // A second handle on the file, opened (and migrated) while it is free.
        let other = Store::open(&format!("sqlite://{}", path.display()), 4).await.unwrap();
        // Another process holds SQLite's write lock. A writer of this node waits on it inside
        // the database, and does not hold a renewal up meanwhile: the renewal waits on the
        // store itself, beside that writer, not behind it.
        let outside = rusqlite::Connection::open(&path).unwrap();
        outside.execute_batch("BEGIN IMMEDIATE").unwrap();
        let writer = tokio::spawn({
            let store = store.clone();
            async move { store.begin_write().await.map(drop) }
        });
        let start = std::time::Instant::now();
        while store.pool_report().longest_call.is_none() {
            assert!(start.elapsed() < Duration::from_secs(5), "the writer never reached the database");
            tokio::task::yield_now().await;
        }
        let e = renew().await.unwrap_err().to_string();
        assert!(e.contains("the store did not answer"), "{e}");
        let e = other.renew_lease_within("n1", generation, ttl, &STATUS, BOUND).await.unwrap_err().to_string();
        assert!(e.contains("the store did not answer"), "{e}");
        // A renewal waiting beside the writer when the lock is let go gets its turn, and
        // the writer begins after it.
        let renewal = tokio::spawn({
            let store = store.clone();
            async move { store.renew_lease_within("n1", generation, ttl, &STATUS, Duration::from_secs(5)).await }
        });
        let start = std::time::Instant::now();
        while store.pool_report().calls < 2 {
            assert!(start.elapsed() < Duration::from_secs(5), "the renewal never reached the database");
            tokio::task::yield_now().await;
        }
        // Both recover as soon as the lock is let go.
        outside.execute_batch("ROLLBACK").unwrap();
        renewal.await.unwrap().unwrap();
        writer.await.unwrap().unwrap();
        renew().await.unwrap();
        other.renew_lease("n1", generation, ttl, &STATUS).await.unwrap();
    }
}
