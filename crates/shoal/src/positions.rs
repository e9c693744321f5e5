//! Carries the client's WAL position from one `shoal` command to the next.
//!
//! A node may serve a read from a PostgreSQL read replica that lags behind the primary; the
//! client sends the highest position it has seen so that the read waits for a replica that
//! has replayed its writes (see `shoal_client`). That memory lives in one process, and
//! `shoal run ... && shoal show ID` is two: so each command saves the position it ends with
//! in `$XDG_CACHE_HOME/shoal/positions/<key>` (else `~/.cache/...`), one file per set of
//! servers, and the next command against the same servers starts from it.
//!
//! It is a cache: without it (no home directory, a file that cannot be read or written) a
//! read may only be staler, so no command ever fails over it.

use sha2::{Digest, Sha256};
use shoal_client::{Client, Lsn};
use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The folder of position files: under `XDG_CACHE_HOME`, else `HOME/.cache`. Either must be
/// an absolute path; a relative one is ignored, as the XDG base directory spec says.
pub(crate) fn positions_dir(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let absolute = |v: Option<OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    let cache = absolute(xdg_cache_home).or_else(|| absolute(home).map(|h| h.join(".cache")))?;
    Some(cache.join("shoal").join("positions"))
}

/// The file name for a set of servers: the same whatever their order, and short. 64 bits of
/// SHA-256 keep sets apart; a collision would only share a position between two clusters.
fn key(servers: &[String]) -> String {
    let mut sorted: Vec<&str> = servers.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let digest = Sha256::digest(sorted.join("\n"));
    hex::encode(&digest[..8])
}

/// The position a file holds; none when there is no file, or it holds something else.
fn read(dir: &Path, key: &str) -> io::Result<Option<Lsn>> {
    match std::fs::read_to_string(dir.join(key)) {
        Ok(text) => Ok(Lsn::parse(text.trim())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `position` unless the file already holds one as high (another command may have
/// run meanwhile and seen a later one). Through a temporary file renamed over the old one, so
/// a command starting at the same moment reads the old position or the new, never half of
/// one. Answers whether it wrote.
fn write_if_higher(dir: &Path, key: &str, position: Lsn) -> io::Result<bool> {
    if read(dir, key)?.is_some_and(|held| held >= position) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    writeln!(temp, "{position}")?;
    temp.persist(dir.join(key)).map_err(|e| e.error)?;
    Ok(true)
}

/// The position file of one command's servers, and what it held when the command started.
pub(crate) struct Carried {
    dir: PathBuf,
    key: String,
    loaded: Option<Lsn>,
}

impl Carried {
    /// Hands `client` the position the last command against the same servers ended with.
    pub(crate) fn load(client: &Client, dir: PathBuf) -> Carried {
        let key = key(client.servers());
        let loaded = read(&dir, &key).unwrap_or_else(|e| {
            tracing::debug!(file = %dir.join(&key).display(), error = %e, "cannot read the saved WAL position");
            None
        });
        if let Some(lsn) = loaded {
            client.observe_position(&lsn.to_string());
        }
        Carried { dir, key, loaded }
    }

    /// Saves the client's position for the next command, if it grew during this one.
    pub(crate) fn save(&self, client: &Client) {
        let Some(position) = client.position().as_deref().and_then(Lsn::parse) else {
            return;
        };
        if self.loaded >= Some(position) {
            return;
        }
        if let Err(e) = write_if_higher(&self.dir, &self.key, position) {
            tracing::debug!(file = %self.dir.join(&self.key).display(), error = %e, "cannot save the WAL position");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(text: &str) -> Lsn {
        Lsn::parse(text).unwrap()
    }

    #[test]
    fn a_position_is_written_read_back_and_never_lowered() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shoal").join("positions");
        assert_eq!(read(&dir, "k").unwrap(), None, "no file yet");
        assert!(write_if_higher(&dir, "k", lsn("0/20")).unwrap());
        assert_eq!(read(&dir, "k").unwrap(), Some(lsn("0/20")));
        assert!(!write_if_higher(&dir, "k", lsn("0/10")).unwrap(), "a lower position is not written");
        assert!(!write_if_higher(&dir, "k", lsn("0/20")).unwrap(), "nor the same one");
        assert_eq!(read(&dir, "k").unwrap(), Some(lsn("0/20")));
        assert!(write_if_higher(&dir, "k", lsn("1/0")).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("k")).unwrap(), "1/0\n");
        // Only the position file is left: the temporary one was renamed into place.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::write(dir.join("k"), "junk").unwrap();
        assert_eq!(read(&dir, "k").unwrap(), None, "a file holding something else holds no position");
    }

    #[test]
    fn a_command_starts_from_the_last_ones_position_and_saves_a_higher_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let servers = vec!["http://b:7700".to_owned(), "a:7700".to_owned()];

        let first = Client::new(servers.clone()).unwrap();
        let carried = Carried::load(&first, dir.clone());
        assert_eq!(first.position(), None);
        carried.save(&first);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing to save, nothing written");
        first.observe_position("0/20");
        carried.save(&first);

        // The same servers in another order, one spelled otherwise: the same file.
        let second = Client::new(vec!["http://a:7700".into(), "b:7700".into()]).unwrap();
        let carried = Carried::load(&second, dir.clone());
        assert_eq!(second.position().as_deref(), Some("0/20"));
        second.observe_position("0/30");
        carried.save(&second);

        let elsewhere = Client::new(vec!["http://c:7700".into()]).unwrap();
        Carried::load(&elsewhere, dir.clone());
        assert_eq!(elsewhere.position(), None, "another cluster has its own file");

        // A command that ran meanwhile saw more: one that started before it does not lower it.
        let late = Client::new(servers).unwrap();
        let stale = Carried::load(&late, dir.clone());
        write_if_higher(&dir, &key(late.servers()), lsn("0/40")).unwrap();
        late.observe_position("0/35");
        stale.save(&late);
        assert_eq!(read(&dir, &key(late.servers())).unwrap(), Some(lsn("0/40")));
    }

    #[test]
    fn a_key_names_a_set_of_servers() {
        let k = key(&["http://a:1".into(), "http://b:1".into()]);
        assert_eq!(k, key(&["http://b:1".into(), "http://a:1".into(), "http://a:1".into()]));
        assert_ne!(k, key(&["http://a:1".into()]));
        assert!(k.len() == 16 && k.bytes().all(|b| b.is_ascii_hexdigit()), "{k}");
    }

    #[test]
    fn the_folder_is_under_xdg_cache_home_else_home() {
        let dir = |xdg: Option<&str>, home: Option<&str>| positions_dir(xdg.map(Into::into), home.map(Into::into));
        assert_eq!(dir(Some("/x"), Some("/h")), Some("/x/shoal/positions".into()));
        assert_eq!(dir(None, Some("/h")), Some("/h/.cache/shoal/positions".into()));
        assert_eq!(dir(Some("relative"), Some("/h")), Some("/h/.cache/shoal/positions".into()));
        assert_eq!(dir(Some(""), None), None);
        assert_eq!(dir(None, None), None);
    }
}
