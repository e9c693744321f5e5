//! TLS to PostgreSQL, with libpq's `sslmode` meanings, over rustls.
//!
//! tokio-postgres knows `sslmode` `disable`, `prefer` and `require` and refuses the rest of
//! libpq's TLS parameters, so [`split_url`] takes `sslmode` and `sslrootcert` out of the store
//! URL first and hands tokio-postgres the URL with `require` for the two verifying modes (so a
//! server without TLS is refused), and the checks themselves are this module's verifier:
//!
//! | `sslmode` | TLS | certificate checked |
//! | --- | --- | --- |
//! | `disable` | never | - |
//! | `prefer` (the default, as in libpq) | if the server offers it | no |
//! | `require` | always | no; but with `sslrootcert` given, as `verify-ca` (as libpq does) |
//! | `verify-ca` | always | chains to `sslrootcert` (or the system's roots) |
//! | `verify-full` | always | that, and issued for the host name in the URL |
//!
//! `sslrootcert` is a PEM file, or `system` for the system's roots; without it the verifying
//! modes use the system's roots (libpq would look for `~/.postgresql/root.crt`). Client
//! certificates (`sslcert`, `sslkey`) and revocation lists (`sslcrl`) are not supported and are
//! refused by name; `sslsni` is accepted (SNI is always sent for a host name).
//!
//! The connector is used for every connection the store opens: the pool's, the lease
//! connection, node sessions, and query cancels.

use crate::{Result, StoreError};
use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// libpq's `sslmode` values that this store honours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<SslMode> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(StoreError::Config(
                    "store.url: sslmode=allow is not supported; use prefer (TLS when the server offers it) or disable"
                        .into(),
                ))
            }
            other => {
                return Err(StoreError::Config(format!(
                    "store.url: sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
                )))
            }
        })
    }

    /// What tokio-postgres is told: it only needs to know whether TLS is required.
    fn for_tokio_postgres(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "require",
        }
    }
}

/// Where the verifying modes find the certificates they trust.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// The system's roots (`sslrootcert=system`, or none given).
    System,
    File(PathBuf),
}

/// A store URL with the TLS parameters tokio-postgres does not know taken out.
#[derive(Debug, PartialEq, Eq)]
pub struct SplitUrl {
    /// For tokio-postgres: the URL with `sslrootcert` removed and `sslmode` one it knows.
    pub url: String,
    /// What the URL asked for; `sslmode=require` with an `sslrootcert` file is `VerifyCa`.
    pub mode: SslMode,
    /// `None` unless the mode verifies certificates.
    pub root: Option<RootCert>,
}

/// Takes `sslmode` and `sslrootcert` out of a `postgres://` URL's query.
pub fn split_url(url: &str) -> Result<SplitUrl> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut kept = Vec::new();
    let (mut mode, mut root) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = percent_decode_str(value).decode_utf8_lossy();
        match key {
            "sslmode" => mode = Some(SslMode::parse(&decoded)?),
            "sslrootcert" => {
                root = Some(match decoded.as_ref() {
                    "system" => RootCert::System,
                    "" => return Err(StoreError::Config("store.url: sslrootcert is empty; give the path of a PEM file of CA certificates, or `system`".into())),
                    path => RootCert::File(PathBuf::from(path)),
                })
            }
            // Server Name Indication is always sent for a host name, as libpq's default does.
            "sslsni" => {}
            "sslcrl" | "sslcrldir" => {
                return Err(StoreError::Config(format!(
                    "store.url: `{key}` is not supported: certificate revocation lists are not checked; remove it"
                )))
            }
            "sslcert" | "sslkey" | "sslpassword" => {
                return Err(StoreError::Config(format!(
                    "store.url: `{key}` is not supported: shoal verifies the server (sslmode, sslrootcert) but does not send a client certificate; authenticate with a password instead"
                )))
            }
            _ => kept.push(pair),
        }
    }
    let mode = match (mode.unwrap_or(SslMode::Prefer), &root) {
        // libpq: "if a root CA file exists, sslmode=require behaves like verify-ca".
        (SslMode::Require, Some(RootCert::File(_))) => SslMode::VerifyCa,
        (mode, _) => mode,
    };
    let root = match mode {
        SslMode::VerifyCa | SslMode::VerifyFull => Some(root.unwrap_or(RootCert::System)),
        _ => None,
    };
    let sslmode = format!("sslmode={}", mode.for_tokio_postgres());
    kept.push(&sslmode);
    Ok(SplitUrl { url: format!("{base}?{}", kept.join("&")), mode, root })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(root: &RootCert) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                StoreError::Config(format!("store.url: sslrootcert {}: cannot read it: {e}", path.display()))
            })?;
            let certs =
                CertificateDer::pem_slice_iter(&pem).collect::<std::result::Result<Vec<_>, _>>().map_err(|e| {
                    StoreError::Config(format!("store.url: sslrootcert {}: not a valid PEM file: {e}", path.display()))
                })?;
            for cert in certs {
                store.add(cert).map_err(|e| {
                    StoreError::Config(format!(
                        "store.url: sslrootcert {}: a certificate in it is unusable: {e}",
                        path.display()
                    ))
                })?;
            }
            if store.is_empty() {
                return Err(StoreError::Config(format!(
                    "store.url: sslrootcert {}: holds no PEM certificate (a block starting -----BEGIN CERTIFICATE-----)",
                    path.display()
                )));
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(StoreError::Config(
                    "store.url: the verifying sslmode found no system root certificates; give sslrootcert=PATH of the CA that signed the server's certificate".into(),
                ));
            }
        }
    }
    Ok(store)
}

/// Checks the server's certificate as the mode asks: not at all, chain only, or chain and name.
#[derive(Debug)]
struct Verifier {
    /// `None`: any certificate (prefer, require); the handshake's signatures are still checked.
    roots: Option<RootCertStore>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
            if self.check_name {
                rustls::client::verify_server_name(&cert, server_name)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The store's TLS connector for tokio-postgres (`MakeTlsConnect`), built once per store from
/// its URL. With `sslmode=disable` tokio-postgres never calls it.
#[derive(Clone)]
pub struct PgTls {
    config: Arc<rustls::ClientConfig>,
    /// Where the trusted roots came from, for the error when a chain does not lead to them.
    trusted: Arc<str>,
}

impl PgTls {
    pub fn new(mode: SslMode, root: Option<&RootCert>) -> Result<PgTls> {
        let provider = provider();
        let roots = match (mode, root) {
            (SslMode::VerifyCa | SslMode::VerifyFull, Some(root)) => Some(roots(root)?),
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => Some(roots(&RootCert::System)?),
            _ => None,
        };
        let trusted = match root {
            Some(RootCert::File(path)) => format!("sslrootcert {}", path.display()),
            _ => "the system's roots".to_owned(),
        };
        let verifier = Verifier { roots, check_name: mode == SslMode::VerifyFull, provider: provider.clone() };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Config(format!("cannot set up TLS to PostgreSQL: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(PgTls { config: Arc::new(config), trusted: Arc::from(trusted) })
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<PgTlsConnect> {
        // An empty name (a Unix socket) fails only if TLS is actually tried.
        Ok(PgTlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            domain: domain.to_owned(),
            trusted: self.trusted.clone(),
        })
    }
}

pub struct PgTlsConnect {
    connector: tokio_rustls::TlsConnector,
    domain: String,
    trusted: Arc<str>,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = ServerName::try_from(self.domain.clone()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("`{}` is not a host name or IP address to check a certificate against", self.domain),
                )
            })?;
            let unknown_issuer = |e: &io::Error| {
                let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
                matches!(inner, Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)))
            };
            match self.connector.connect(name, stream).await {
                Ok(stream) => Ok(PgTlsStream(stream)),
                // rustls says only "UnknownIssuer"; say what the chain was checked against.
                Err(e) if unknown_issuer(&e) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the server's certificate is not signed by a CA of {} (invalid peer certificate: UnknownIssuer)",
                        self.trusted
                    ),
                )),
                Err(e) => Err(e),
            }
        })
    }
}

/// A TLS connection to PostgreSQL. It offers no channel binding, so SCRAM runs without it
/// (tokio-postgres' default `channel_binding=prefer`).
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> SplitUrl {
        split_url(url).unwrap()
    }

    #[test]
    fn tokio_postgres_gets_only_the_modes_it_knows() {
        let s = split("postgres://u:p@h:5432/db");
        assert_eq!(
            (s.url.as_str(), s.mode, s.root),
            ("postgres://u:p@h:5432/db?sslmode=prefer", SslMode::Prefer, None)
        );
        let s = split("postgres://u@h/db?sslmode=disable&application_name=x");
        assert_eq!(
            (s.url.as_str(), s.mode),
            ("postgres://u@h/db?application_name=x&sslmode=disable", SslMode::Disable)
        );
        let s = split("postgres://u@h/db?sslmode=require");
        assert_eq!((s.url.as_str(), s.mode, s.root), ("postgres://u@h/db?sslmode=require", SslMode::Require, None));
        let s =
            split("postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20dir%2Froot.pem&connect_timeout=3");
        assert_eq!(s.url, "postgres://u@h/db?connect_timeout=3&sslmode=require");
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root, Some(RootCert::File("/etc/ca dir/root.pem".into())));
        let s = split("postgres://u@h/db?sslmode=verify-ca");
        assert_eq!((s.mode, s.root), (SslMode::VerifyCa, Some(RootCert::System)));
        let s = split("postgres://u@h/db?sslrootcert=system&sslmode=verify-full");
        assert_eq!((s.mode, s.root), (SslMode::VerifyFull, Some(RootCert::System)));
        // libpq: require with a root certificate file verifies the chain.
        let s = split("postgres://u@h/db?sslmode=require&sslrootcert=/ca.pem");
        assert_eq!((s.mode, s.root), (SslMode::VerifyCa, Some(RootCert::File("/ca.pem".into()))));
        // Without a verifying mode, a root certificate is not used.
        let s = split("postgres://u@h/db?sslrootcert=/ca.pem&sslmode=prefer");
        assert_eq!((s.url.as_str(), s.mode, s.root), ("postgres://u@h/db?sslmode=prefer", SslMode::Prefer, None));
        // What comes out is a URL tokio-postgres takes.
        for url in [
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/x.pem",
            "postgresql://u@h1,h2/db?target_session_attrs=read-write&sslmode=verify-ca",
        ] {
            let out = split(url).url;
            out.parse::<tokio_postgres::Config>().unwrap_or_else(|e| panic!("{out}: {e}"));
        }
    }

    #[test]
    fn unknown_modes_and_client_certificates_are_refused_by_name() {
        for (url, needle) in [
            ("postgres://h/db?sslmode=verify_full", "sslmode `verify_full` is not one of"),
            ("postgres://h/db?sslmode=allow", "sslmode=allow is not supported"),
            ("postgres://h/db?sslmode=require&sslcert=/c.pem", "`sslcert` is not supported"),
            ("postgres://h/db?sslkey=/k.pem", "`sslkey` is not supported"),
            ("postgres://h/db?sslcrl=/crl.pem", "revocation lists are not checked"),
            ("postgres://h/db?sslmode=verify-ca&sslrootcert=", "sslrootcert is empty"),
        ] {
            let e = split_url(url).unwrap_err().to_string();
            assert!(e.contains(needle), "{url}: {e}");
        }
    }

    #[test]
    fn a_root_file_that_is_missing_or_not_pem_is_named() {
        let dir = std::env::temp_dir().join(format!("shoal-pgtls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "nothing here\n").unwrap();
        let e = PgTls::new(SslMode::VerifyFull, Some(&RootCert::File(junk.clone()))).err().unwrap().to_string();
        assert!(e.contains("holds no PEM certificate") && e.contains(&junk.display().to_string()), "{e}");
        let missing = dir.join("missing.pem");
        let e = PgTls::new(SslMode::VerifyCa, Some(&RootCert::File(missing.clone()))).err().unwrap().to_string();
        assert!(e.contains("cannot read it") && e.contains(&missing.display().to_string()), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
