//! PgBouncer in front of a test server, in the pooling mode a test asks for: what many
//! deployments put between their nodes and PostgreSQL.

use parking_lot::Mutex;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use super::{bins, dirs, proc, SUPERUSER};

/// How long PgBouncer gets to accept connections before its start is failed.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// When PgBouncer gives a client's server connection back to its pool (`pool_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// When the client disconnects: a client keeps one server connection all its life.
    Session,
    /// After each transaction: consecutive transactions of one client may run on different
    /// server connections, so nothing of a session (prepared statements, session settings,
    /// advisory locks, `LISTEN`) lasts.
    Transaction,
    /// After each statement: transactions of more than one statement are refused.
    Statement,
}

impl PoolMode {
    fn name(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }
}

/// A PgBouncer process of its own, on a free port of 127.0.0.1, passing every database to the
/// test server on `127.0.0.1:upstream` and trusting the superuser without a password. Stopped
/// and removed when dropped.
#[derive(Debug)]
pub struct PgBouncer {
    root: PathBuf,
    port: u16,
    pid: u32,
    child: Mutex<Child>,
}

/// `pgbouncer` on `PATH`, or where Debian's package puts it (`/usr/sbin`, which a user's
/// `PATH` may lack).
fn program() -> Result<PathBuf, String> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("pgbouncer"))
        .find(|p| p.is_file());
    on_path.or_else(|| Some(PathBuf::from("/usr/sbin/pgbouncer")).filter(|p| p.is_file())).ok_or_else(|| {
        "no `pgbouncer` program found (looked on PATH and in /usr/sbin); run scripts/install-test-deps.sh".to_owned()
    })
}

fn config(root: &Path, upstream: u16, port: u16, mode: PoolMode, pool_size: u32) -> String {
    let dir = root.display();
    format!(
        "[databases]
* = host=127.0.0.1 port={upstream}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir = {dir}
auth_type = trust
auth_file = {dir}/userlist.txt
admin_users = {SUPERUSER}
pool_mode = {mode}
max_client_conn = 1000
default_pool_size = {pool_size}
logfile = {dir}/pgbouncer.log
",
        mode = mode.name()
    )
}

impl PgBouncer {
    /// Starts PgBouncer in `mode` in front of the test server on port `upstream` and waits
    /// until it accepts connections; panics if it cannot.
    pub fn start(upstream: u16, mode: PoolMode) -> PgBouncer {
        Self::start_sized(upstream, mode, 40)
    }

    /// [`PgBouncer::start`] with at most `pool_size` server connections per database and user
    /// (`default_pool_size`).
    pub fn start_sized(upstream: u16, mode: PoolMode, pool_size: u32) -> PgBouncer {
        match Self::try_start(upstream, mode, pool_size) {
            Ok(bouncer) => bouncer,
            Err(e) => panic!("cannot start PgBouncer ({} pooling): {e}", mode.name()),
        }
    }

    fn try_start(upstream: u16, mode: PoolMode, pool_size: u32) -> Result<PgBouncer, String> {
        let program = program()?;
        let root = dirs::new_root()?;
        let users = root.join("userlist.txt");
        std::fs::write(&users, format!("\"{SUPERUSER}\" \"\"\n"))
            .map_err(|e| format!("cannot write {}: {e}", users.display()))?;
        let log_path = root.join("pgbouncer.log");
        // A port taken between probing and binding: another try on another port.
        for _ in 0..5 {
            let port = proc::free_port()?;
            let ini = root.join("pgbouncer.ini");
            std::fs::write(&ini, config(&root, upstream, port, mode, pool_size))
                .map_err(|e| format!("cannot write {}: {e}", ini.display()))?;
            let log_start = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
            let out = File::options()
                .create(true)
                .append(true)
                .open(root.join("pgbouncer.out"))
                .map_err(|e| format!("cannot open pgbouncer.out: {e}"))?;
            let err = out.try_clone().map_err(|e| format!("cannot duplicate a handle: {e}"))?;
            // Run as PostgreSQL's user: PgBouncer refuses to run as root.
            let mut cmd = proc::command(&program, &root)?;
            cmd.arg(&ini).stdout(out).stderr(err);
            let mut child = proc::spawn_tied(cmd).map_err(|e| format!("cannot start pgbouncer: {e}"))?;
            match wait_ready(&root, port, &mut child)? {
                true => {
                    proc::exit_cleanup::register(child.id(), &root);
                    return Ok(PgBouncer { pid: child.id(), root, port, child: Mutex::new(child) });
                }
                false => {
                    let log = proc::read_log_from(&log_path, log_start);
                    if log.contains("in use") {
                        continue;
                    }
                    let out = std::fs::read_to_string(root.join("pgbouncer.out")).unwrap_or_default();
                    return Err(format!("pgbouncer exited before accepting connections; its log:\n{log}{out}"));
                }
            }
        }
        Err("every port tried was taken".into())
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` through this PgBouncer, as the test server's superuser.
    pub fn url_for(&self, db: &str) -> String {
        super::url(self.port, db)
    }
}

/// Waits until PgBouncer answers on its private Unix socket (see `wait_ready` in `proc.rs`):
/// `Ok(false)` if it exited first.
fn wait_ready(root: &Path, port: u16, child: &mut Child) -> Result<bool, String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let pg_isready = bins()?.tool("pg_isready");
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(false);
        }
        if proc::accepting(&pg_isready, root, port) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("pgbouncer did not accept connections within {READY_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let mut child = self.child.lock();
        if let Ok(None) = child.try_wait() {
            // SAFETY: kill only sends a signal; the pid is our unreaped child, so it cannot have
            // been reused by another process. SIGTERM is PgBouncer's immediate shutdown.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
        proc::exit_cleanup::forget(self.pid);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
