//! TLS for the API: the node's certificate and key (`http.tls`), read at start with errors that
//! name the file and what is wrong with it, and re-read while the node runs when their files
//! change, so certificates rotate without a restart; and the CA bundle (`cluster.tls_ca`) that
//! the node verifies other nodes against when it forwards to them.
//!
//! The certificate in use is behind an [`ArcSwap`]: each handshake takes the current one
//! ([`CertResolver`] is rustls's `ResolvesServerCert`), and a reload swaps in the new pair
//! without a lock on the handshake path. Connections already open keep the certificate they
//! began with. A reload that fails (a file half written, a key that does not match its
//! certificate, a file gone) keeps the certificate in use and says why, as the `tls-reload`
//! worker's error; the next change of either file is tried again, so a rotation that writes
//! the certificate first and the key second is picked up once the key is there.

use crate::config::TlsFiles;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often the certificate and key files are looked at (their size, mtime and inode; read
/// again only when one changed).
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The one crypto provider: ring, which reqwest's rustls already links.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp { len: m.len(), modified: m.modified().ok(), inode: m.ino() })
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{what} {}: no such file", path.display()),
        _ => format!("{what} {}: cannot read it: {e}", path.display()),
    })
}

/// The certificates of a PEM file (`-----BEGIN CERTIFICATE-----` blocks), at least one.
fn certificates(what: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: not a valid PEM file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: holds no PEM certificate (a block starting -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// Reads and checks a certificate chain and its key: both PEM, the key one rustls can sign
/// with, and the key the one the first certificate is for.
pub fn load_pair(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let (cert_path, key_path) = (&files.cert, &files.key);
    let chain = certificates("http.tls.cert", cert_path, &read("http.tls.cert", cert_path)?)?;
    let key_pem = read("http.tls.key", key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "http.tls.key {}: holds no PEM private key (a block starting -----BEGIN PRIVATE KEY-----, or an RSA or EC one)",
            key_path.display()
        ),
        e => format!("http.tls.key {}: not a valid PEM private key: {e}", key_path.display()),
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "http.tls.key {} does not match the certificate in http.tls.cert {}: give the key the certificate was issued for",
            key_path.display(),
            cert_path.display()
        ),
        e => format!(
            "http.tls.key {} or http.tls.cert {}: unusable: {e}",
            key_path.display(),
            cert_path.display()
        ),
    })
}

/// Reads `cluster.tls_ca`, checking that it holds at least one PEM certificate; returns the
/// file's bytes (the forwarder's HTTP client parses them again).
pub fn load_ca(path: &Path) -> Result<Vec<u8>, String> {
    let pem = read("cluster.tls_ca", path)?;
    certificates("cluster.tls_ca", path, &pem)?;
    Ok(pem)
}

/// The node's certificate, swapped when its files change.
pub struct CertResolver {
    files: TlsFiles,
    current: ArcSwap<CertifiedKey>,
    /// The files as they were at the last load, good or failed: a change of either is what
    /// makes the next load.
    seen: Mutex<(Option<Stamp>, Option<Stamp>)>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver").field("cert", &self.files.cert).field("key", &self.files.key).finish()
    }
}

impl CertResolver {
    /// Loads the pair once; an error is a start-up error naming the file.
    pub fn load(files: &TlsFiles) -> Result<CertResolver, String> {
        let seen = (stamp(&files.cert), stamp(&files.key));
        let pair = load_pair(files)?;
        Ok(CertResolver { files: files.clone(), current: ArcSwap::from_pointee(pair), seen: Mutex::new(seen) })
    }

    /// Re-reads the pair if either file changed since the last look. `Ok(true)`: a new
    /// certificate is in use. A failed load keeps the old one; it is tried again when either
    /// file changes again. Blocking (file reads): call it off the async threads.
    pub fn reload(&self) -> Result<bool, String> {
        let now = (stamp(&self.files.cert), stamp(&self.files.key));
        {
            let mut seen = self.seen.lock();
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        match load_pair(&self.files) {
            Ok(pair) => {
                self.current.store(Arc::new(pair));
                tracing::info!(cert = %self.files.cert.display(), "re-read the TLS certificate: new connections use it");
                Ok(true)
            }
            Err(e) => Err(format!("cannot reload the TLS certificate, still serving the previous one: {e}")),
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The acceptor for the API's connections: HTTP/1.1 only (what the server speaks), the
/// certificate from `resolver`.
pub fn acceptor(resolver: Arc<CertResolver>) -> Result<tokio_rustls::TlsAcceptor, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_non_pem_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let e = load_pair(&TlsFiles { cert: missing.clone(), key: junk.clone() }).unwrap_err();
        assert_eq!(e, format!("http.tls.cert {}: no such file", missing.display()));
        let e = load_pair(&TlsFiles { cert: junk.clone(), key: junk.clone() }).unwrap_err();
        assert!(e.starts_with(&format!("http.tls.cert {}: holds no PEM certificate", junk.display())), "{e}");
        let e = load_ca(&junk).unwrap_err();
        assert!(e.starts_with(&format!("cluster.tls_ca {}: holds no PEM certificate", junk.display())), "{e}");
        let e = load_ca(dir.path()).unwrap_err();
        assert!(e.contains("cannot read it"), "{e}");
    }
}
