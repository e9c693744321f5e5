//! A log stream that survives the death of the node serving it.
//!
//! Any node can serve any execution's logs from the store, in a fixed order (attempt, then
//! sequence number), and fencing stops an old attempt from writing once a newer one exists.
//! So the bytes of a log only ever grow at the end, and a broken stream can be reopened on
//! another server and the part already delivered skipped by counting bytes.

use crate::{ByteStream, Client, Error};
use futures::StreamExt;
use shoal_wire::LogStream;
use std::time::{Duration, Instant};

/// Reopenings in a row that deliver nothing new before giving up.
const MAX_FAILURES: u32 = 10;

/// A stream that lived this long was working; its breaking starts the count afresh.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

struct State {
    client: Client,
    id: String,
    follow: bool,
    filter: Option<LogStream>,
    current: Option<ByteStream>,
    /// The server the current stream comes from.
    serving: String,
    opened_at: Instant,
    /// Bytes handed to the caller so far.
    delivered: u64,
    /// Bytes of the current stream still to drop, because they were delivered before.
    skip: u64,
    failures: u32,
    done: bool,
}

pub(crate) fn resumable(
    client: Client,
    id: String,
    follow: bool,
    filter: Option<LogStream>,
    serving: String,
    first: ByteStream,
) -> ByteStream {
    let state = State {
        client,
        id,
        follow,
        filter,
        current: Some(first),
        serving,
        opened_at: Instant::now(),
        delivered: 0,
        skip: 0,
        failures: 0,
        done: false,
    };
    Box::pin(futures::stream::unfold(state, |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            let Some(current) = s.current.as_mut() else {
                match s.client.open_logs(&s.id, s.follow, s.filter).await {
                    Ok((serving, stream)) => {
                        s.current = Some(stream);
                        s.serving = serving;
                        s.opened_at = Instant::now();
                        s.skip = s.delivered;
                    }
                    // The server decided (the execution is gone, say): reopening cannot help.
                    Err(e @ Error::Api { status, .. }) if status < 500 => {
                        s.done = true;
                        return Some((Err(e), s));
                    }
                    Err(e) => {
                        if let Some(e) = s.failed(e).await {
                            return Some((Err(e), s));
                        }
                    }
                }
                continue;
            };
            match current.next().await {
                Some(Ok(mut chunk)) => {
                    if s.skip >= chunk.len() as u64 {
                        s.skip -= chunk.len() as u64;
                        continue;
                    }
                    let _ = chunk.split_to(s.skip as usize);
                    s.skip = 0;
                    s.delivered += chunk.len() as u64;
                    s.failures = 0;
                    return Some((Ok(chunk), s));
                }
                Some(Err(e)) => {
                    s.current = None;
                    s.client.demote(&s.serving);
                    if s.opened_at.elapsed() >= HEALTHY_AFTER {
                        s.failures = 0;
                    }
                    if let Some(e) = s.failed(e).await {
                        return Some((Err(e), s));
                    }
                }
                None => return None,
            }
        }
    }))
}

impl State {
    /// Counts a failure and waits before the next try; gives the error back when it is time
    /// to stop trying.
    async fn failed(&mut self, e: Error) -> Option<Error> {
        self.failures += 1;
        if self.failures > MAX_FAILURES {
            self.done = true;
            return Some(e);
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(self.failures.min(10)))).await;
        None
    }
}
