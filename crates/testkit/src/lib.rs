//! Test harness shared by shoal's crates: polling helpers, throwaway PostgreSQL servers (and
//! PgBouncer in front of them), and with the `procs` feature the process harness ([`procs`]: real `shoal server` processes, the
//! breakable TCP proxy), which lives in `shoal-procs` because `shoal up` uses it too.
//!
//! Nothing here is meant for production code; it panics freely, because a
//! harness that cannot set itself up should fail the test loudly and at once.

mod pg;
mod wait;

pub use pg::{multi_host_url, postgres, psql, PgBouncer, PgReplica, PgServer, PoolMode};
#[cfg(feature = "procs")]
pub use shoal_procs as procs;
pub use wait::wait_until;
#[cfg(feature = "tokio")]
pub use wait::wait_until_async;
