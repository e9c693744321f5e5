//! File listeners, the part without the cluster: which files a glob selects in a sandbox
//! folder, when a file being written has settled, and which events a scan gives against
//! the cursor the store keeps.
//!
//! Every node that scans the same folder must reach the same events with the same keys, so
//! nothing here depends on the node: paths are relative and `/`-separated, results are
//! sorted, and an event's [`FileEvent::key`] is built only from what the file shows.

use globset::{GlobBuilder, GlobMatcher};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use walkdir::WalkDir;

/// The longest pattern accepted, as for any other sandbox path.
const MAX_PATTERN_BYTES: usize = 4096;

/// Characters that make a component a glob rather than a literal folder name.
const GLOB_CHARS: [char; 6] = ['*', '?', '[', ']', '{', '}'];

/// Why a pattern was refused. The API answers `LeavesSandbox` as `400 invalid_path` (the
/// same as any path that tries to escape) and `Invalid` as `422`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("{0}")]
    LeavesSandbox(String),
    #[error("{0}")]
    Invalid(String),
}

/// A checked glob relative to a sandbox root.
#[derive(Clone, Debug)]
pub struct Pattern {
    text: String,
    matcher: GlobMatcher,
    /// The leading folders without glob characters: scans start there, not at the root.
    prefix: Vec<String>,
    /// How deep below the prefix a match can be; `None` when `**` makes it unbounded.
    max_depth: Option<usize>,
}

impl Pattern {
    pub fn parse(pattern: &str) -> Result<Pattern, PatternError> {
        let invalid = |m: String| Err(PatternError::Invalid(m));
        if pattern.is_empty() {
            return invalid(
                "the file pattern is empty; give a glob relative to the sandbox root, such as `incoming/*.csv`".into(),
            );
        }
        if pattern.len() > MAX_PATTERN_BYTES {
            return invalid(format!("the file pattern is too long; the limit is {MAX_PATTERN_BYTES} bytes"));
        }
        if pattern.contains('\0') {
            return invalid("the file pattern contains a NUL byte; remove it".into());
        }
        if pattern.contains('\\') {
            return invalid(format!("file pattern `{pattern}` contains a backslash; separate folders with `/`"));
        }
        if pattern.starts_with('/') {
            return Err(PatternError::LeavesSandbox(format!(
                "file pattern `{pattern}` is absolute; give a glob relative to the sandbox root"
            )));
        }
        let parts: Vec<&str> = pattern.split('/').collect();
        if parts.contains(&"..") {
            return Err(PatternError::LeavesSandbox(format!(
                "file pattern `{pattern}` contains `..`; patterns may not leave the sandbox"
            )));
        }
        // Scanned paths never contain these, so a pattern with them would silently match nothing.
        if parts.iter().any(|p| p.is_empty() || *p == ".") {
            return invalid(format!(
                "file pattern `{pattern}` has an empty or `.` folder; remove the extra `/` or `./`"
            ));
        }
        let matcher = GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| PatternError::Invalid(format!("file pattern `{pattern}` is not a valid glob: {}", e.kind())))?
            .compile_matcher();
        let folders = &parts[..parts.len() - 1];
        let prefix: Vec<String> =
            folders.iter().take_while(|p| !p.contains(GLOB_CHARS)).map(|p| (*p).to_owned()).collect();
        // Without `**` every `/` in a match comes from a `/` in the pattern, so the number
        // of `/` bounds the depth (alternatives like `{a,b/c}` only make it an overestimate).
        let max_depth = (!pattern.contains("**")).then(|| parts.len() - prefix.len());
        Ok(Pattern { text: pattern.to_owned(), matcher, prefix, max_depth })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The literal folder scans start from, `/`-separated; empty for the sandbox root.
    pub fn prefix(&self) -> String {
        self.prefix.join("/")
    }

    /// Whether a `/`-separated path relative to the sandbox root matches.
    pub fn matches(&self, path: &str) -> bool {
        self.matcher.is_match(path)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A regular file as one scan saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSeen {
    /// Relative to the sandbox root, `/`-separated.
    pub path: String,
    pub size: u64,
    /// Nanoseconds since the Unix epoch, negative before it.
    pub mtime_ns: i64,
}

/// The regular files under `root` matching `pattern`, sorted by path.
///
/// Upload temporaries of the files API (`.shoal-upload-*`) are never seen: they are half
/// written, and renamed to their real name once complete. Symlinks are never followed, neither to files nor to folders, so a job cannot make a
/// listener report files outside its sandbox. Files whose names are not UTF-8 cannot be
/// named in an event and are left out. A missing prefix folder means no files yet; a
/// missing root is an error. More than `max_files` matches is an error rather than a
/// truncated list, since a partial list would make the rest look vanished.
pub fn scan(root: &Path, pattern: &Pattern, max_files: usize) -> io::Result<Vec<FileSeen>> {
    let context = |e: io::Error, path: &Path| io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()));
    let meta = std::fs::metadata(root).map_err(|e| context(e, root))?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!("{} is not a folder", root.display())));
    }
    // Checked one folder at a time so that a symlink anywhere in the prefix is not followed.
    let mut start = root.to_path_buf();
    for part in &pattern.prefix {
        start.push(part);
        match std::fs::symlink_metadata(&start) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(Vec::new()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(context(e, &start)),
        }
    }
    let mut walk = WalkDir::new(&start).follow_links(false).follow_root_links(false).min_depth(1);
    if let Some(depth) = pattern.max_depth {
        walk = walk.max_depth(depth);
    }
    let mut found = Vec::new();
    for entry in walk {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        if !entry.file_type().is_file() {
            continue;
        }
        if entry.file_name().to_str().is_some_and(shoal_core::path::is_upload_temp) {
            continue;
        }
        let Some(path) = relative(root, entry.path()) else { continue };
        if !pattern.matches(&path) {
            continue;
        }
        let meta = match entry.metadata() {
            // Replaced by a symlink or a folder since the directory was read.
            Ok(m) if !m.is_file() => continue,
            Ok(m) => m,
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        if found.len() == max_files {
            return Err(io::Error::other(format!(
                "more than {max_files} files under {} match `{pattern}`; narrow the pattern or move handled files elsewhere",
                start.display()
            )));
        }
        found.push(FileSeen { path, size: meta.len(), mtime_ns: mtime_ns(meta.modified().ok()) });
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// Removes the upload temporaries (`.shoal-upload-*` regular files) under `root` last
/// modified before `before`: those a crash or a kill left behind. An upload in progress
/// writes its temporary continually, so giving the time this node started spares the uploads
/// it serves itself. Symlinks are not followed. Returns how many were removed.
pub fn remove_stale_uploads(root: &Path, before: SystemTime) -> io::Result<usize> {
    if !root.is_dir() {
        return Ok(0);
    }
    let mut removed = 0;
    for entry in WalkDir::new(root).follow_links(false).follow_root_links(false).min_depth(1) {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        if !entry.file_type().is_file() || !entry.file_name().to_str().is_some_and(shoal_core::path::is_upload_temp) {
            continue;
        }
        let stale = entry.metadata().ok().and_then(|m| m.modified().ok()).is_some_and(|t| t < before);
        if stale {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// In the background, removes the upload temporaries a crash left in the sandboxes this
/// node holds (its local sandboxes and its partitions; a shared folder may be written by
/// other nodes' uploads, so it is left alone). Called once at start.
pub fn clean_stale_uploads(store: std::sync::Arc<shoal_store::Store>, node: String) {
    let started = SystemTime::now();
    tokio::spawn(async move {
        let sandboxes = match store.list_sandboxes().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list sandboxes to remove stale upload temporaries");
                return;
            }
        };
        let mut roots = Vec::new();
        for s in sandboxes {
            match s.kind {
                shoal_core::SandboxKind::Local if s.node_id.as_deref() == Some(node.as_str()) => roots.push(s.root),
                shoal_core::SandboxKind::Partitioned => {
                    roots.extend(s.partitions.into_iter().filter(|p| p.node == node).map(|p| p.root))
                }
                _ => {}
            }
        }
        let _ = tokio::task::spawn_blocking(move || {
            for root in roots {
                match remove_stale_uploads(Path::new(&root), started) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(root, removed = n, "removed upload temporaries left by an earlier run"),
                    Err(e) => tracing::warn!(root, error = %e, "cannot remove stale upload temporaries"),
                }
            }
        })
        .await;
    });
}

fn vanished(e: &walkdir::Error) -> bool {
    e.io_error().is_some_and(|e| e.kind() == io::ErrorKind::NotFound)
}

fn relative(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}

fn mtime_ns(modified: Option<SystemTime>) -> i64 {
    let clamp = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    match modified.map(|t| t.duration_since(UNIX_EPOCH)) {
        Some(Ok(after)) => clamp(after),
        Some(Err(before)) => -clamp(before.duration()),
        None => 0,
    }
}

/// Holds back files that are still being written: a file is settled once its size and
/// modification time have not changed for `settle`, counted from the first scan that saw
/// those values. Lives in one node's memory; a node that takes over a listener starts
/// afresh, which only delays events by one settle period.
#[derive(Debug)]
pub struct Settler {
    settle: Duration,
    since: HashMap<String, (u64, i64, Instant)>,
}

impl Settler {
    pub fn new(settle: Duration) -> Settler {
        Settler { settle, since: HashMap::new() }
    }

    /// The files of `seen` that have settled by `now`, in the order given. Files not in
    /// `seen` are forgotten, so one that comes back starts its settle period again.
    pub fn observe(&mut self, now: Instant, seen: &[FileSeen]) -> Vec<FileSeen> {
        let mut since = HashMap::with_capacity(seen.len());
        let mut settled = Vec::new();
        for f in seen {
            let first = match self.since.get(&f.path) {
                Some(&(size, mtime, at)) if size == f.size && mtime == f.mtime_ns => at,
                _ => now,
            };
            if now.saturating_duration_since(first) >= self.settle {
                settled.push(f.clone());
            }
            since.insert(f.path.clone(), (f.size, f.mtime_ns, first));
        }
        self.since = since;
        settled
    }

    pub fn reset(&mut self) {
        self.since.clear();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileEventKind {
    Appeared,
    Changed,
    Vanished,
}

impl FileEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileEventKind::Appeared => "appeared",
            FileEventKind::Changed => "changed",
            FileEventKind::Vanished => "vanished",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "appeared" => Some(FileEventKind::Appeared),
            "changed" => Some(FileEventKind::Changed),
            "vanished" => Some(FileEventKind::Vanished),
            _ => None,
        }
    }
}

/// One file event. For `vanished`, `size` and `mtime_ns` are the cursor's last values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEvent {
    pub kind: FileEventKind,
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileEvent {
    /// Built only from the file's own values, so two nodes that see the same event give it
    /// the same key and the store fires it once. The path comes last because it may contain
    /// `:`. A file removed and recreated with the very same size and mtime (to the
    /// nanosecond) would repeat an old key; that is accepted.
    pub fn key(&self) -> String {
        format!("{}:{}:{}:{}", self.kind.as_str(), self.size, self.mtime_ns, self.path)
    }

    /// Whether the listener asked for this kind; events it did not ask for must still be
    /// applied to the cursor (see [`diff`]).
    pub fn wanted(&self, wanted: &[FileEventKind]) -> bool {
        wanted.contains(&self.kind)
    }

    /// Moves `cursor` past this event.
    pub fn apply(&self, cursor: &mut HashMap<String, (u64, i64)>) {
        match self.kind {
            FileEventKind::Appeared | FileEventKind::Changed => {
                cursor.insert(self.path.clone(), (self.size, self.mtime_ns));
            }
            FileEventKind::Vanished => {
                cursor.remove(&self.path);
            }
        }
    }
}

/// Every event between `cursor` and a scan, sorted by path: `appeared` and `changed` from
/// the `settled` files, `vanished` for cursor paths absent from `present` (everything the
/// scan saw, settled or not: a file being rewritten is still there).
///
/// All kinds are returned, not just the wanted ones, because the cursor must move past
/// every event: a listener for `changed` only must not report a new file as changed on
/// its next scan. The caller applies each event with [`FileEvent::apply`] and fires only
/// those for which [`FileEvent::wanted`] holds.
pub fn diff(cursor: &HashMap<String, (u64, i64)>, present: &[FileSeen], settled: &[FileSeen]) -> Vec<FileEvent> {
    let event = |kind, f: &FileSeen| FileEvent { kind, path: f.path.clone(), size: f.size, mtime_ns: f.mtime_ns };
    let mut events = Vec::new();
    for f in settled {
        match cursor.get(&f.path) {
            None => events.push(event(FileEventKind::Appeared, f)),
            Some(&last) if last != (f.size, f.mtime_ns) => events.push(event(FileEventKind::Changed, f)),
            Some(_) => {}
        }
    }
    let present: HashSet<&str> = present.iter().map(|f| f.path.as_str()).collect();
    for (path, &(size, mtime_ns)) in cursor {
        if !present.contains(path.as_str()) {
            events.push(FileEvent { kind: FileEventKind::Vanished, path: path.clone(), size, mtime_ns });
        }
    }
    events.sort_by(|a, b| a.path.cmp(&b.path));
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn pattern(p: &str) -> Pattern {
        Pattern::parse(p).unwrap()
    }

    fn seen(path: &str, size: u64, mtime_ns: i64) -> FileSeen {
        FileSeen { path: path.into(), size, mtime_ns }
    }

    fn touch(root: &Path, path: &str) {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"x").unwrap();
    }

    fn paths(files: &[FileSeen]) -> Vec<&str> {
        files.iter().map(|f| f.path.as_str()).collect()
    }

    #[test]
    fn patterns_that_leave_the_sandbox_are_refused() {
        for p in ["/etc/*.conf", "../*.csv", "in/../../x", "in/.."] {
            let e = Pattern::parse(p).unwrap_err();
            assert!(matches!(e, PatternError::LeavesSandbox(_)), "{p}: {e:?}");
        }
    }

    #[test]
    fn malformed_patterns_are_refused() {
        let long = "a".repeat(MAX_PATTERN_BYTES + 1);
        for p in ["", "in\\*.csv", "in/\0.csv", "in/[a.csv", "in/{a,b.csv", "in//*.csv", "./in/*.csv", "in/", &long] {
            let e = Pattern::parse(p).unwrap_err();
            assert!(matches!(e, PatternError::Invalid(_)), "{p:?}: {e:?}");
        }
        let e = Pattern::parse("in/[a.csv").unwrap_err().to_string();
        assert!(e.contains("not a valid glob"), "{e}");
    }

    #[test]
    fn star_stays_in_its_folder_and_double_star_crosses() {
        let p = pattern("incoming/*.csv");
        assert!(p.matches("incoming/a.csv"));
        assert!(!p.matches("incoming/sub/a.csv"));
        assert!(!p.matches("a.csv"));
        let p = pattern("in/**/*.json");
        assert!(p.matches("in/a.json"));
        assert!(p.matches("in/x/y/a.json"));
        assert!(!p.matches("out/a.json"));
        assert_eq!(p.as_str(), "in/**/*.json");
    }

    #[test]
    fn prefix_is_the_leading_literal_folders() {
        assert_eq!(pattern("incoming/*.csv").prefix(), "incoming");
        assert_eq!(pattern("in/**/*.json").prefix(), "in");
        assert_eq!(pattern("a/b/c.txt").prefix(), "a/b");
        assert_eq!(pattern("a/{b,c}/*.txt").prefix(), "a");
        assert_eq!(pattern("*.csv").prefix(), "");
        assert_eq!(pattern("**").prefix(), "");
    }

    #[test]
    fn scan_finds_matching_regular_files_in_nested_folders() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["in/b.json", "in/x/a.json", "in/x/y/c.json", "in/x/skip.txt", "out/d.json"] {
            touch(dir.path(), f);
        }
        fs::create_dir_all(dir.path().join("in/dir.json")).unwrap();
        let files = scan(dir.path(), &pattern("in/**/*.json"), 100).unwrap();
        assert_eq!(paths(&files), ["in/b.json", "in/x/a.json", "in/x/y/c.json"]);
        assert_eq!(files[0].size, 1);
        assert!(files[0].mtime_ns > 0);
        let files = scan(dir.path(), &pattern("in/*.json"), 100).unwrap();
        assert_eq!(paths(&files), ["in/b.json"]);
    }

    #[cfg(unix)]
    #[test]
    fn scan_does_not_follow_symlinks() {
        use std::os::unix::fs::symlink;
        let outside = tempfile::tempdir().unwrap();
        touch(outside.path(), "secret.csv");
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "in/real.csv");
        symlink(outside.path().join("secret.csv"), dir.path().join("in/link.csv")).unwrap();
        symlink(outside.path(), dir.path().join("in/linkdir")).unwrap();
        symlink(outside.path(), dir.path().join("linked")).unwrap();
        let files = scan(dir.path(), &pattern("in/**/*.csv"), 100).unwrap();
        assert_eq!(paths(&files), ["in/real.csv"]);
        // A symlink as the literal prefix is not followed either.
        assert!(scan(dir.path(), &pattern("linked/*.csv"), 100).unwrap().is_empty());
    }

    #[test]
    fn scan_never_sees_upload_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "in/a.csv");
        touch(dir.path(), "in/.shoal-upload-0b7f2e4c");
        touch(dir.path(), ".shoal-upload-1");
        assert_eq!(paths(&scan(dir.path(), &pattern("in/*"), 100).unwrap()), ["in/a.csv"]);
        assert_eq!(paths(&scan(dir.path(), &pattern("**"), 100).unwrap()), ["in/a.csv"]);
        assert_eq!(paths(&scan(dir.path(), &pattern("in/.shoal-upload-*"), 100).unwrap()), Vec::<&str>::new());
    }

    #[test]
    fn stale_upload_temporaries_are_removed_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a/.shoal-upload-old", ".shoal-upload-old2", "a/keep.csv", "a/.shoal-upload-new"] {
            touch(dir.path(), f);
        }
        let old = SystemTime::now() - Duration::from_secs(3600);
        for f in ["a/.shoal-upload-old", ".shoal-upload-old2", "a/keep.csv"] {
            fs::File::options().write(true).open(dir.path().join(f)).unwrap().set_modified(old).unwrap();
        }
        let before = SystemTime::now() - Duration::from_secs(60);
        assert_eq!(remove_stale_uploads(dir.path(), before).unwrap(), 2);
        assert!(!dir.path().join("a/.shoal-upload-old").exists());
        assert!(!dir.path().join(".shoal-upload-old2").exists());
        assert!(dir.path().join("a/keep.csv").exists());
        assert!(dir.path().join("a/.shoal-upload-new").exists(), "an upload in progress was removed");
        assert_eq!(remove_stale_uploads(&dir.path().join("missing"), before).unwrap(), 0);
    }

    #[test]
    fn scan_of_a_missing_prefix_is_empty_but_a_missing_root_fails() {
        let dir = tempfile::tempdir().unwrap();
        assert!(scan(dir.path(), &pattern("incoming/*.csv"), 100).unwrap().is_empty());
        assert!(scan(&dir.path().join("gone"), &pattern("*.csv"), 100).is_err());
    }

    #[test]
    fn scan_fails_past_max_files() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a.csv", "b.csv", "c.csv"] {
            touch(dir.path(), f);
        }
        assert_eq!(scan(dir.path(), &pattern("*.csv"), 3).unwrap().len(), 3);
        let e = scan(dir.path(), &pattern("*.csv"), 2).unwrap_err();
        assert!(e.to_string().contains("more than 2 files"), "{e}");
    }

    #[test]
    fn a_growing_file_settles_only_once_it_holds_still() {
        let settle = Duration::from_secs(2);
        let mut s = Settler::new(settle);
        let t0 = Instant::now();
        let sec = |n| t0 + Duration::from_secs(n);
        assert!(s.observe(t0, &[seen("a", 10, 1)]).is_empty());
        assert!(s.observe(sec(1), &[seen("a", 20, 2)]).is_empty());
        assert!(s.observe(sec(2), &[seen("a", 30, 3)]).is_empty());
        assert!(s.observe(sec(3), &[seen("a", 30, 3)]).is_empty());
        assert_eq!(s.observe(sec(4), &[seen("a", 30, 3)]), [seen("a", 30, 3)]);
        // Forgotten once gone: coming back starts the period again.
        assert!(s.observe(sec(5), &[]).is_empty());
        assert!(s.observe(sec(6), &[seen("a", 30, 3)]).is_empty());
        s.reset();
        assert!(s.observe(sec(9), &[seen("a", 30, 3)]).is_empty());
    }

    #[test]
    fn zero_settle_settles_at_once() {
        let mut s = Settler::new(Duration::ZERO);
        let files = [seen("a", 1, 1), seen("b", 2, 2)];
        assert_eq!(s.observe(Instant::now(), &files), files);
    }

    #[test]
    fn diff_gives_each_kind() {
        let cursor: HashMap<String, (u64, i64)> =
            [("same".into(), (1, 1)), ("grown".into(), (1, 1)), ("gone".into(), (5, 7))].into();
        let present = [seen("grown", 2, 2), seen("new", 3, 3), seen("same", 1, 1)];
        let events = diff(&cursor, &present, &present);
        let got: Vec<String> = events.iter().map(FileEvent::key).collect();
        assert_eq!(got, ["vanished:5:7:gone", "changed:2:2:grown", "appeared:3:3:new"]);

        let mut cursor = cursor;
        for e in &events {
            e.apply(&mut cursor);
        }
        assert!(diff(&cursor, &present, &present).is_empty());
    }

    #[test]
    fn an_unsettled_file_is_neither_changed_nor_vanished() {
        let cursor: HashMap<String, (u64, i64)> = [("a".into(), (1, 1))].into();
        assert!(diff(&cursor, &[seen("a", 9, 9)], &[]).is_empty());
        assert!(diff(&HashMap::new(), &[seen("b", 1, 1)], &[]).is_empty());
    }

    #[test]
    fn wanted_filters_by_kind_and_kinds_round_trip() {
        let e = FileEvent { kind: FileEventKind::Changed, path: "a".into(), size: 1, mtime_ns: 2 };
        assert!(e.wanted(&[FileEventKind::Appeared, FileEventKind::Changed]));
        assert!(!e.wanted(&[FileEventKind::Vanished]));
        for k in [FileEventKind::Appeared, FileEventKind::Changed, FileEventKind::Vanished] {
            assert_eq!(FileEventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(FileEventKind::parse("created"), None);
    }
}
