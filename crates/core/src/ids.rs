//! Identifier newtypes, so a node id can never be passed where an execution id belongs.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A node's stable id: from configuration, or generated once and kept in its data directory.
    NodeId
);
string_id!(
    /// An execution's id: a UUIDv7 in text form, so ids sort by creation time (cursor paging relies on it).
    ExecutionId
);
string_id!(
    /// A sandbox's name: lowercase letters, digits, `-` and `_`, at most 63 characters.
    SandboxName
);

/// Checks the shape shared by node ids and sandbox names: it appears in URLs, paths and logs.
fn check_slug(kind: &str, text: &str) -> Result<(), String> {
    let ok_len = !text.is_empty() && text.len() <= 63;
    let ok_first = text.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_chars = text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok_len && ok_first && ok_chars {
        Ok(())
    } else {
        Err(format!(
            "invalid {kind} `{text}`: use 1 to 63 lowercase letters, digits, `-` or `_`, starting with a letter or digit"
        ))
    }
}

impl NodeId {
    pub fn parse(text: &str) -> Result<Self, String> {
        check_slug("node id", text)?;
        Ok(Self(text.to_owned()))
    }
}

impl SandboxName {
    pub fn parse(text: &str) -> Result<Self, String> {
        check_slug("sandbox name", text)?;
        Ok(Self(text.to_owned()))
    }
}

impl ExecutionId {
    /// Wraps an id produced by the store; the core does not generate ids (that needs a clock).
    pub fn from_trusted(text: String) -> Self {
        Self(text)
    }

    /// Checks that a user-supplied id has the shape of an execution id, so lookups of
    /// garbage fail fast with 404 rather than reaching the store.
    pub fn parse(text: &str) -> Option<Self> {
        let ok = text.len() == 36
            && text.chars().enumerate().all(|(i, c)| {
                if matches!(i, 8 | 13 | 18 | 23) {
                    c == '-'
                } else {
                    c.is_ascii_hexdigit()
                }
            });
        ok.then(|| Self(text.to_ascii_lowercase()))
    }
}

/// The fencing token of one attempt: drawn from a store-wide sequence when the attempt is
/// claimed. The store refuses every state change and log write whose token is not the
/// execution's current one, so a node that lost an attempt can never overwrite its successor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(pub i64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert!(NodeId::parse("n1").is_ok());
        assert!(NodeId::parse("node-a_2").is_ok());
        for bad in ["", "-a", "A", "a/b", "a b", &"x".repeat(64)] {
            assert!(NodeId::parse(bad).is_err(), "{bad:?} accepted");
            assert!(SandboxName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn execution_ids() {
        assert!(ExecutionId::parse("0190b5c8-8a4e-7c3a-9b1e-2f0a1b2c3d4e").is_some());
        assert!(ExecutionId::parse("nope").is_none());
        assert!(ExecutionId::parse("0190b5c8-8a4e-7c3a-9b1e-2f0a1b2c3d4g").is_none());
    }
}
