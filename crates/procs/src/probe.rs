//! One `GET` over plain HTTP/1.1 that answers the status code: the readiness check, without an
//! HTTP client crate (this crate stays as light as the binary that uses it).

use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A node's readiness endpoint: 200 once its store is open and migrated, its lease taken and
/// its gossip and HTTP bound (the API serves the same at `/api/v1/health/ready`).
pub const READY_PATH: &str = "/health/ready";

/// The longest status line and headers read before giving up on an answer.
const MAX_HEAD: usize = 16 * 1024;

/// Sends `GET <path>` to `base` (`http://host:port`, no path) and answers the status code of
/// the reply, within `timeout`. Connection refused, a reset or a timeout is an `Err`: the node
/// is not listening (yet) or not answering.
pub async fn probe(base: &str, path: &str, timeout: Duration) -> io::Result<u16> {
    match tokio::time::timeout(timeout, get_status(base, path)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {timeout:?}"))),
    }
}

async fn get_status(base: &str, path: &str) -> io::Result<u16> {
    let authority = base
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("`{base}` is not http://host:port")))?;
    let mut stream = tokio::net::TcpStream::connect(authority).await?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: shoal-procs\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    // Only the status line matters; it ends at the first CRLF.
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed before a status line"));
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status(&head)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "the answer does not start with an HTTP status line"))
}

/// The code of a status line such as `HTTP/1.1 503 Service Unavailable`.
fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 abc\r\n"), None);
    }

    #[tokio::test]
    async fn probe_reads_the_status_and_reports_a_closed_port() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await.unwrap();
            request
        });
        assert_eq!(probe(&base, READY_PATH, Duration::from_secs(5)).await.unwrap(), 503);
        assert!(server.await.unwrap().starts_with("GET /health/ready HTTP/1.1\r\n"));
        // Nothing listens there any more.
        assert!(probe(&base, READY_PATH, Duration::from_secs(5)).await.is_err());
        assert_eq!(
            probe("127.0.0.1:1", "/", Duration::from_secs(1)).await.unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
