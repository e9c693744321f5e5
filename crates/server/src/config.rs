//! Configuration: one TOML file plus `SHOAL_<SECTION>_<KEY>` environment overrides, validated
//! once into [`Config`], whose values cannot be invalid.
//!
//! Every key is documented in `docs/configuration.md`; unknown keys are errors that name the
//! key, because a misspelt key silently ignored is a setting the operator thinks they have.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}, line {line}, column {column}: {message}")]
    Parse { path: String, line: usize, column: usize, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The file's shape. Every field is optional here; defaults live in [`Config::from_raw`].
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct Raw {
    node_id: Option<String>,
    data_dir: Option<PathBuf>,
    tags: Option<Vec<String>>,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    cluster: RawCluster,
    #[serde(default)]
    executor: RawExecutor,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    sandboxes: RawSandboxes,
    #[serde(default)]
    audit: RawAudit,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    retention: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct RawSandboxes {
    allowed_roots: Option<Vec<PathBuf>>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
    advertise: Option<String>,
    max_request_bytes: Option<u64>,
    max_upload_bytes: Option<u64>,
    header_read_timeout: Option<String>,
    body_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    write_timeout: Option<String>,
    max_connections: Option<u32>,
    hosts: Option<Vec<String>>,
    metrics_public: Option<bool>,
    session_ttl: Option<String>,
    tls: Option<RawTls>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
    session_url: Option<String>,
    pool_size: Option<u32>,
    replicas: Option<Vec<String>>,
    replica_max_lag: Option<String>,
    replica_max_lag_bytes: Option<u64>,
    route_to_primary: Option<Vec<String>>,
    route_to_replica: Option<Vec<String>>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    secret: Option<String>,
    lease_ttl: Option<String>,
    gossip_listen: Option<String>,
    gossip_advertise: Option<String>,
    gossip_interval: Option<String>,
    seeds: Option<Vec<String>>,
    multicast: Option<RawMulticast>,
    drain_deadline: Option<String>,
    store_outage_grace: Option<String>,
    tls_ca: Option<PathBuf>,
    secrets_key_file: Option<PathBuf>,
    secrets_previous_key_files: Option<Vec<PathBuf>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawMulticast {
    group: String,
    interface: String,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct RawExecutor {
    slots: Option<u32>,
    kill_grace: Option<String>,
    max_output_bytes: Option<u64>,
    poll_interval: Option<String>,
    supervisor: Option<PathBuf>,
    cpu_limit: Option<f64>,
    memory_limit: Option<f64>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A validated node configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// `None`: generated once and kept in `data_dir/node_id`.
    pub node_id: Option<shoal_core::NodeId>,
    pub data_dir: PathBuf,
    pub tags: Vec<String>,
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub cluster: ClusterConfig,
    pub executor: ExecutorConfig,
    pub log: LogConfig,
    pub sandboxes: SandboxesConfig,
    pub audit: AuditConfig,
}

#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// How long the audit trail keeps a row (at least 1 s; default 90 days).
    pub retention: Duration,
}

#[derive(Clone, Debug)]
pub struct SandboxesConfig {
    /// Absolute folders sandbox roots must lie under; `None`: the data directory.
    pub allowed_roots: Option<Vec<PathBuf>>,
}

#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// `None`: `http://` and the address actually bound (so port 0 works).
    pub advertise: Option<String>,
    pub max_request_bytes: usize,
    pub max_upload_bytes: u64,
    /// From accept (or a later request's first byte) to the end of the request head.
    pub header_read_timeout: Duration,
    /// For a request body up to 1 MiB; each further MiB gets as long again.
    pub body_read_timeout: Duration,
    /// How long a connection with no request in flight stays open.
    pub idle_timeout: Duration,
    /// How long a write to a connection may make no progress (its client not reading) before
    /// the connection is closed, whether or not a request is in flight.
    pub write_timeout: Duration,
    /// Connections served at once; beyond it, 503 `too_many_connections` and close.
    pub max_connections: usize,
    /// Host names the API answers to besides IP addresses, `localhost` and the advertised
    /// host (a load balancer's name, say).
    pub hosts: Vec<String>,
    /// Whether `/metrics` is served without a credential (for a Prometheus that sends none).
    pub metrics_public: bool,
    /// How long a person's login session lasts (5 minutes to 30 days).
    pub session_ttl: Duration,
    /// `None`: plain HTTP. The files are read at start and again whenever they change.
    pub tls: Option<TlsFiles>,
}

/// The API's certificate chain and private key, PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub url: String,
    /// Where node sessions (an advisory lock and `LISTEN`) connect when `url` goes through a
    /// pooler in transaction mode: the same database, past the pooler (PostgreSQL only).
    pub session_url: Option<String>,
    pub pool_size: usize,
    /// Read replicas' URLs (PostgreSQL only).
    pub replicas: Vec<String>,
    /// A replica further behind than this, in time or in bytes of WAL, takes no reads.
    pub replica_max_lag: Duration,
    pub replica_max_lag_bytes: u64,
    /// Requests (`"METHOD /api/v1/path"`) whose reads always go to the primary.
    pub route_to_primary: regex::RegexSet,
    /// Requests whose reads go to a replica whatever their method (unless the list above
    /// matches them too).
    pub route_to_replica: regex::RegexSet,
}

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// `None`: the secret generated once and kept in the store.
    pub secret: Option<String>,
    pub lease_ttl: Duration,
    /// Port 0 picks a free port; the store's node registry tells the others.
    pub gossip_listen: SocketAddr,
    pub gossip_advertise: Option<SocketAddr>,
    pub gossip_interval: Duration,
    /// Well-known `host:port` addresses, re-resolved while the node runs.
    pub seeds: Vec<String>,
    pub multicast: Option<Multicast>,
    /// How long a drain waits for running attempts before handing them back.
    pub drain_deadline: Duration,
    /// How long a node keeps its attempts running while every member of the cluster reports
    /// the store unreachable (docs/design/store-outage.md); zero: never, kill at once as a
    /// node cut off alone does.
    pub store_outage_grace: Duration,
    /// The CA bundle (PEM) other nodes' certificates are verified against when this node
    /// forwards to them over https; `None`: the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// The key that seals job secrets; `None`: `data_dir/secrets.key`, made on a store that
    /// holds no secret yet (`shoal_service::secrets::Keyring::open_for_node`).
    pub secrets_key_file: Option<PathBuf>,
    /// Keys that secrets may still be sealed with while the key is rotated; they only open.
    pub secrets_previous_key_files: Vec<PathBuf>,
}

#[derive(Clone, Copy, Debug)]
pub struct Multicast {
    pub group: std::net::SocketAddrV4,
    pub interface: std::net::Ipv4Addr,
}

#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    pub slots: u32,
    pub kill_grace: Duration,
    /// Output kept per attempt; beyond it, output is counted and dropped.
    pub max_output_bytes: u64,
    pub poll_interval: Duration,
    /// The binary that understands `__supervise`; `None`: this executable.
    pub supervisor: Option<PathBuf>,
    /// Machine CPU use (percent) at or above which this node takes no new work.
    pub cpu_limit: Option<f64>,
    /// Machine memory use (percent) at or above which this node takes no new work.
    pub memory_limit: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

/// The sections environment overrides may name, and the keys each has.
const SECTIONS: &[(&str, &[&str])] = &[
    (
        "http",
        &[
            "listen",
            "advertise",
            "max_request_bytes",
            "max_upload_bytes",
            "header_read_timeout",
            "body_read_timeout",
            "idle_timeout",
            "write_timeout",
            "max_connections",
            "hosts",
            "metrics_public",
            "session_ttl",
            "tls",
        ],
    ),
    (
        "store",
        &[
            "url",
            "session_url",
            "pool_size",
            "replicas",
            "replica_max_lag",
            "replica_max_lag_bytes",
            "route_to_primary",
            "route_to_replica",
        ],
    ),
    (
        "cluster",
        &[
            "secret",
            "lease_ttl",
            "gossip_listen",
            "gossip_advertise",
            "gossip_interval",
            "seeds",
            "multicast",
            "drain_deadline",
            "store_outage_grace",
            "tls_ca",
            "secrets_key_file",
            "secrets_previous_key_files",
        ],
    ),
    (
        "executor",
        &["slots", "kill_grace", "max_output_bytes", "poll_interval", "supervisor", "cpu_limit", "memory_limit"],
    ),
    ("log", &["level", "format"]),
    ("sandboxes", &["allowed_roots"]),
    ("audit", &["retention"]),
];
const TOP_LEVEL: &[&str] = &["node_id", "data_dir", "tags"];

/// Environment variables shoal sets for jobs or reads as a client; never config overrides.
const NOT_CONFIG: &[&str] = &[
    "SHOAL_EXECUTION_ID",
    "SHOAL_ATTEMPT",
    "SHOAL_FENCING_TOKEN",
    "SHOAL_SANDBOX",
    "SHOAL_SANDBOX_ROOT",
    "SHOAL_SERVER",
    "SHOAL_CONFIG",
    "SHOAL_TOKEN",
    "SHOAL_TOKEN_FILE",
    "SHOAL_CA_FILE",
];

fn parse_duration(what: &str, v: &Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(t) => shoal_core::duration::parse(t).map_err(|m| ConfigError::Invalid(format!("{what}: {m}"))),
    }
}

/// Turns an environment value into TOML: arrays, numbers and booleans as written, anything
/// else as a string (so `SHOAL_STORE_URL=postgres://...` needs no quoting).
fn env_value(text: &str) -> toml::Value {
    let probe = format!("v = {text}");
    match toml::from_str::<toml::Table>(&probe) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(text.to_owned())),
        Err(_) => toml::Value::String(text.to_owned()),
    }
}

impl Config {
    /// Loads the file (if any) and applies overrides from `env` (pass `std::env::vars()`).
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let (text, shown) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|e| ConfigError::Read { path: p.to_owned(), source: e })?,
                p.display().to_string(),
            ),
            None => (String::new(), "(none)".to_owned()),
        };
        Self::parse(&text, &shown, env)
    }

    pub fn parse(
        text: &str,
        shown: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let parse_err = |e: toml::de::Error, text: &str| {
            let (line, column) = shoal_core::job::line_col(text, e.span().map_or(0, |s| s.start));
            ConfigError::Parse { path: shown.to_owned(), line, column, message: e.message().trim().to_owned() }
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| parse_err(e, text))?;
        // Validate the file on its own first, so its errors point at its lines.
        if let Err(e) = toml::from_str::<Raw>(text) {
            return Err(parse_err(e, text));
        }
        let overrides: BTreeMap<String, String> = env.into_iter().filter(|(k, _)| k.starts_with("SHOAL_")).collect();
        for (var, value) in overrides {
            if NOT_CONFIG.contains(&var.as_str()) {
                continue;
            }
            let rest = var["SHOAL_".len()..].to_ascii_lowercase();
            if TOP_LEVEL.contains(&rest.as_str()) {
                let v = if rest == "node_id" || rest == "data_dir" {
                    toml::Value::String(value)
                } else {
                    env_value(&value)
                };
                table.insert(rest, v);
                continue;
            }
            let Some((section, keys)) = SECTIONS.iter().find(|(s, _)| rest.starts_with(&format!("{s}_"))) else {
                // SHOAL_ variables of other tools or future versions are none of our business,
                // but a variable that looks like ours and is misspelt deserves an error below.
                continue;
            };
            let key = &rest[section.len() + 1..];
            if !keys.contains(&key) {
                return Err(ConfigError::Env {
                    var,
                    message: format!("[{section}] has no key `{key}`; its keys are {}", keys.join(", ")),
                });
            }
            let v = if matches!(
                key,
                "url"
                    | "secret"
                    | "listen"
                    | "advertise"
                    | "gossip_listen"
                    | "gossip_advertise"
                    | "supervisor"
                    | "level"
                    | "format"
                    | "tls_ca"
                    | "secrets_key_file"
            ) {
                toml::Value::String(value)
            } else {
                env_value(&value)
            };
            let entry = table.entry(section.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
            match entry {
                toml::Value::Table(t) => {
                    t.insert(key.to_owned(), v);
                }
                _ => return Err(ConfigError::Invalid(format!("`{section}` must be a table"))),
            }
        }
        let raw = Raw::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::Invalid(format!("after environment overrides: {}", e.message().trim())))?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: Raw) -> Result<Config, ConfigError> {
        let node_id =
            raw.node_id.as_deref().map(shoal_core::NodeId::parse).transpose().map_err(ConfigError::Invalid)?;
        let data_dir = raw.data_dir.unwrap_or_else(|| PathBuf::from("./data"));
        let tags = raw.tags.unwrap_or_default();
        if let Some(t) = tags.iter().find(|t| t.is_empty() || t.contains(char::is_whitespace)) {
            return Err(ConfigError::Invalid(format!("tag `{t}` is empty or contains whitespace")));
        }
        let listen_text = raw.http.listen.unwrap_or_else(|| "127.0.0.1:7700".into());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "http.listen `{listen_text}` is not an IP address and port, like 127.0.0.1:7700 or 0.0.0.0:7700"
            ))
        })?;
        let tls = raw.http.tls.map(|t| TlsFiles { cert: t.cert, key: t.key });
        if let Some(a) = &raw.http.advertise {
            if !(a.starts_with("http://") || a.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "http.advertise `{a}` must be a URL starting with http:// or https://"
                )));
            }
            // The advertised URL is how other nodes and clients reach this one: its scheme
            // must be what the node speaks.
            if tls.is_some() && a.starts_with("http://") {
                return Err(ConfigError::Invalid(format!(
                    "http.advertise `{a}` is plain HTTP, but http.tls is set, so this node serves only HTTPS; advertise https://{}",
                    &a["http://".len()..]
                )));
            }
            if tls.is_none() && a.starts_with("https://") {
                return Err(ConfigError::Invalid(format!(
                    "http.advertise `{a}` is HTTPS, but http.tls is not set, so this node serves plain HTTP; set http.tls = {{ cert = \"...\", key = \"...\" }} or advertise http://{}",
                    &a["https://".len()..]
                )));
            }
        }
        let max_request_bytes = raw.http.max_request_bytes.unwrap_or(1024 * 1024);
        if !(1024..=64 * 1024 * 1024).contains(&max_request_bytes) {
            return Err(ConfigError::Invalid("http.max_request_bytes must be from 1024 to 67108864".into()));
        }
        let http_timeout = |key: &str, v: &Option<String>, default: Duration, max: Duration, max_text: &str| {
            let what = format!("http.{key}");
            let d = parse_duration(&what, v, default)?;
            if d < Duration::from_millis(100) || d > max {
                return Err(ConfigError::Invalid(format!("{what} must be from 100ms to {max_text}")));
            }
            Ok(d)
        };
        let header_read_timeout = http_timeout(
            "header_read_timeout",
            &raw.http.header_read_timeout,
            Duration::from_secs(10),
            Duration::from_secs(300),
            "5m",
        )?;
        let body_read_timeout = http_timeout(
            "body_read_timeout",
            &raw.http.body_read_timeout,
            Duration::from_secs(30),
            Duration::from_secs(3600),
            "1h",
        )?;
        let idle_timeout = http_timeout(
            "idle_timeout",
            &raw.http.idle_timeout,
            Duration::from_secs(60),
            Duration::from_secs(3600),
            "1h",
        )?;
        let write_timeout = http_timeout(
            "write_timeout",
            &raw.http.write_timeout,
            Duration::from_secs(30),
            Duration::from_secs(3600),
            "1h",
        )?;
        let session_ttl = parse_duration("http.session_ttl", &raw.http.session_ttl, Duration::from_secs(12 * 3600))?;
        if session_ttl < Duration::from_secs(300) || session_ttl > Duration::from_secs(30 * 86400) {
            return Err(ConfigError::Invalid("http.session_ttl must be from 5m to 30d".into()));
        }
        let hosts = raw.http.hosts.unwrap_or_default();
        if let Some(h) =
            hosts.iter().find(|h| h.is_empty() || h.contains(['/', ':', ' ']) || h.contains(char::is_control))
        {
            return Err(ConfigError::Invalid(format!(
                "http.hosts: `{h}` is not a host name; give names such as `shoal.example.com`, without scheme, port or path"
            )));
        }
        let max_connections = raw.http.max_connections.unwrap_or(1024);
        if !(1..=1_000_000).contains(&max_connections) {
            return Err(ConfigError::Invalid("http.max_connections must be from 1 to 1000000".into()));
        }
        let url = raw.store.url.unwrap_or_else(|| format!("sqlite://{}", data_dir.join("shoal.db").display()));
        let session_url = raw.store.session_url;
        match &session_url {
            Some(_) if url.starts_with("sqlite://") => {
                return Err(ConfigError::Invalid(
                    "store.session_url is set but the store is SQLite: it is for PostgreSQL behind a pooler in transaction mode; remove store.session_url or use a postgres:// store.url".into(),
                ))
            }
            Some(s) if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) => {
                return Err(ConfigError::Invalid(format!(
                    "store.session_url: `{}` is not a postgres:// URL; give the URL of the same database as store.url, past the pooler",
                    shoal_store::redact(s)
                )))
            }
            _ => {}
        }
        let replicas = raw.store.replicas.unwrap_or_default();
        if url.starts_with("sqlite://") && !replicas.is_empty() {
            return Err(ConfigError::Invalid(
                "store.replicas is set but the store is SQLite: read replicas are a PostgreSQL feature; remove store.replicas or use a postgres:// store.url".into(),
            ));
        }
        if let Some(r) = replicas.iter().find(|r| !(r.starts_with("postgres://") || r.starts_with("postgresql://"))) {
            return Err(ConfigError::Invalid(format!(
                "store.replicas: `{}` is not a postgres:// URL",
                shoal_store::redact(r)
            )));
        }
        let replica_max_lag =
            parse_duration("store.replica_max_lag", &raw.store.replica_max_lag, Duration::from_secs(5))?;
        if replica_max_lag > Duration::from_secs(3600) {
            return Err(ConfigError::Invalid("store.replica_max_lag must be at most 1h".into()));
        }
        let replica_max_lag_bytes = raw.store.replica_max_lag_bytes.unwrap_or(16 * 1024 * 1024);
        let routes = |key: &str, list: Option<Vec<String>>| {
            let list = list.unwrap_or_default();
            for (i, p) in list.iter().enumerate() {
                if let Err(e) = regex::Regex::new(p) {
                    return Err(ConfigError::Invalid(format!(
                        "store.{key}[{i}]: `{p}` is not a regular expression: {e}"
                    )));
                }
            }
            regex::RegexSet::new(&list).map_err(|e| ConfigError::Invalid(format!("store.{key}: {e}")))
        };
        let route_to_primary = routes("route_to_primary", raw.store.route_to_primary)?;
        let route_to_replica = routes("route_to_replica", raw.store.route_to_replica)?;
        let pool_size = raw.store.pool_size.unwrap_or(8);
        if !(1..=256).contains(&pool_size) {
            return Err(ConfigError::Invalid("store.pool_size must be from 1 to 256".into()));
        }
        let lease_ttl = parse_duration("cluster.lease_ttl", &raw.cluster.lease_ttl, Duration::from_secs(5))?;
        if lease_ttl < Duration::from_secs(2) || lease_ttl > Duration::from_secs(600) {
            return Err(ConfigError::Invalid("cluster.lease_ttl must be from 2s to 10m".into()));
        }
        if let Some(secret) = &raw.cluster.secret {
            if secret.len() < 16 {
                return Err(ConfigError::Invalid(
                    "cluster.secret is shorter than 16 characters; use a long random value, e.g. from `openssl rand -hex 32`".into(),
                ));
            }
        }
        let gossip_listen = match &raw.cluster.gossip_listen {
            None => SocketAddr::new(listen.ip(), 0),
            Some(t) => t.parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "cluster.gossip_listen `{t}` is not an IP address and port, like 127.0.0.1:7800 (port 0 picks a free one)"
                ))
            })?,
        };
        let gossip_advertise = raw
            .cluster
            .gossip_advertise
            .as_deref()
            .map(|t| {
                t.parse::<SocketAddr>().map_err(|_| {
                    ConfigError::Invalid(format!(
                        "cluster.gossip_advertise `{t}` is not an IP address and port that other nodes can reach"
                    ))
                })
            })
            .transpose()?;
        if gossip_advertise.is_none() && gossip_listen.ip().is_unspecified() {
            return Err(ConfigError::Invalid(format!(
                "cluster.gossip_listen `{gossip_listen}` listens on every interface; set cluster.gossip_advertise to the address other nodes should use"
            )));
        }
        let gossip_interval =
            parse_duration("cluster.gossip_interval", &raw.cluster.gossip_interval, Duration::from_millis(200))?;
        if gossip_interval < Duration::from_millis(20) || gossip_interval > Duration::from_secs(5) {
            return Err(ConfigError::Invalid("cluster.gossip_interval must be from 20ms to 5s".into()));
        }
        let seeds = raw.cluster.seeds.unwrap_or_default();
        if let Some(bad) =
            seeds.iter().find(|s| s.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()))
        {
            return Err(ConfigError::Invalid(format!(
                "cluster.seeds entry `{bad}` is not HOST:PORT, like node-a:7800 or 10.0.0.5:7800"
            )));
        }
        let multicast = raw
            .cluster
            .multicast
            .map(|m| -> Result<Multicast, ConfigError> {
                let group: std::net::SocketAddrV4 = m.group.parse().map_err(|_| {
                    ConfigError::Invalid(format!(
                        "cluster.multicast.group `{}` is not an IPv4 multicast address and port, like 239.7.7.7:7799",
                        m.group
                    ))
                })?;
                if !group.ip().is_multicast() {
                    return Err(ConfigError::Invalid(format!(
                        "cluster.multicast.group `{}` is not a multicast address (224.0.0.0 to 239.255.255.255)",
                        m.group
                    )));
                }
                let interface = m.interface.parse().map_err(|_| {
                    ConfigError::Invalid(format!(
                        "cluster.multicast.interface `{}` is not the IPv4 address of a local interface, like 192.168.1.10",
                        m.interface
                    ))
                })?;
                Ok(Multicast { group, interface })
            })
            .transpose()?;
        let drain_deadline =
            parse_duration("cluster.drain_deadline", &raw.cluster.drain_deadline, Duration::from_secs(300))?;
        let store_outage_grace =
            parse_duration("cluster.store_outage_grace", &raw.cluster.store_outage_grace, Duration::from_secs(120))?;
        if store_outage_grace > Duration::from_secs(3600) {
            return Err(ConfigError::Invalid(
                "cluster.store_outage_grace must be at most 1h (0s turns riding through an outage off)".into(),
            ));
        }
        let limit = |what: &str, v: Option<f64>| match v {
            Some(p) if !(p > 0.0 && p <= 100.0) => {
                Err(ConfigError::Invalid(format!("{what} must be a percentage above 0 and at most 100")))
            }
            other => Ok(other),
        };
        let cpu_limit = limit("executor.cpu_limit", raw.executor.cpu_limit)?;
        let memory_limit = limit("executor.memory_limit", raw.executor.memory_limit)?;
        let slots = raw.executor.slots.unwrap_or(8);
        if !(1..=10_000).contains(&slots) {
            return Err(ConfigError::Invalid("executor.slots must be from 1 to 10000".into()));
        }
        let kill_grace = parse_duration("executor.kill_grace", &raw.executor.kill_grace, Duration::from_secs(5))?;
        let poll_interval =
            parse_duration("executor.poll_interval", &raw.executor.poll_interval, Duration::from_millis(500))?;
        if poll_interval < Duration::from_millis(10) || poll_interval > Duration::from_secs(60) {
            return Err(ConfigError::Invalid("executor.poll_interval must be from 10ms to 60s".into()));
        }
        if let Some(roots) = &raw.sandboxes.allowed_roots {
            if roots.is_empty() {
                return Err(ConfigError::Invalid(
                    "sandboxes.allowed_roots is empty, so no sandbox could be created; name at least one folder, or leave the key out for the data directory".into(),
                ));
            }
            if let Some(r) = roots.iter().find(|r| !r.is_absolute()) {
                return Err(ConfigError::Invalid(format!(
                    "sandboxes.allowed_roots: `{}` is not an absolute path",
                    r.display()
                )));
            }
        }
        let retention = parse_duration("audit.retention", &raw.audit.retention, Duration::from_secs(90 * 86400))?;
        if retention < Duration::from_secs(1) {
            return Err(ConfigError::Invalid("audit.retention must be at least 1s".into()));
        }
        let format = match raw.log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid(format!("log.format `{other}` is unknown; use `text` or `json`")));
            }
        };
        Ok(Config {
            node_id,
            data_dir,
            tags,
            http: HttpConfig {
                listen,
                advertise: raw.http.advertise.map(|a| a.trim_end_matches('/').to_owned()),
                max_request_bytes: max_request_bytes as usize,
                max_upload_bytes: raw.http.max_upload_bytes.unwrap_or(256 * 1024 * 1024),
                header_read_timeout,
                body_read_timeout,
                idle_timeout,
                write_timeout,
                hosts,
                metrics_public: raw.http.metrics_public.unwrap_or(false),
                session_ttl,
                max_connections: max_connections as usize,
                tls,
            },
            store: StoreConfig {
                url,
                session_url,
                pool_size: pool_size as usize,
                replicas,
                replica_max_lag,
                replica_max_lag_bytes,
                route_to_primary,
                route_to_replica,
            },
            cluster: ClusterConfig {
                secret: raw.cluster.secret,
                lease_ttl,
                gossip_listen,
                gossip_advertise,
                gossip_interval,
                seeds,
                multicast,
                drain_deadline,
                store_outage_grace,
                tls_ca: raw.cluster.tls_ca,
                secrets_key_file: raw.cluster.secrets_key_file,
                secrets_previous_key_files: raw.cluster.secrets_previous_key_files.unwrap_or_default(),
            },
            executor: ExecutorConfig {
                slots,
                kill_grace,
                max_output_bytes: raw.executor.max_output_bytes.unwrap_or(64 * 1024 * 1024),
                poll_interval,
                supervisor: raw.executor.supervisor,
                cpu_limit,
                memory_limit,
            },
            log: LogConfig { level: raw.log.level.unwrap_or_else(|| "info".into()), format },
            sandboxes: SandboxesConfig { allowed_roots: raw.sandboxes.allowed_roots },
            audit: AuditConfig { retention },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_run_on_one_machine() {
        let c = Config::parse("", "x", env(&[])).unwrap();
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:7700");
        assert_eq!(c.store.url, "sqlite://./data/shoal.db");
        assert_eq!(c.executor.slots, 8);
        assert!(c.node_id.is_none());
        assert_eq!(c.http.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.http.body_read_timeout, Duration::from_secs(30));
        assert_eq!(c.http.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.http.write_timeout, Duration::from_secs(30));
        assert_eq!(c.http.max_connections, 1024);
        assert_eq!(c.http.session_ttl, Duration::from_secs(12 * 3600));
        assert_eq!(c.sandboxes.allowed_roots, None, "none given: the data directory");
    }

    #[test]
    fn audit_retention_is_a_duration_of_at_least_a_second() {
        assert_eq!(Config::parse("", "x", env(&[])).unwrap().audit.retention, Duration::from_secs(90 * 86400));
        let c = Config::parse("[audit]\nretention = \"30d\"\n", "x", env(&[])).unwrap();
        assert_eq!(c.audit.retention, Duration::from_secs(30 * 86400));
        let c = Config::parse("", "x", env(&[("SHOAL_AUDIT_RETENTION", "2s")])).unwrap();
        assert_eq!(c.audit.retention, Duration::from_secs(2));
        for bad in ["0s", "500ms", "soon"] {
            let e = Config::parse(&format!("[audit]\nretention = \"{bad}\"\n"), "x", env(&[])).unwrap_err();
            assert!(e.to_string().contains("audit.retention"), "{bad}: {e}");
        }
    }

    #[test]
    fn session_ttl_is_from_five_minutes_to_thirty_days() {
        let c = Config::parse("[http]\nsession_ttl = \"8h\"\n", "x", env(&[])).unwrap();
        assert_eq!(c.http.session_ttl, Duration::from_secs(8 * 3600));
        let c = Config::parse("", "x", env(&[("SHOAL_HTTP_SESSION_TTL", "5m")])).unwrap();
        assert_eq!(c.http.session_ttl, Duration::from_secs(300));
        for bad in ["4m", "31d"] {
            let e = Config::parse(&format!("[http]\nsession_ttl = \"{bad}\"\n"), "x", env(&[])).unwrap_err();
            assert!(e.to_string().contains("http.session_ttl must be from 5m to 30d"), "{bad}: {e}");
        }
    }

    #[test]
    fn allowed_roots_come_from_the_file_or_the_environment() {
        let c = Config::parse("[sandboxes]\nallowed_roots = [\"/srv/a\"]\n", "x", env(&[])).unwrap();
        assert_eq!(c.sandboxes.allowed_roots, Some(vec![PathBuf::from("/srv/a")]));
        let c = Config::parse("", "x", env(&[("SHOAL_SANDBOXES_ALLOWED_ROOTS", "[\"/srv/a\", \"/srv/b\"]")])).unwrap();
        assert_eq!(c.sandboxes.allowed_roots, Some(vec![PathBuf::from("/srv/a"), PathBuf::from("/srv/b")]));
    }

    #[test]
    fn the_design_example_parses() {
        let text = r#"
node_id = "n1"
data_dir = "./data/n1"
tags = ["etl", "big-memory"]
[http]
listen = "127.0.0.1:7700"
advertise = "http://127.0.0.1:7700"
[store]
url = "sqlite://./data/shoal.db"
[cluster]
secret = "s3cret-s3cret-s3cret"
[executor]
slots = 8
"#;
        let c = Config::parse(text, "x", env(&[])).unwrap();
        assert_eq!(c.node_id.unwrap().as_str(), "n1");
        assert_eq!(c.tags, ["etl", "big-memory"]);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse("[http]\nlisen = \"x\"\n", "shoal.toml", env(&[])).unwrap_err().to_string();
        assert!(e.contains("lisen") && e.contains("line 2"), "{e}");
        let e = Config::parse("colour = 1\n", "shoal.toml", env(&[])).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        let e = Config::parse("", "x", env(&[("SHOAL_HTTP_LISEN", "1")])).unwrap_err().to_string();
        assert!(e.contains("SHOAL_HTTP_LISEN") && e.contains("listen"), "{e}");
    }

    #[test]
    fn http_limits_parse_from_the_file_and_the_environment() {
        let c = Config::parse(
            "[http]\nheader_read_timeout = \"300ms\"\nmax_connections = 2\nwrite_timeout = \"500ms\"\n",
            "x",
            env(&[("SHOAL_HTTP_IDLE_TIMEOUT", "5s"), ("SHOAL_HTTP_BODY_READ_TIMEOUT", "1m")]),
        )
        .unwrap();
        assert_eq!(c.http.header_read_timeout, Duration::from_millis(300));
        assert_eq!(c.http.idle_timeout, Duration::from_secs(5));
        assert_eq!(c.http.body_read_timeout, Duration::from_secs(60));
        assert_eq!(c.http.max_connections, 2);
        assert_eq!(c.http.write_timeout, Duration::from_millis(500));
        let c = Config::parse("", "x", env(&[("SHOAL_HTTP_WRITE_TIMEOUT", "2m")])).unwrap();
        assert_eq!(c.http.write_timeout, Duration::from_secs(120));
    }

    #[test]
    fn secrets_keys_come_from_the_file_or_the_environment() {
        let c = Config::parse("", "x", env(&[])).unwrap();
        assert_eq!((c.cluster.secrets_key_file, c.cluster.secrets_previous_key_files), (None, vec![]));
        let c = Config::parse(
            "[cluster]\nsecrets_key_file = \"/etc/shoal/new.key\"\nsecrets_previous_key_files = [\"/etc/shoal/old.key\"]\n",
            "x",
            env(&[]),
        )
        .unwrap();
        assert_eq!(c.cluster.secrets_key_file.as_deref(), Some(Path::new("/etc/shoal/new.key")));
        assert_eq!(c.cluster.secrets_previous_key_files, [PathBuf::from("/etc/shoal/old.key")]);
        let c = Config::parse("", "x", env(&[("SHOAL_CLUSTER_SECRETS_KEY_FILE", "/k")])).unwrap();
        assert_eq!(c.cluster.secrets_key_file.as_deref(), Some(Path::new("/k")));
    }

    #[test]
    fn tls_files_come_from_the_file_or_the_environment() {
        let c = Config::parse("", "x", env(&[])).unwrap();
        assert_eq!((c.http.tls, c.cluster.tls_ca), (None, None), "plain HTTP, the system's roots");
        let text = "[http]\ntls = { cert = \"/etc/shoal/node.crt\", key = \"/etc/shoal/node.key\" }\n[cluster]\ntls_ca = \"/etc/shoal/ca.pem\"\n";
        let c = Config::parse(text, "x", env(&[])).unwrap();
        let files = TlsFiles { cert: "/etc/shoal/node.crt".into(), key: "/etc/shoal/node.key".into() };
        assert_eq!(c.http.tls.as_ref(), Some(&files));
        assert_eq!(c.cluster.tls_ca.as_deref(), Some(Path::new("/etc/shoal/ca.pem")));
        let c = Config::parse(
            "",
            "x",
            env(&[
                ("SHOAL_HTTP_TLS", "{ cert = \"/etc/shoal/node.crt\", key = \"/etc/shoal/node.key\" }"),
                ("SHOAL_CLUSTER_TLS_CA", "/etc/shoal/ca.pem"),
                ("SHOAL_CA_FILE", "/the/client's/own"),
            ]),
        )
        .unwrap();
        assert_eq!(c.http.tls, Some(files));
        assert_eq!(c.cluster.tls_ca.as_deref(), Some(Path::new("/etc/shoal/ca.pem")));
        // An advertised https URL is fine with http.tls.
        let with_advertise = text.replace("[cluster]", "advertise = \"https://shoal-1.internal:7700/\"\n[cluster]");
        let c = Config::parse(&with_advertise, "x", env(&[])).unwrap();
        assert_eq!(c.http.advertise.as_deref(), Some("https://shoal-1.internal:7700"));
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = Config::parse(
            "[executor]\nslots = 2\n",
            "x",
            env(&[
                ("SHOAL_EXECUTOR_SLOTS", "16"),
                ("SHOAL_STORE_URL", "postgres://u:p@h1,h2/db?target_session_attrs=read-write"),
                ("SHOAL_TAGS", "[\"a\", \"b\"]"),
                ("SHOAL_NODE_ID", "n7"),
                ("SHOAL_EXECUTION_ID", "not config"),
                ("SHOAL_UNRELATED_THING", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(c.executor.slots, 16);
        assert!(c.store.url.starts_with("postgres://"));
        assert_eq!(c.tags, ["a", "b"]);
        assert_eq!(c.node_id.unwrap().as_str(), "n7");
    }

    #[test]
    fn invalid_values_say_what_to_fix() {
        for (text, needle) in [
            ("[http]\nlisten = \"localhost\"", "127.0.0.1:7700"),
            ("[executor]\nslots = 0", "executor.slots"),
            ("[executor]\nkill_grace = \"soon\"", "executor.kill_grace"),
            ("[store]\nreplicas = [\"postgres://r\"]", "PostgreSQL feature"),
            ("[store]\nsession_url = \"postgres://r/db\"", "store.session_url is set but the store is SQLite"),
            (
                "[store]\nurl = \"postgres://p/db\"\nsession_url = \"p:6432\"",
                "store.session_url: `p:6432` is not a postgres:// URL",
            ),
            ("[store]\nurl = \"postgres://p/db\"\nreplicas = [\"mysql://r\"]", "not a postgres:// URL"),
            (
                "[store]\nroute_to_primary = [\"^GET /a\", \"(\"]",
                "store.route_to_primary[1]: `(` is not a regular expression",
            ),
            ("[store]\nreplica_max_lag = \"2h\"", "store.replica_max_lag must be at most 1h"),
            ("[store]\nreplica_max_lag = \"soon\"", "store.replica_max_lag"),
            ("[cluster]\nseeds = [\"a\"]", "HOST:PORT"),
            ("[cluster]\nsecret = \"short\"", "16 characters"),
            ("[cluster]\ngossip_listen = \"0.0.0.0:7800\"", "gossip_advertise"),
            ("[cluster]\nmulticast = { group = \"10.0.0.1:7799\", interface = \"127.0.0.1\" }", "not a multicast"),
            ("[cluster]\nmulticast = { group = \"239.1.1.1:7799\" }", "interface"),
            ("[executor]\ncpu_limit = 0", "executor.cpu_limit"),
            ("node_id = \"Bad Id\"", "node id"),
            ("[log]\nformat = \"xml\"", "log.format"),
            ("[executor]\nslots = \"many\"", "line 2"),
            ("[http]\nheader_read_timeout = \"10\"", "http.header_read_timeout"),
            ("[http]\nbody_read_timeout = \"0s\"", "http.body_read_timeout must be from 100ms"),
            ("[http]\nidle_timeout = \"2h\"", "http.idle_timeout must be from 100ms to 1h"),
            ("[http]\nmax_connections = 0", "http.max_connections"),
            ("[http]\nwrite_timeout = \"50ms\"", "http.write_timeout must be from 100ms to 1h"),
            ("[http]\nwrite_timeout = \"forever\"", "http.write_timeout"),
            ("[sandboxes]\nallowed_roots = []", "sandboxes.allowed_roots is empty"),
            (
                "[http]\nhosts = [\"https://shoal.example.com\"]",
                "http.hosts: `https://shoal.example.com` is not a host name",
            ),
            ("[sandboxes]\nallowed_roots = [\"srv\"]", "`srv` is not an absolute path"),
            ("[http]\ntls = { cert = \"c.pem\" }", "missing field `key`"),
            ("[http]\ntls = { cert = \"c.pem\", key = \"k.pem\", ca = \"x\" }", "unknown field `ca`"),
            (
                "[http]\ntls = { cert = \"c.pem\", key = \"k.pem\" }\nadvertise = \"http://h:7700\"",
                "is plain HTTP, but http.tls is set, so this node serves only HTTPS; advertise https://h:7700",
            ),
            ("[http]\nadvertise = \"https://h:7700\"", "http.tls is not set, so this node serves plain HTTP"),
        ] {
            let e = Config::parse(text, "x", env(&[])).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
