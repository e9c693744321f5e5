//! Throwaway PostgreSQL servers: one primary per test process, started on first use, plus streaming replicas on demand.
//!
//! Every server runs `postgres` directly as a child of the test process (not
//! through `pg_ctl`, which daemonizes), armed to get SIGINT when the process
//! ends, so no server outlives its tests. Data lives under
//! `<temp>/shoal-test-pg/<pid>-<n>`, removed at a normal exit and otherwise
//! by the next test process that starts a server.

mod bins;
mod bouncer;
mod dirs;
mod proc;

pub use bouncer::{PgBouncer, PoolMode};

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use bins::Bins;
use proc::Instance;

/// The role every URL connects as: the bootstrap superuser, so tests may
/// create databases, roles and extensions freely.
const SUPERUSER: &str = "shoal";

/// Settings for speed over durability (a crash loses nothing a test needs)
/// and for streaming replication (so [`PgServer::start_replica`] works).
const CONFIG: &str = "
# added by shoal-testkit
listen_addresses = '127.0.0.1'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = replica
max_wal_senders = 20
max_replication_slots = 20
# Base backups taken at once (tests in parallel) each stream the WAL from their start; kept
# WAL lets none of them find a segment recycled under it.
wal_keep_size = '1GB'
hot_standby = on
timezone = 'UTC'
log_timezone = 'UTC'
";

fn bins() -> Result<&'static Bins, String> {
    static BINS: OnceLock<Result<Bins, String>> = OnceLock::new();
    BINS.get_or_init(Bins::find).as_ref().map_err(Clone::clone)
}

fn url(port: u16, db: &str) -> String {
    format!("postgres://{SUPERUSER}@127.0.0.1:{port}/{db}")
}

/// The URL of database `db` on every server of `ports`, in that order, asking for the one that
/// takes writes (`target_session_attrs=read-write`): what a node is given to find a promoted
/// replica again after a failover.
pub fn multi_host_url(ports: &[u16], db: &str) -> String {
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!("postgres://{SUPERUSER}@{}/{db}?target_session_attrs=read-write", hosts.join(","))
}

/// Appends `text` to the data directory's `postgresql.conf`; later lines win.
fn append_config(data: &Path, text: &str) -> Result<(), String> {
    let path = data.join("postgresql.conf");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot append to {}: {e}", path.display()))
}

/// The Unix socket goes beside the data directory, in a directory private to
/// this server: not the system default, which may be missing or another's.
fn socket_config(root: &Path) -> String {
    let dir = root.to_string_lossy().replace('\'', "''");
    format!("unix_socket_directories = '{dir}'\n")
}

/// The test process's PostgreSQL server, started on first call.
///
/// Starting takes a second or two; later calls return at once. If the start
/// fails, this and every later call panic with the reason (and the server's
/// log when it got that far).
pub fn postgres() -> &'static PgServer {
    static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
    match SERVER.get_or_init(PgServer::start) {
        Ok(server) => server,
        Err(e) => panic!("cannot start the test PostgreSQL server: {e}"),
    }
}

/// Runs `sql` with `psql` against `url`, returning its output as unaligned,
/// tuples-only text (`|` between columns, one row a line, no trailing
/// newline), or psql's complaint. Meant for tests that need no client library.
pub fn psql(url: &str, sql: &str) -> Result<String, String> {
    let mut cmd = Command::new(bins()?.tool("psql"));
    proc::scrub_pg_env(&mut cmd);
    let out = cmd
        // No ~/.psqlrc, quiet, unaligned, tuples only, stop at the first error.
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-d", url, "-c", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.trim_end_matches('\n').to_owned())
    } else {
        Err(format!(
            "psql against {url} failed ({}) running {sql:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        ))
    }
}

/// A PostgreSQL server private to this test process, accepting any local
/// connection without a password (trust authentication).
#[derive(Debug)]
pub struct PgServer {
    inst: Instance,
    next_db: AtomicU32,
    next_replica: AtomicU32,
}

impl PgServer {
    fn start() -> Result<PgServer, String> {
        Self::start_with(|_| Ok(()))
    }

    /// A server of its own (not the process's shared one), for a test that kills it or
    /// promotes a replica over it. Stopped and removed when dropped.
    pub fn start_private() -> PgServer {
        match Self::start() {
            Ok(server) => server,
            Err(e) => panic!("cannot start a PostgreSQL server: {e}"),
        }
    }

    /// Stops the server at once, as a crash would (immediate shutdown): every connection to
    /// it ends. Its data directory stays until it is dropped.
    pub fn kill(&self) {
        self.inst.stop();
    }

    /// A server of its own (not the process's shared one) with TLS on, presenting the PEM
    /// certificate chain `cert_pem` with its key `key_pem`; plain connections are still
    /// accepted. Stopped and removed when dropped.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> PgServer {
        let setup = |data: &Path| -> Result<(), String> {
            for (name, text) in [("server.crt", cert_pem), ("server.key", key_pem)] {
                let path = data.join(name);
                std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                proc::give_away(&path)?;
                // PostgreSQL refuses a key that others may read.
                std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
            }
            append_config(data, "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        };
        match Self::start_with(setup) {
            Ok(server) => server,
            Err(e) => panic!("cannot start a TLS PostgreSQL server: {e}"),
        }
    }

    /// Starts a server whose data directory `setup` may add to after initdb.
    fn start_with(setup: impl FnOnce(&Path) -> Result<(), String>) -> Result<PgServer, String> {
        let bins = bins()?;
        let root = dirs::new_root()?;
        let data = root.join("data");
        let mut initdb = proc::command(&bins.tool("initdb"), &root)?;
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8"])
            // The C locale exists everywhere; a shell's LANG may name one
            // that is not installed, which would fail initdb.
            .args(["--locale=C", "--no-sync"]);
        proc::run("initdb", initdb)?;
        append_config(&data, CONFIG)?;
        append_config(&data, &socket_config(&root))?;
        setup(&data)?;
        Ok(PgServer {
            inst: Instance::start(bins, root, None)?,
            next_db: AtomicU32::new(0),
            next_replica: AtomicU32::new(0),
        })
    }

    /// Creates a new, empty database with a name unique in this process and
    /// returns its URL, e.g. `postgres://shoal@127.0.0.1:PORT/shoal_test_3`.
    pub fn fresh_database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("shoal_test_{n}");
        if let Err(e) = psql(&self.admin_url(), &format!("CREATE DATABASE {name}")) {
            panic!("cannot create test database {name}: {e}");
        }
        self.url_for(&name)
    }

    /// The URL of the `postgres` maintenance database, as the superuser.
    pub fn admin_url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of database `db` on this server.
    pub fn url_for(&self, db: &str) -> String {
        url(self.inst.port, db)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.inst.port
    }

    /// The data directory (PGDATA). Its parent holds the server's log,
    /// `postgres.log`, and its Unix socket.
    pub fn data_dir(&self) -> &Path {
        &self.inst.data
    }

    /// Starts a hot standby streaming from this server, copied with
    /// `pg_basebackup` and holding a replication slot so the primary keeps
    /// the WAL it has yet to receive. Stopped and removed when dropped.
    pub fn start_replica(&self) -> PgReplica {
        match self.try_start_replica() {
            Ok(replica) => replica,
            Err(e) => panic!("cannot start a replica of the test PostgreSQL server: {e}"),
        }
    }

    fn try_start_replica(&self) -> Result<PgReplica, String> {
        let n = self.next_replica.fetch_add(1, Ordering::Relaxed);
        start_replica_of(self.port(), n, None)
    }
}

/// A hot standby of the server on `port`, copied with `pg_basebackup` and holding the
/// replication slot `shoal_replica_{n}` there, listening on `listen` if given (else on a free
/// port).
fn start_replica_of(port: u16, n: u32, listen: Option<u16>) -> Result<PgReplica, String> {
    let bins = bins()?;
    let root = dirs::new_root()?;
    let data = root.join("data");
    let slot = format!("shoal_replica_{n}");
    let mut backup = proc::command(&bins.tool("pg_basebackup"), &root)?;
    backup
        .arg("-D")
        .arg(&data)
        // -R writes standby.signal and primary_conninfo; -C -S makes the slot.
        .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-C", "-S", &slot])
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", SUPERUSER]);
    proc::run("pg_basebackup", backup)?;
    // The copied configuration names the primary's socket directory.
    append_config(&data, &socket_config(&root))?;
    Ok(PgReplica {
        inst: Instance::start(bins, root, listen)?,
        slot,
        primary_admin_url: url(port, "postgres"),
        next_replica: AtomicU32::new(0),
    })
}

/// The shared server is a static and never dropped; one of [`PgServer::start_tls`] goes with
/// its test.
impl Drop for PgServer {
    fn drop(&mut self) {
        self.inst.stop();
        let _ = std::fs::remove_dir_all(&self.inst.root);
    }
}

/// A streaming replica of a test server; see [`PgServer::start_replica`] and
/// [`PgReplica::start_replica_at`].
#[derive(Debug)]
pub struct PgReplica {
    inst: Instance,
    slot: String,
    primary_admin_url: String,
    next_replica: AtomicU32,
}

impl PgReplica {
    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.inst.port
    }

    /// The URL of database `db` on this replica.
    pub fn url_for(&self, db: &str) -> String {
        url(self.inst.port, db)
    }

    /// The replica's data directory; its parent holds its `postgres.log`.
    pub fn data_dir(&self) -> &Path {
        &self.inst.data
    }

    /// Waits until the replica has replayed all its primary had written when called (what a
    /// switchover waits for before promoting it, so that no commit is left behind); panics
    /// after 30 s. The primary may be read-only but must be up.
    pub fn wait_replayed(&self) {
        // A checkpoint flushes (and so sends) every record before it: without one, a record no
        // commit follows may stay unsent until the background writer's next snapshot, 15 s on.
        let flushed = psql(&self.primary_admin_url, "CHECKPOINT")
            .and_then(|_| psql(&self.primary_admin_url, "SELECT pg_current_wal_flush_lsn()"));
        let written = match flushed {
            Ok(lsn) => lsn,
            Err(e) => panic!("cannot flush the primary's WAL and read its position: {e}"),
        };
        let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{written}'::pg_lsn");
        crate::wait_until(
            &format!("the replica on port {} to replay the primary's WAL up to {written}", self.port()),
            Duration::from_secs(30),
            || psql(&self.url_for("postgres"), &sql).is_ok_and(|r| r == "t"),
        );
    }

    /// Promotes the replica to a primary, returning once it accepts writes.
    pub fn promote(&self) {
        let run = || -> Result<(), String> {
            let mut cmd = proc::command(&bins()?.tool("pg_ctl"), &self.inst.root)?;
            cmd.arg("promote").arg("-D").arg(&self.inst.data).args(["-w", "-t", "30"]);
            proc::run("pg_ctl promote", cmd).map(drop)
        };
        if let Err(e) = run() {
            panic!("cannot promote the replica on port {}: {e}", self.port());
        }
    }

    /// Stops the replica at once, as a crash would (immediate shutdown).
    /// Its data directory stays until the replica is dropped.
    pub fn kill(&self) {
        self.inst.stop();
    }

    /// Starts a hot standby streaming from this replica once it is promoted, listening on
    /// `port`: given the port of a server killed before (a primary that failed over to this
    /// one), it is that old primary brought back as a standby of the new one, at its old
    /// address, as an operator rebuilds it. Stopped and removed when dropped; panics if the
    /// port is taken.
    pub fn start_replica_at(&self, port: u16) -> PgReplica {
        let n = self.next_replica.fetch_add(1, Ordering::Relaxed);
        match start_replica_of(self.port(), n, Some(port)) {
            Ok(replica) => replica,
            Err(e) => panic!("cannot start a replica of the replica on port {}: {e}", self.port()),
        }
    }
}

impl Drop for PgReplica {
    fn drop(&mut self) {
        self.inst.stop();
        // The primary's WAL sender may take a moment to notice the replica is
        // gone, and the slot cannot be dropped while it is active.
        let drop_slot = format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = '{}'",
            self.slot
        );
        for _ in 0..100 {
            match psql(&self.primary_admin_url, &drop_slot) {
                Ok(_) => break,
                // The primary is gone (killed, having failed over to this replica): so is the slot.
                Err(e) if e.contains("Connection refused") => break,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let _ = std::fs::remove_dir_all(&self.inst.root);
    }
}
