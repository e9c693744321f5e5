//! Reading a job's stdout and stderr pipes into a bounded channel of ordered chunks.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// Largest chunk delivered at once; one `read` fills at most this much.
pub(crate) const MAX_CHUNK: usize = 64 * 1024;
/// How many chunks may wait in the channel before the readers (and then the job, once its
/// pipe buffer is full) are held back.
pub(crate) const CHANNEL_CAPACITY: usize = 64;

/// Which of the job's output streams a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Bytes the job wrote to one stream. Chunks of one stream arrive in the order written;
/// chunks of the two streams are interleaved in no guaranteed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    /// Which stream the bytes came from.
    pub stream: Stream,
    /// The bytes, at most 64 KiB; never empty.
    pub data: Bytes,
}

/// Starts one reader task per pipe on the current runtime. The returned channel closes once
/// both pipes reach end of file, which happens when the supervisor and the job's whole
/// process group are gone.
pub(crate) fn spawn_readers<O, E>(stdout: O, stderr: E) -> mpsc::Receiver<OutputChunk>
where
    O: AsyncRead + Unpin + Send + 'static,
    E: AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    tokio::spawn(pump(stdout, Stream::Stdout, tx.clone()));
    tokio::spawn(pump(stderr, Stream::Stderr, tx));
    rx
}

/// Forwards whatever one `read` returns as a chunk, so a line reaches the channel as soon as
/// the job writes it. If the receiver is gone the pipe is still drained, so a job nobody
/// listens to never blocks on a full pipe.
async fn pump<R>(mut pipe: R, stream: Stream, tx: mpsc::Sender<OutputChunk>)
where
    R: AsyncRead + Unpin,
{
    let mut tx = Some(tx);
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if let Some(sender) = &tx {
                    let chunk = OutputChunk { stream, data: Bytes::copy_from_slice(&buf[..n]) };
                    if sender.send(chunk).await.is_err() {
                        tx = None;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(?stream, error = %e, "reading job output failed");
                break;
            }
        }
    }
}
