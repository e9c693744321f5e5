//! Test harness shared by shoal's crates: polling helpers and throwaway PostgreSQL servers.
//!
//! Nothing here is meant for production code; it panics freely, because a
//! harness that cannot set itself up should fail the test loudly and at once.

mod pg;
mod wait;

pub use pg::{postgres, psql, PgReplica, PgServer};
pub use wait::wait_until;
#[cfg(feature = "tokio")]
pub use wait::wait_until_async;
