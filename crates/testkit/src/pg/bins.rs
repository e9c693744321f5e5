//! Locating the PostgreSQL server programs installed on this machine.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Overrides the search, for machines whose PostgreSQL lives somewhere
/// neither `pg_config` nor Debian's layout would find.
const BINDIR_ENV: &str = "SHOAL_PG_BINDIR";

/// The directory holding `initdb`, `postgres` and their companions.
#[derive(Debug)]
pub(super) struct Bins {
    dir: PathBuf,
}

impl Bins {
    pub(super) fn find() -> Result<Bins, String> {
        if let Some(dir) = std::env::var_os(BINDIR_ENV) {
            let dir = PathBuf::from(dir);
            return if is_server_bindir(&dir) {
                Ok(Bins { dir })
            } else {
                Err(format!("{BINDIR_ENV}={} holds no `postgres` and `initdb`", dir.display()))
            };
        }
        if let Some(dir) = pg_config_bindir().filter(|d| is_server_bindir(d)) {
            return Ok(Bins { dir });
        }
        // Debian's `pg_config` comes from libpq-dev and may be absent, or
        // point at a version whose server is not installed; the versioned
        // directories are where the server packages put their programs.
        if let Some(dir) = newest_debian_bindir() {
            return Ok(Bins { dir });
        }
        Err("no PostgreSQL server programs found (looked at `pg_config --bindir` and \
             /usr/lib/postgresql/*/bin); run scripts/install-test-deps.sh, or set \
             SHOAL_PG_BINDIR to a directory holding `postgres` and `initdb`"
            .to_owned())
    }

    /// The path to one of PostgreSQL's programs. Client programs fall back to
    /// a `PATH` lookup, since some layouts keep them apart from the server's.
    pub(super) fn tool(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        if path.exists() {
            path
        } else {
            PathBuf::from(name)
        }
    }
}

fn is_server_bindir(dir: &Path) -> bool {
    dir.join("postgres").is_file() && dir.join("initdb").is_file()
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(dir.trim()))
}

/// The highest-versioned `/usr/lib/postgresql/<version>/bin` with a server.
fn newest_debian_bindir() -> Option<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = parse_version(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            is_server_bindir(&bin).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// "15" and "9.6" style directory names, compared numerically so 10 > 9.6.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn versions_compare_numerically() {
        assert!(parse_version("10") > parse_version("9.6"));
        assert!(parse_version("16") > parse_version("15"));
        assert_eq!(parse_version("main"), None);
    }
}
