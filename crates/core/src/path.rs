//! Paths inside a sandbox, checked before any file is touched.
//!
//! This is the lexical half of confinement: no absolute paths, no `..`, no NUL. The IO half
//! (no escape through symlinks) is done by opening files relative to the sandbox root with
//! `cap-std`, which refuses to resolve outside it.

use std::fmt;
use std::path::PathBuf;

/// Longest sandbox path, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest component of a sandbox path (a file or folder name), in bytes, as on most file
/// systems.
pub const MAX_NAME_BYTES: usize = 255;
/// How the files API names its upload temporaries (`.shoal-upload-<uuid>`, beside the target).
/// Such files are never listed, served, deleted through the API or seen by file listeners.
pub const UPLOAD_TEMP_PREFIX: &str = ".shoal-upload-";

/// Whether a file name is that of an upload temporary ([`UPLOAD_TEMP_PREFIX`]).
pub fn is_upload_temp(name: &str) -> bool {
    name.starts_with(UPLOAD_TEMP_PREFIX)
}

/// A normalised relative path inside a sandbox; empty means the sandbox root.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SandboxPath {
    parts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path `{0}` is absolute; give a path relative to the sandbox root")]
    Absolute(String),
    #[error("path `{0}` contains `..`; paths may not leave the sandbox")]
    ParentComponent(String),
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path `{0}` is too long; the limit is 4096 bytes")]
    TooLong(String),
    #[error("path `{0}` has a name longer than 255 bytes; shorten that file or folder name")]
    NameTooLong(String),
}

impl SandboxPath {
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        if raw.contains('\0') {
            return Err(PathError::Nul);
        }
        if raw.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong(raw.chars().take(64).collect()));
        }
        if raw.starts_with('/') {
            return Err(PathError::Absolute(raw.to_owned()));
        }
        let mut parts = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(PathError::ParentComponent(raw.to_owned())),
                p if p.len() > MAX_NAME_BYTES => {
                    return Err(PathError::NameTooLong(raw.chars().take(64).collect::<String>() + "..."))
                }
                p => parts.push(p.to_owned()),
            }
        }
        Ok(Self { parts })
    }

    pub fn is_root(&self) -> bool {
        self.parts.is_empty()
    }

    pub fn parts(&self) -> &[String] {
        &self.parts
    }

    /// The final component, if any.
    pub fn file_name(&self) -> Option<&str> {
        self.parts.last().map(String::as_str)
    }

    pub fn parent(&self) -> SandboxPath {
        let mut parts = self.parts.clone();
        parts.pop();
        SandboxPath { parts }
    }

    /// The path relative to the sandbox root, for `cap_std::fs::Dir` calls; `.` for the root.
    pub fn to_relative(&self) -> PathBuf {
        if self.parts.is_empty() {
            PathBuf::from(".")
        } else {
            self.parts.iter().collect()
        }
    }
}

impl fmt::Display for SandboxPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.parts.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalises() {
        assert_eq!(SandboxPath::parse("a//b/./c/").unwrap().to_string(), "a/b/c");
        assert!(SandboxPath::parse("").unwrap().is_root());
        assert!(SandboxPath::parse(".").unwrap().is_root());
    }

    #[test]
    fn rejects_escapes() {
        assert!(matches!(SandboxPath::parse("/etc/passwd"), Err(PathError::Absolute(_))));
        assert!(matches!(SandboxPath::parse("a/../../b"), Err(PathError::ParentComponent(_))));
        assert!(matches!(SandboxPath::parse(".."), Err(PathError::ParentComponent(_))));
        assert!(matches!(SandboxPath::parse("a\0b"), Err(PathError::Nul)));
    }

    #[test]
    fn rejects_overlong_names_and_paths() {
        let name = "n".repeat(MAX_NAME_BYTES);
        assert!(SandboxPath::parse(&format!("a/{name}")).is_ok());
        assert!(matches!(SandboxPath::parse(&format!("a/{name}x")), Err(PathError::NameTooLong(_))));
        // Bytes, not characters: 128 two-byte characters are 256 bytes.
        assert!(matches!(SandboxPath::parse(&"é".repeat(128)), Err(PathError::NameTooLong(_))));
        let long = vec!["d".repeat(200); 21].join("/");
        assert!(matches!(SandboxPath::parse(&long), Err(PathError::TooLong(_))));
    }

    #[test]
    fn upload_temporaries_are_recognised() {
        assert!(is_upload_temp(".shoal-upload-6f1c"));
        assert!(!is_upload_temp("shoal-upload-6f1c"));
        assert!(!is_upload_temp("data.csv"));
    }

    proptest! {
        // Whatever the input, an accepted path has no component that could climb out.
        #[test]
        fn accepted_paths_stay_inside(raw in "[a-z./\\\\]{0,40}") {
            if let Ok(p) = SandboxPath::parse(&raw) {
                prop_assert!(p.parts().iter().all(|c| c != ".." && c != "." && !c.is_empty()));
                prop_assert!(!p.to_relative().is_absolute());
                // normalising twice changes nothing
                prop_assert_eq!(SandboxPath::parse(&p.to_string()).unwrap(), p);
            }
        }
    }
}
