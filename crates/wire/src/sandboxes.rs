//! Sandboxes, their job files and their files.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a sandbox's files live, and so which nodes can use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxKind {
    /// The same folder on every node (a shared mount).
    Shared,
    /// On one node only; only that node runs its jobs and serves its files.
    Local,
    /// Several parts, each a folder on one node.
    Partitioned,
}

impl SandboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxKind::Shared => "shared",
            SandboxKind::Local => "local",
            SandboxKind::Partitioned => "partitioned",
        }
    }

    /// A kind from its name; the error says which names there are.
    pub fn parse(text: &str) -> Result<SandboxKind, String> {
        match text {
            "shared" => Ok(SandboxKind::Shared),
            "local" => Ok(SandboxKind::Local),
            "partitioned" => Ok(SandboxKind::Partitioned),
            "replicated" => Err(format!(
                "sandbox kind `{text}` is not supported by this version yet; use `shared`, `local` or `partitioned`"
            )),
            other => Err(format!("unknown sandbox kind `{other}`; use `shared`, `local` or `partitioned`")),
        }
    }
}

impl std::fmt::Display for SandboxKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A registered sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Sandbox {
    pub name: String,
    pub kind: SandboxKind,
    /// Absolute path of the sandbox folder on the node(s) that hold it; empty for
    /// `partitioned`.
    pub root: String,
    /// Holder of a `local` sandbox; null for the others.
    pub node: Option<String>,
    /// The parts of a `partitioned` sandbox; empty for the others.
    pub partitions: Vec<Partition>,
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// One part of a partitioned sandbox: a folder on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// Unique within the sandbox; a partitioned execution's children are named after it.
    pub name: String,
    /// The node that holds this part.
    pub node: String,
    /// The part's absolute folder on that node.
    pub root: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxList {
    pub sandboxes: Vec<Sandbox>,
}

/// Registers a sandbox. Unknown fields and wrong types are answered 400 `invalid_json`;
/// missing or inconsistent fields 422.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// 1 to 63 lowercase letters, digits, `-` or `_`, starting with a letter or digit.
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub name: String,
    /// `shared`: the same folder on every node (a shared mount). `local`: on one node only.
    /// `partitioned`: several parts, each a folder on one node (give `partitions`, not
    /// `root`).
    #[schema(value_type = SandboxKind)]
    pub kind: String,
    /// Absolute path of the sandbox folder; created if missing on this node. Required for
    /// `shared` and `local`, refused for `partitioned`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// Holder of a `local` sandbox (default: the node serving the request). Not allowed for
    /// the other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `partitioned` only. Names unique; no two parts on one node may share or nest folders
    /// (`invalid_partitions`); every node must have joined (`unknown_node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<PartitionRequest>>,
}

/// A part as sent: a missing field is answered 422 `invalid_partitions` naming it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartitionRequest {
    #[schema(required = true)]
    pub name: Option<String>,
    #[schema(required = true)]
    pub node: Option<String>,
    #[schema(required = true)]
    pub root: Option<String>,
}

/// A parameter a job file declares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobParam {
    pub name: String,
    pub default: Option<String>,
    /// True when the parameter has no default.
    pub required: bool,
    pub description: Option<String>,
}

/// A `*.toml` file under the sandbox's `jobs/` folder: `valid` says whether it is a valid
/// job; a valid one has `description` and `params`, an invalid one `error`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobEntry {
    /// Path inside the sandbox, e.g. `jobs/report.toml`.
    pub path: String,
    pub valid: bool,
    /// The job's description (null when it has none, and for invalid files).
    #[serde(default)]
    pub description: Option<String>,
    /// Valid jobs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Vec<JobParam>>,
    /// Invalid files only: why the file could not be read or parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub sandbox: String,
    /// Sorted by path.
    pub jobs: Vec<JobEntry>,
}

/// What a folder entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Folder,
    Symlink,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    pub name: String,
    /// Path inside the sandbox.
    pub path: String,
    pub kind: FileKind,
    /// Bytes; 0 for folders.
    pub size: u64,
}

/// The entries of a folder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FolderListing {
    /// The requested path without leading or trailing `/`; empty for the root.
    pub path: String,
    /// Sorted by name.
    pub entries: Vec<FileEntry>,
}

/// A file written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Upload {
    pub path: String,
    /// Bytes written.
    pub size: u64,
}
