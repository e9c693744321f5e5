//! Whose rights work runs with when nobody is asking: the owner of a schedule or listener, the
//! principal an execution runs for. Each is kept as `token:ID` or `user:ID` and looked up again
//! each time it is used, so a revoked token or a deleted user stops what ran in its name.
//!
//! Also each attempt's own token (`shoal_att_`): minted in the claim's transaction, kept as its
//! SHA-256 beside the attempt, and valid only while that attempt is the execution's current
//! one (its fencing token is the execution's and it has not ended).

use crate::db::query_one;
use crate::{Result, Store};
use rand::RngCore;
use sha2::{Digest, Sha256};
use shoal_core::Role;

/// What a principal may do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rights {
    /// `token:NAME` or `user:NAME`.
    pub label: String,
    pub role: Role,
    pub sandboxes: Vec<String>,
}

/// An attempt's token, as a request presents it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptTokenRow {
    pub execution_id: String,
    pub attempt: i64,
    pub fence: i64,
    pub sandbox: Option<String>,
    /// Whether the attempt is still its execution's current one and has not ended.
    pub live: bool,
    /// The execution's principal (`token:NAME`), and whose rights it runs with (`token:ID`).
    pub principal: Option<String>,
    pub acts_as: Option<String>,
}

/// A claimed attempt's own token; its `Debug` shows only the part that may be shown.
#[derive(Clone)]
pub struct AttemptToken {
    text: String,
    /// SHA-256 of the text, hex, as the store keeps it.
    pub(crate) hash: String,
}

impl AttemptToken {
    /// A new token, from the OS's randomness.
    pub(crate) fn mint() -> AttemptToken {
        let mut secret = [0u8; shoal_wire::TOKEN_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let text = shoal_wire::format_token(shoal_wire::TokenKind::Attempt, &secret);
        let hash = hex::encode(Sha256::digest(text.as_bytes()));
        AttemptToken { text, hash }
    }

    /// The text, for the attempt's environment only.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Debug for AttemptToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AttemptToken({}...)", shoal_wire::shown_part(&self.text))
    }
}

impl Store {
    /// The rights of `acts_as` (`token:ID` or `user:ID`) now, or why it has none (revoked,
    /// expired, deleted, never known).
    pub async fn rights_of(&self, acts_as: &str) -> Result<std::result::Result<Rights, String>> {
        let mut c = self.read().await?;
        if let Some(id) = acts_as.strip_prefix("token:") {
            let Some((t, now)) = crate::tokens::token_by_id_in(c.as_mut(), id).await? else {
                return Ok(Err(format!("token `{id}` no longer exists")));
            };
            if t.revoked_at.is_some() {
                return Ok(Err(format!("token `{}` was revoked", t.name)));
            }
            if !t.live_at(now) {
                return Ok(Err(format!("token `{}` expired", t.name)));
            }
            return Ok(Ok(Rights { label: format!("token:{}", t.name), role: t.role, sandboxes: t.sandboxes }));
        }
        if let Some(id) = acts_as.strip_prefix("user:") {
            let row =
                query_one(c.as_mut(), "SELECT name, role, sandboxes FROM users WHERE id = $1", vec![id.into()]).await?;
            let Some(r) = row else { return Ok(Err(format!("user `{id}` was deleted"))) };
            return Ok(Ok(Rights {
                label: format!("user:{}", r.text(0)?),
                role: r.named(1, "user role", Role::parse)?,
                sandboxes: crate::tokens::sandboxes_of(&r.text(2)?)?,
            }));
        }
        Ok(Err(format!("`{acts_as}` is no token or user")))
    }

    /// The attempt whose token hashes to `hash` (hex), if any.
    pub async fn attempt_by_token(&self, hash: &str) -> Result<Option<AttemptTokenRow>> {
        let mut c = self.read().await?;
        let row = query_one(
            c.as_mut(),
            "SELECT a.execution_id, a.attempt, e.sandbox, e.principal, e.acts_as,
                 CASE WHEN a.finished_at IS NULL AND e.state = 'running' AND e.fence = a.fence THEN 1 ELSE 0 END, a.fence
             FROM attempts a JOIN executions e ON e.id = a.execution_id WHERE a.token_hash = $1",
            vec![hash.into()],
        )
        .await?;
        row.map(|r| {
            Ok(AttemptTokenRow {
                execution_id: r.text(0)?,
                attempt: r.i64(1)?,
                sandbox: r.opt_text(2)?,
                principal: r.opt_text(3)?,
                acts_as: r.opt_text(4)?,
                live: r.i64(5)? == 1,
                fence: r.i64(6)?,
            })
        })
        .transpose()
    }
}
