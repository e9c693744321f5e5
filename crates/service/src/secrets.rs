//! Job secrets: the key ring that seals and opens them, the rules of a secret's name and
//! value, what a submission and an attempt's start need of them, and sealing every secret
//! again under the current key (`rewrap`).
//!
//! A value is sealed with XChaCha20-Poly1305 under a 32-byte key read from a file on each node
//! (`cluster.secrets_key_file`), never kept in the store: the store holds the ciphertext, a
//! random 24-byte nonce per value and the id of the key (a hash of it, not the key). The
//! associated data is the secret's sandbox and name, so a row copied to another name or
//! sandbox does not open. Every node of a cluster needs the same key; a node refuses to start
//! when the store holds secrets sealed with a key it does not have, rather than run jobs with
//! values it cannot read.

use crate::{DomainError, Result};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use shoal_store::{SealedSecret, Store};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The largest value: an environment variable, not a file.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The shortest value. Masking a shorter one in a job's output would garble it (`***` for
/// every `a`), and so short a value is no secret worth the name.
pub const MIN_VALUE_BYTES: usize = 4;
/// The file a node uses when `cluster.secrets_key_file` is unset, in its data directory.
pub const DEFAULT_KEY_FILE: &str = "secrets.key";

const NONCE_BYTES: usize = 24;

/// One key, from its file.
struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
    file: PathBuf,
}

/// The keys of a node: the current one seals, it and the previous ones (while rotating) open.
pub struct Keyring {
    current: Key,
    previous: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("current", &self.current.id).finish_non_exhaustive()
    }
}

/// A key's id: the first 8 bytes of a SHA-256 of it, in hex. Says which key sealed a value
/// without saying anything of the key.
fn key_id(key: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"shoal secrets key id\0");
    h.update(key);
    hex::encode(&h.finalize()[..8])
}

fn aad(sandbox: Option<&str>, name: &str) -> Vec<u8> {
    format!("shoal-secret-v1\0{}\0{name}", sandbox.unwrap_or("")).into_bytes()
}

/// Reads a key file: 64 hex digits (32 bytes; surrounding white space ignored), readable by
/// its owner only. The error names the file and what to do.
fn read_key(file: &Path) -> Result<Key, String> {
    let shown = file.display();
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read the secrets key file {shown}: {e}"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "the secrets key file {shown} may be read by others (mode {mode:o}); `chmod 600 {shown}`"
            ));
        }
    }
    if !meta.is_file() {
        return Err(format!("the secrets key file {shown} is not a file"));
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read the secrets key file {shown}: {e}"))?;
    let bytes = hex::decode(text.trim()).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()).ok_or_else(|| {
        format!(
            "the secrets key file {shown} must hold 64 hex digits (32 random bytes), as `openssl rand -hex 32` prints"
        )
    })?;
    Ok(Key { id: key_id(&bytes), cipher: XChaCha20Poly1305::new(&bytes.into()), file: file.to_owned() })
}

/// Writes a new random key to `file` (mode 0600), unless the file exists: then it is kept.
pub fn generate_key_file(file: &Path) -> std::io::Result<bool> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut f = match options.open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    };
    f.write_all(format!("{}\n", hex::encode(key)).as_bytes())?;
    f.sync_all()?;
    Ok(true)
}

/// An opened secret.
pub struct Opened {
    pub value: String,
}

/// No value in `Debug` output.
impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened").finish_non_exhaustive()
    }
}

impl Keyring {
    /// Reads the current key file and the previous ones.
    pub fn load(current: &Path, previous: &[PathBuf]) -> Result<Keyring, String> {
        let current = read_key(current)?;
        let previous = previous.iter().map(|p| read_key(p)).collect::<Result<Vec<_>, _>>()?;
        Ok(Keyring { current, previous })
    }

    /// The key ring of a node at start. `configured` is `cluster.secrets_key_file`; unset, the
    /// node's `DATA_DIR/secrets.key`, made when missing only if the store holds no secret yet
    /// (a node joining a cluster with secrets must be given the cluster's key, not make one).
    /// Then every key id the store's secrets were sealed with must be one of this node's keys.
    pub async fn open_for_node(
        store: &Store,
        configured: Option<&Path>,
        previous: &[PathBuf],
        data_dir: &Path,
    ) -> Result<(Keyring, Option<PathBuf>), String> {
        let stored = store.secret_key_ids().await.map_err(|e| format!("cannot read the store's secrets: {e}"))?;
        let mut generated = None;
        let file = match configured {
            Some(f) => f.to_owned(),
            None => {
                let f = data_dir.join(DEFAULT_KEY_FILE);
                if !f.exists() {
                    if !stored.is_empty() {
                        return Err(format!(
                            "the store holds secrets sealed with key id {}, and this node has no secrets key: cluster.secrets_key_file is unset and {} does not exist; give this node the key file the other nodes use (cluster.secrets_key_file)",
                            stored.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", "),
                            f.display()
                        ));
                    }
                    if generate_key_file(&f)
                        .map_err(|e| format!("cannot write the secrets key file {}: {e}", f.display()))?
                    {
                        generated = Some(f.clone());
                    }
                }
                f
            }
        };
        let ring = Keyring::load(&file, previous)?;
        if let Some((id, count)) = stored.iter().find(|(id, _)| !ring.has(id)) {
            return Err(format!(
                "the store holds {count} secret(s) sealed with key id {id}, which this node does not have (its key {} has id {}{}); give every node the same cluster.secrets_key_file, and while rotating the old one in cluster.secrets_previous_key_files until `shoal secret rewrap` has run",
                ring.current.file.display(),
                ring.current.id,
                if ring.previous.is_empty() {
                    String::new()
                } else {
                    format!(", previous {}", ring.previous.iter().map(|k| k.id.as_str()).collect::<Vec<_>>().join(", "))
                }
            ));
        }
        Ok((ring, generated))
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// The file of the key that seals.
    pub fn current_file(&self) -> &Path {
        &self.current.file
    }

    fn has(&self, id: &str) -> bool {
        self.key(id).is_some()
    }

    fn key(&self, id: &str) -> Option<&Key> {
        std::iter::once(&self.current).chain(&self.previous).find(|k| k.id == id)
    }

    /// Seals `value` as secret `name` of `sandbox` under the current key.
    pub fn seal(&self, sandbox: Option<&str>, name: &str, value: &str) -> SealedSecret {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .current
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: value.as_bytes(), aad: &aad(sandbox, name) })
            .expect("XChaCha20-Poly1305 seals any value under 256 GiB");
        SealedSecret {
            sandbox: sandbox.map(str::to_owned),
            name: name.to_owned(),
            ciphertext,
            nonce: nonce.to_vec(),
            key_id: self.current.id.clone(),
        }
    }

    /// Opens a sealed secret; the error says why, never with the value.
    pub fn open(&self, s: &SealedSecret) -> Result<Opened, String> {
        let what = match &s.sandbox {
            Some(sb) => format!("secret `{}` of sandbox `{sb}`", s.name),
            None => format!("cluster-wide secret `{}`", s.name),
        };
        let Some(key) = self.key(&s.key_id) else {
            return Err(format!(
                "{what} was sealed with key id {}, which this node does not have (its key {} has id {}); give every node the same cluster.secrets_key_file",
                s.key_id,
                self.current.file.display(),
                self.current.id
            ));
        };
        if s.nonce.len() != NONCE_BYTES {
            return Err(format!("{what} is damaged in the store (its nonce is not {NONCE_BYTES} bytes); set it again"));
        }
        let plain = key
            .cipher
            .decrypt(
                XNonce::from_slice(&s.nonce),
                Payload { msg: &s.ciphertext, aad: &aad(s.sandbox.as_deref(), &s.name) },
            )
            .map_err(|_| {
                format!(
                    "{what} does not open with key id {}: it was changed or moved in the store; set it again",
                    s.key_id
                )
            })?;
        let value = String::from_utf8(plain).map_err(|_| format!("{what} is not UTF-8; set it again"))?;
        Ok(Opened { value })
    }
}

/// Checks a secret's name (it goes into `{secret.NAME}`).
pub fn check_name(name: &str) -> Result<()> {
    if shoal_core::job::is_secret_name(name) {
        Ok(())
    } else {
        Err(DomainError::InvalidRequest(format!(
            "secret name `{}` is invalid: use 1 to 64 letters, digits, `_` and `-`, starting with a letter",
            name.chars().take(80).collect::<String>().escape_debug()
        )))
    }
}

/// Checks a value: [`MIN_VALUE_BYTES`] to [`MAX_VALUE_BYTES`], no NUL byte (no environment
/// variable can hold one). The message never holds the value.
pub fn check_value(value: &str) -> Result<()> {
    if value.len() < MIN_VALUE_BYTES {
        return Err(DomainError::InvalidRequest(format!(
            "a secret's value must be at least {MIN_VALUE_BYTES} bytes (it is {}): shorter ones cannot be masked in job output without garbling it",
            value.len()
        )));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(DomainError::InvalidRequest(format!(
            "a secret's value may be at most {MAX_VALUE_BYTES} bytes (it is {}); keep larger ones in a file",
            value.len()
        )));
    }
    if value.contains('\0') {
        return Err(DomainError::InvalidRequest(
            "a secret's value contains a NUL byte, which no environment variable can hold".into(),
        ));
    }
    Ok(())
}

/// Seals and stores a secret, after checking that this node's key is the one the store's
/// other secrets are sealed with (or a previous one of it, while rotating): a node given
/// another key must not seal values the other nodes cannot open.
pub async fn set(
    store: &Store,
    ring: &Keyring,
    sandbox: Option<&str>,
    name: &str,
    value: &str,
    by: &str,
) -> Result<(shoal_store::SecretRow, bool)> {
    check_name(name)?;
    check_value(value)?;
    if let Some((id, count)) = store.secret_key_ids().await?.into_iter().find(|(id, _)| !ring.has(id)) {
        return Err(DomainError::SecretsKey(format!(
            "the store holds {count} secret(s) sealed with key id {id}, which this node does not have (its key has id {}); give every node the same cluster.secrets_key_file",
            ring.current_id()
        )));
    }
    Ok(store.put_secret(&ring.seal(sandbox, name, value), by).await?)
}

/// Refuses (`UnknownSecret`) a submission naming a secret that neither its sandbox nor the
/// cluster has; `job` names the job file in the message.
pub async fn check_known(store: &Store, sandbox: Option<&str>, job: &str, spec: &shoal_core::RunSpec) -> Result<()> {
    let names: Vec<String> = spec.secret_names().into_iter().collect();
    if names.is_empty() {
        return Ok(());
    }
    let found = store.sealed_secrets(sandbox, &names).await?;
    if let Some(missing) = names.iter().find(|n| !found.iter().any(|f| &f.name == *n)) {
        return Err(DomainError::UnknownSecret(format!(
            "job `{job}` names secret `{missing}`, which is set neither for sandbox `{}` nor cluster-wide; set it with `shoal secret set {missing}{}` (value on stdin)",
            sandbox.unwrap_or(""),
            sandbox.map(|s| format!(" --sandbox {s}")).unwrap_or_default()
        )));
    }
    Ok(())
}

/// The values of the secrets an attempt's spec names, opened: a sandbox's secret before the
/// cluster-wide one of its name. The error (shown in the attempt's output) names what is
/// missing or cannot be opened, never a value.
pub async fn open_for_attempt(
    store: &Store,
    ring: &Keyring,
    sandbox: Option<&str>,
    spec: &shoal_core::RunSpec,
) -> Result<BTreeMap<String, String>, String> {
    let names: Vec<String> = spec.secret_names().into_iter().collect();
    if names.is_empty() {
        return Ok(BTreeMap::new());
    }
    let found =
        store.sealed_secrets(sandbox, &names).await.map_err(|e| format!("cannot read the job's secrets: {e}"))?;
    let mut values = BTreeMap::new();
    for name in &names {
        let chosen = found
            .iter()
            .find(|s| &s.name == name && s.sandbox.is_some())
            .or_else(|| found.iter().find(|s| &s.name == name && s.sandbox.is_none()));
        let Some(sealed) = chosen else {
            return Err(format!(
                "secret `{name}` is no longer set for sandbox `{}` nor cluster-wide (it was removed after the job was submitted); set it again and run the job again",
                sandbox.unwrap_or("")
            ));
        };
        values.insert(name.clone(), ring.open(sealed)?.value);
    }
    Ok(values)
}

/// What [`rewrap`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rewrapped {
    /// Sealed again under the current key.
    pub rewrapped: u64,
    /// Changed by someone else meanwhile (then already under a current key of a node).
    pub skipped: u64,
}

/// Seals every secret that another key sealed again under the current key, so the previous
/// key can be retired. A secret this node cannot open is an error naming it, and nothing after
/// it is changed in this call (those before it stay sealed again: running it again goes on).
pub async fn rewrap(store: &Store, ring: &Keyring) -> Result<Rewrapped> {
    let mut done = Rewrapped::default();
    for old in store.sealed_secrets_not_under(ring.current_id()).await? {
        let opened = ring.open(&old).map_err(DomainError::SecretsKey)?;
        let new = ring.seal(old.sandbox.as_deref(), &old.name, &opened.value);
        if store.reseal_secret(&old, &new).await? {
            done.rewrapped += 1;
        } else {
            done.skipped += 1;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &Path, name: &str) -> PathBuf {
        let f = dir.join(name);
        assert!(generate_key_file(&f).unwrap());
        f
    }

    #[test]
    fn sealed_values_open_only_as_themselves_and_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (key_file(dir.path(), "a.key"), key_file(dir.path(), "b.key"));
        assert!(!generate_key_file(&a).unwrap(), "an existing key is kept");
        let ring = Keyring::load(&a, &[]).unwrap();
        let sealed = ring.seal(Some("etl"), "DB", "hunter22");
        assert!(!sealed.ciphertext.windows(8).any(|w| w == b"hunter22"));
        assert_eq!(ring.open(&sealed).unwrap().value, "hunter22");
        // Another name, another sandbox, cluster-wide: the associated data differs.
        for (sandbox, name) in [(Some("etl"), "DB2"), (Some("web"), "DB"), (None, "DB")] {
            let moved = SealedSecret { sandbox: sandbox.map(str::to_owned), name: name.into(), ..sealed.clone() };
            let e = ring.open(&moved).unwrap_err();
            assert!(e.contains("changed or moved") && !e.contains("hunter22"), "{e}");
        }
        // Another key: said by id; with the old one as previous, it opens, and new values use the new key.
        let other = Keyring::load(&b, &[]).unwrap();
        let e = other.open(&sealed).unwrap_err();
        assert!(e.contains(ring.current_id()) && e.contains("does not have"), "{e}");
        let rotated = Keyring::load(&b, std::slice::from_ref(&a)).unwrap();
        assert_eq!(rotated.open(&sealed).unwrap().value, "hunter22");
        assert_eq!(rotated.seal(None, "X", "value").key_id, other.current_id());
        assert_ne!(ring.current_id(), other.current_id());
        assert_eq!(ring.current_id().len(), 16);
    }

    #[test]
    fn key_files_are_checked_and_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.key");
        let e = Keyring::load(&missing, &[]).unwrap_err();
        assert!(e.contains("none.key"), "{e}");
        let short = dir.path().join("short.key");
        std::fs::write(&short, "abcd\n").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = Keyring::load(&short, &[]).unwrap_err();
        assert!(e.contains("short.key") && e.contains("64 hex digits"), "{e}");
        let open = key_file(dir.path(), "open.key");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = Keyring::load(&open, &[]).unwrap_err();
        assert!(e.contains("open.key") && e.contains("chmod 600"), "{e}");
        let good = key_file(dir.path(), "good.key");
        let mode = std::fs::metadata(&good).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = Keyring::load(&good, &[open]).unwrap_err();
        assert!(e.contains("open.key"), "a previous key is checked too: {e}");
    }

    #[test]
    fn values_are_bounded_and_never_quoted() {
        assert!(check_value("abcd").is_ok());
        let e = check_value("abc").unwrap_err().to_string();
        assert!(e.contains("at least 4") && !e.contains("abc`"), "{e}");
        assert!(check_value(&"x".repeat(MAX_VALUE_BYTES + 1)).is_err());
        assert!(check_value("ab\0cd").is_err());
        assert!(check_name("DB_PASS").is_ok() && check_name("_rewrap").is_err() && check_name("a b").is_err());
    }
}
