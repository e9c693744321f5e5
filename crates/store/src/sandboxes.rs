//! The sandbox registry: names, kinds, and where each sandbox's files live.

use crate::db::{query_one, Row};
use crate::{Result, Store, StoreError};
use shoal_core::{Partition, SandboxKind};

#[derive(Clone, Debug)]
pub struct SandboxRow {
    pub name: String,
    pub kind: SandboxKind,
    /// The sandbox's root folder on the node(s) that hold it.
    pub root: String,
    /// The holder of a local sandbox.
    pub node_id: Option<String>,
    pub created_at: i64,
    /// The parts of a partitioned sandbox (empty for the other kinds).
    pub partitions: Vec<Partition>,
}

fn sandbox_row(r: &Row) -> Result<SandboxRow> {
    Ok(SandboxRow {
        name: r.text(0)?,
        kind: SandboxKind::parse(&r.text(1)?).map_err(StoreError::Internal)?,
        root: r.text(2)?,
        node_id: r.opt_text(3)?,
        created_at: r.i64(4)?,
        partitions: serde_json::from_str(&r.text(5)?)
            .map_err(|e| StoreError::Internal(format!("stored partitions are invalid: {e}")))?,
    })
}

impl Store {
    /// Creates a sandbox; [`StoreError::Conflict`] if the name is taken.
    pub async fn create_sandbox(
        &self,
        name: &str,
        kind: SandboxKind,
        root: &str,
        node: Option<&str>,
        partitions: &[Partition],
    ) -> Result<SandboxRow> {
        let parts = serde_json::to_string(partitions).map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut tx = self.begin_write().await?;
        let row = query_one(
            tx.as_mut(),
            "INSERT INTO sandboxes (name, kind, root, node_id, created_at, partitions) VALUES ($1, $2, $3, $4, {now}, $5)
             ON CONFLICT (name) DO NOTHING
             RETURNING name, kind, root, node_id, created_at, partitions",
            vec![name.into(), kind.as_str().into(), root.into(), node.map(str::to_owned).into(), parts.into()],
        )
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "a sandbox named `{name}` already exists; pick another name or delete it first"
            )));
        };
        tx.commit().await?;
        sandbox_row(&row)
    }

    pub async fn list_sandboxes(&self) -> Result<Vec<SandboxRow>> {
        self.read_rows(
            "SELECT name, kind, root, node_id, created_at, partitions FROM sandboxes ORDER BY name",
            vec![],
            sandbox_row,
        )
        .await
    }

    pub async fn get_sandbox(&self, name: &str) -> Result<Option<SandboxRow>> {
        let mut c = self.read().await?;
        let row = query_one(
            c.as_mut(),
            "SELECT name, kind, root, node_id, created_at, partitions FROM sandboxes WHERE name = $1",
            vec![name.into()],
        )
        .await?;
        row.as_ref().map(sandbox_row).transpose()
    }

    /// Deletes a sandbox's registration (its files are left alone). Refused while any of its
    /// executions is queued or running, so no accepted execution loses its sandbox.
    pub async fn delete_sandbox(&self, name: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let exists =
            query_one(tx.as_mut(), "SELECT name FROM sandboxes WHERE name = $1 {for_update}", vec![name.into()])
                .await?;
        if exists.is_none() {
            tx.rollback().await?;
            return Err(StoreError::NotFound(format!("no sandbox named `{name}`")));
        }
        let live = query_one(
            tx.as_mut(),
            "SELECT COUNT(*) FROM executions WHERE sandbox = $1 AND state IN ('queued', 'running')",
            vec![name.into()],
        )
        .await?
        .map(|r| r.i64(0))
        .transpose()?
        .unwrap_or(0);
        if live > 0 {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "sandbox `{name}` has {live} queued or running execution(s); cancel them or wait for them to finish"
            )));
        }
        tx.execute("DELETE FROM sandboxes WHERE name = $1", vec![name.into()]).await?;
        // A sandbox made again under this name must not inherit the old one's secrets.
        tx.execute("DELETE FROM secrets WHERE sandbox = $1", vec![name.into()]).await?;
        tx.commit().await
    }
}
