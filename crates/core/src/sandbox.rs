//! Sandbox kinds: where a sandbox's files live and so which nodes can use them.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxKind {
    /// The same content at the same path on every node (a shared mount).
    Shared,
    /// Lives on one node; only that node runs its jobs and serves its files.
    Local,
}

impl SandboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxKind::Shared => "shared",
            SandboxKind::Local => "local",
        }
    }

    pub fn parse(text: &str) -> Result<SandboxKind, String> {
        match text {
            "shared" => Ok(SandboxKind::Shared),
            "local" => Ok(SandboxKind::Local),
            "partitioned" | "replicated" => {
                Err(format!("sandbox kind `{text}` is not supported by this version yet; use `shared` or `local`"))
            }
            other => Err(format!("unknown sandbox kind `{other}`; use `shared` or `local`")),
        }
    }
}

impl fmt::Display for SandboxKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
