//! The domain rules that both the API and the trigger workers follow, below HTTP: reading a
//! sandbox's job file, binding its parameters, checking a submission (an inline command's
//! settings, where a job runs) and fanning a partitioned job out into its children; making
//! tokens, hashing passwords and making login sessions; sealing and opening job secrets.
//!
//! Errors are [`DomainError`]s that say what went wrong; the API maps them to its codes and
//! statuses in one place (`shoal_api::error`), the trigger workers record them on a firing
//! or an event. **Never** knows HTTP, JSON bodies or the wire model.

pub mod job_file;
pub mod jobs;
pub mod passwords;
pub mod rights;
pub mod roots;
pub mod secrets;
pub mod sessions;
pub mod submission;
pub mod tokens;

use shoal_store::StoreError;

/// What went wrong, in the domain's terms. The message of each variant says what to fix; it
/// is the API's message for the same error, except where a variant's note says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// A sandbox that does not exist.
    #[error("{0}")]
    UnknownSandbox(String),
    /// A job file that does not exist in its sandbox.
    #[error("{0}")]
    UnknownJob(String),
    /// A job file that does not parse or validate, at a line and column (both 1-based).
    #[error("{file}: line {line}, column {column}: {message}")]
    InvalidJob { file: String, line: usize, column: usize, message: String },
    /// A job file over `shoal_core::job::MAX_JOB_FILE_BYTES`.
    #[error("job file `{file}` is over {limit} bytes")]
    JobTooLarge { file: String, limit: usize },
    /// A job file whose working directory, parameters substituted, leads out of its sandbox.
    #[error("job `{job}`: {message}")]
    JobWorkdirOutside { job: String, message: String },
    /// A job file that cannot be read. The API words it from the IO error (a path out of the
    /// sandbox, a folder where a file should be, ...), as it does for every sandbox file.
    #[error("cannot read job file `{file}`: {source}")]
    JobUnreadable {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// A sandbox whose folder cannot be opened on this node.
    #[error("cannot open the sandbox folder {root}: {source}")]
    SandboxFolder {
        root: String,
        #[source]
        source: std::io::Error,
    },
    /// A parameter the job requires was not given.
    #[error("{0}")]
    MissingParameter(String),
    /// A parameter the job does not take was given.
    #[error("{0}")]
    UnknownParameter(String),
    /// A parameter's value cannot be used (it leads out of the sandbox, holds a NUL byte, ...).
    #[error("{0}")]
    InvalidParameter(String),
    /// A request that breaks a rule of its own (both `job` and `command`, a zero timeout, ...).
    #[error("{0}")]
    InvalidRequest(String),
    /// A sandbox path that is not one (absolute, with `..`, ...).
    #[error("{0}")]
    InvalidPath(String),
    /// A sandbox root outside the node's allowed folders, or one holding its data.
    #[error("{0}")]
    RootNotAllowed(String),
    /// An allocation or partition naming a node that has never joined the cluster.
    #[error("{0}")]
    UnknownNode(String),
    /// An allocation needing tags no node of the cluster carries.
    #[error("{0}")]
    UnknownTag(String),
    /// A job names a secret that neither its sandbox nor the cluster has.
    #[error("{0}")]
    UnknownSecret(String),
    /// This node's secrets key is not the one the store's secrets were sealed with.
    #[error("{0}")]
    SecretsKey(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug or a broken machine (a blocking task that panicked).
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = DomainError> = std::result::Result<T, E>;

impl From<shoal_core::ParamError> for DomainError {
    fn from(e: shoal_core::ParamError) -> DomainError {
        match e {
            shoal_core::ParamError::Missing(_) => DomainError::MissingParameter(e.to_string()),
            shoal_core::ParamError::Unknown { .. } => DomainError::UnknownParameter(e.to_string()),
        }
    }
}

/// The node a job of `sandbox` must run on: the holder of a local sandbox.
pub fn pinned_node(sandbox: &shoal_store::SandboxRow) -> Option<String> {
    match sandbox.kind {
        shoal_core::SandboxKind::Local => sandbox.node_id.clone(),
        shoal_core::SandboxKind::Shared | shoal_core::SandboxKind::Partitioned => None,
    }
}
