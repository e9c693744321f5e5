//! The async polling helper, available with the `tokio` feature.
#![cfg(feature = "tokio")]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use shoal_testkit::wait_until_async;

#[tokio::test]
async fn returns_once_the_condition_holds() {
    let calls = AtomicU32::new(0);
    wait_until_async("three calls", Duration::from_secs(5), || async {
        calls.fetch_add(1, Ordering::Relaxed) + 1 == 3
    })
    .await;
    assert_eq!(calls.load(Ordering::Relaxed), 3);
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "timed out after 60s waiting for: never")]
async fn times_out_on_tokio_clock() {
    // With time paused, a minute passes instantly.
    wait_until_async("never", Duration::from_secs(60), || async { false }).await;
}
