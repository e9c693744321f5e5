//! The node registry and node leases, on the store's clock.
//!
//! A node owns its attempts only while its lease is live. Every start bumps the node's
//! generation, so a second process that claims the same node id pushes the first out
//! (its renewals then fail with [`StoreError::LeaseLost`]) instead of both running.

use crate::db::{query_one, Row};
use crate::{Result, Store, StoreError};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct NodeRegistration {
    pub id: String,
    pub url: String,
    pub state: String,
    pub tags: Vec<String>,
    pub slots: u32,
    pub version: String,
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
}

#[derive(Clone, Debug)]
pub struct NodeRow {
    pub id: String,
    pub url: String,
    pub generation: i64,
    pub state: String,
    pub tags: Vec<String>,
    pub slots: i64,
    pub running: i64,
    pub version: String,
    pub started_at: i64,
    pub renewed_at: i64,
    pub lease_expires_at: i64,
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
        let row = query_one(
            tx.as_mut(),
            "INSERT INTO nodes (id, url, generation, state, tags, slots, running, version, started_at, renewed_at, lease_expires_at)
             VALUES ($1, $2, 1, $3, $4, $5, 0, $6, {now}, {now}, {now} + $7)
             ON CONFLICT (id) DO UPDATE SET url = $2, generation = nodes.generation + 1, state = $3, tags = $4,
                 slots = $5, running = 0, version = $6, started_at = {now}, renewed_at = {now}, lease_expires_at = {now} + $7
             RETURNING generation, lease_expires_at",
            vec![
                reg.id.as_str().into(),
                reg.url.as_str().into(),
                reg.state.as_str().into(),
                tags.into(),
                i64::from(reg.slots).into(),
                reg.version.as_str().into(),
                ttl_ms(ttl).into(),
            ],
        )
        .await?
        .ok_or_else(|| StoreError::Internal("node upsert returned no row".into()))?;
        tx.commit().await?;
        Ok(NodeLease { generation: row.i64(0)?, expires_at: row.i64(1)? })
    }

    /// Extends the node's lease to `now + ttl` (store time) and publishes its state and load.
    pub async fn renew_lease(
        &self,
        node: &str,
        generation: i64,
        ttl: Duration,
        state: &str,
        running: i64,
    ) -> Result<Renewal> {
        let mut tx = self.begin_write().await?;
        let row = query_one(
            tx.as_mut(),
            "SELECT generation, lease_expires_at < {now} FROM nodes WHERE id = $1 {for_update}",
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
        let had_expired = row.i64(1)? != 0;
        let row = query_one(
            tx.as_mut(),
            "UPDATE nodes SET lease_expires_at = {now} + $3, renewed_at = {now}, state = $4, running = $5
             WHERE id = $1 AND generation = $2 RETURNING lease_expires_at",
            vec![node.into(), generation.into(), ttl_ms(ttl).into(), state.into(), running.into()],
        )
        .await?
        .ok_or(StoreError::LeaseLost(current))?;
        tx.commit().await?;
        Ok(Renewal { expires_at: row.i64(0)?, had_expired })
    }

    /// Ends the node's lease at once (clean shutdown), so nothing waits for it to expire.
    pub async fn release_lease(&self, node: &str, generation: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        tx.execute(
            "UPDATE nodes SET lease_expires_at = {now}, state = 'stopped', running = 0 WHERE id = $1 AND generation = $2",
            vec![node.into(), generation.into()],
        )
        .await?;
        tx.commit().await
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeRow>> {
        let mut c = self.read().await?;
        let rows = c
            .query(
                "SELECT id, url, generation, state, tags, slots, running, version, started_at, renewed_at, lease_expires_at, {now}
                 FROM nodes ORDER BY id",
                vec![],
            )
            .await?;
        rows.iter().map(node_row).collect()
    }
}

fn node_row(r: &Row) -> Result<NodeRow> {
    Ok(NodeRow {
        id: r.text(0)?,
        url: r.text(1)?,
        generation: r.i64(2)?,
        state: r.text(3)?,
        tags: serde_json::from_str(&r.text(4)?).unwrap_or_default(),
        slots: r.i64(5)?,
        running: r.i64(6)?,
        version: r.text(7)?,
        started_at: r.i64(8)?,
        renewed_at: r.i64(9)?,
        lease_expires_at: r.i64(10)?,
        now: r.i64(11)?,
    })
}
