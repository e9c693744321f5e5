//! The bodies of `/api/v1/secrets`: job secrets, set and listed, never read back.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `PUT /api/v1/secrets/{name}`: the value to keep (sealed by the node before it is stored).
#[derive(Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRequest {
    /// The value: 4 bytes to 64 KiB of UTF-8, no NUL byte. No answer ever holds it; a job gets
    /// it in its environment, and every occurrence in the job's output is stored as `***`.
    #[schema(format = Password, min_length = 4, max_length = 65536, pattern = r"^[^\u0000]*$")]
    pub value: String,
}

/// No value in `Debug` output.
impl std::fmt::Debug for SecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRequest").finish_non_exhaustive()
    }
}

/// A secret as listed: its name, where it belongs, who set it and when; never its value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Secret {
    /// Named in a job file's `env` as `{secret.NAME}`.
    pub name: String,
    /// The sandbox whose jobs see it, before a cluster-wide secret of the same name; `null`:
    /// cluster-wide, seen by every sandbox's jobs.
    pub sandbox: Option<String>,
    /// The id of the key that sealed it (a hash of the key, never the key): while rotating,
    /// secrets still sealed with the previous key show its id until `rewrap`.
    pub key_id: String,
    pub created_by: String,
    pub created_at: String,
    pub updated_by: String,
    pub updated_at: String,
}

/// `GET /api/v1/secrets`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SecretList {
    pub secrets: Vec<Secret>,
}

/// `POST /api/v1/secrets/_rewrap`: what sealing every secret again under the current key did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Rewrap {
    /// The id of the key every secret is now sealed with.
    pub key_id: String,
    /// Secrets sealed again.
    pub rewrapped: u64,
    /// Secrets set again by someone while this ran (so already sealed with a node's current key).
    pub skipped: u64,
}
