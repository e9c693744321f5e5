//! Making API tokens, and the first admin token of a store.

use rand::RngCore;
use sha2::{Digest, Sha256};
use shoal_core::Role;
use shoal_store::{NewToken, Store};
use shoal_wire::{format_token, shown_part, TokenKind, TOKEN_BYTES};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The file in a node's data directory that holds the first admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// A new token: its text (shown once) and what the store keeps of it.
pub fn generate(
    kind: TokenKind,
    name: &str,
    role: Role,
    sandboxes: Vec<String>,
    created_by: &str,
) -> (String, NewToken) {
    let mut secret = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let text = format_token(kind, &secret);
    let mut id = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let token = NewToken {
        id: hex::encode(id),
        name: name.to_owned(),
        hash: hash(&text),
        prefix: shown_part(&text),
        role,
        sandboxes,
        created_by: created_by.to_owned(),
        expires_in_ms: None,
    };
    (text, token)
}

/// SHA-256 of a token's text in hex: what the store keeps.
pub fn hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Creates the first admin token if the store has no admin token that can be used, and writes
/// it to `data_dir/admin.token` (mode 0600). Returns the file's path when it made one.
///
/// The file is written before the store knows the token, under a temporary name, and renamed
/// once the store took it: a crash in between leaves no token that nobody holds, and a node
/// that lost the race to another node leaves no file.
pub async fn bootstrap_admin(store: &Store, data_dir: &Path, created_by: &str) -> anyhow::Result<Option<PathBuf>> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let pending = data_dir.join(format!("{ADMIN_TOKEN_FILE}.pending"));
    // An earlier start that stopped between the store taking its token and the rename left
    // the token only here: finish its work rather than lose the one token nobody else holds.
    if let Ok(text) = std::fs::read_to_string(&pending) {
        let text = text.trim();
        if shoal_wire::parse_token(text).is_ok() {
            if let (Some(row), now) = store.token_by_hash(&hash(text)).await? {
                if row.live_at(now) {
                    std::fs::rename(&pending, &path).map_err(|e| {
                        anyhow::anyhow!("cannot rename {} to {}: {e}", pending.display(), path.display())
                    })?;
                    return Ok(Some(path));
                }
            }
        }
    }
    let (text, token) = generate(TokenKind::Api, "admin", Role::Admin, vec!["*".into()], created_by);
    write_private(&pending, &text)?;
    let made = match store.bootstrap_token(&token).await {
        Ok(made) => made,
        // The file stays: the store may have taken the token even so (a commit whose answer
        // was lost), and the next start finishes the rename if it did.
        Err(e) => return Err(anyhow::Error::new(e).context("cannot create the first admin token")),
    };
    if !made {
        let _ = std::fs::remove_file(&pending);
        return Ok(None);
    }
    std::fs::rename(&pending, &path).map_err(|e| {
        anyhow::anyhow!(
            "the first admin token was created, but {} cannot be renamed to {}: {e}; the token is in the former",
            pending.display(),
            path.display()
        )
    })?;
    Ok(Some(path))
}

/// Writes `text` to a new file only its owner can read.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    f.write_all(format!("{text}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

/// The admin token in `file` if the store knows it and it may be used; else a new admin token
/// named `name` (one of that name not revoked is revoked first), written to `file` (mode 0600).
/// For `shoal up`, whose folder is its user's own: the CLI run there finds the file.
pub async fn ensure_file_token(store: &Store, file: &Path, name: &str, created_by: &str) -> anyhow::Result<String> {
    if let Ok(text) = std::fs::read_to_string(file) {
        let text = text.trim().to_owned();
        if shoal_wire::parse_token(&text).is_ok() {
            if let (Some(row), now) = store.token_by_hash(&hash(&text)).await? {
                if row.live_at(now) && row.role == Role::Admin && row.sandboxes.iter().any(|s| s == "*") {
                    return Ok(text);
                }
            }
        }
    }
    match store.revoke_token(name).await {
        Ok(_) | Err(shoal_store::StoreError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let (text, token) = generate(TokenKind::Api, name, Role::Admin, vec!["*".into()], created_by);
    let pending = file.with_extension("pending");
    write_private(&pending, &text)?;
    store.create_token(&token).await?;
    std::fs::rename(&pending, file)
        .map_err(|e| anyhow::anyhow!("cannot rename {} to {}: {e}", pending.display(), file.display()))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A start that stopped after the store took its token but before the rename: the next
    /// start finishes it, and the token works; a pending file the store never took is dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_left_pending_is_taken_up_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/s.db", dir.path().display()), 1).await.unwrap();
        let path = bootstrap_admin(&store, dir.path(), "test").await.unwrap().expect("made one");
        let first = std::fs::read_to_string(&path).unwrap();
        let pending = dir.path().join("admin.token.pending");
        std::fs::rename(&path, &pending).unwrap();
        assert_eq!(bootstrap_admin(&store, dir.path(), "test").await.unwrap(), Some(path.clone()));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
        assert!(!pending.exists());
        // A stray pending token the store does not know: no new token, and the file goes.
        let (stray, _) = generate(TokenKind::Api, "x", Role::Admin, vec!["*".into()], "test");
        write_private(&pending, &stray).unwrap();
        assert_eq!(bootstrap_admin(&store, dir.path(), "test").await.unwrap(), None);
        assert!(!pending.exists());
        assert_eq!(store.list_tokens().await.unwrap().len(), 1);
    }
}
