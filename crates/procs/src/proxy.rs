//! A TCP proxy that can be cut and restored, to take a store (or any server) away from a node
//! without touching either: the store cut-off test and the cut-off benchmark use it.

use crate::{Error, Result};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards every connection made to `127.0.0.1:<port>` to one target. The accept loop and the
/// connections run on the tokio runtime that started it; dropping the proxy stops accepting.
pub struct Proxy {
    port: u16,
    open: Arc<AtomicBool>,
    /// Bumped by every cut; each connection ends at the first bump after it opened.
    cuts: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Result<Proxy> {
        let listener =
            TcpListener::bind("127.0.0.1:0").await.map_err(|source| Error::Proxy { what: "bind a port", source })?;
        let port = listener.local_addr().map_err(|source| Error::Proxy { what: "read its port", source })?.port();
        let open = Arc::new(AtomicBool::new(true));
        let (cuts, cut_rx) = watch::channel(0u64);
        let accepting = open.clone();
        let accept = tokio::spawn(async move {
            loop {
                let mut inbound = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(_) => {
                        // Out of file descriptors, say: try again shortly rather than spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if !accepting.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut = cut_rx.clone();
                // Only cuts after this connection opened concern it.
                cut.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Ok(Proxy { port, open, cuts, accept })
    }

    /// The loopback port to connect to instead of the target's.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Drops every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Accepts and forwards new connections again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server; answers its address.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream) -> std::io::Result<[u8; 4]> {
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        Ok(buf)
    }

    #[tokio::test]
    async fn a_cut_ends_open_connections_and_refuses_new_ones_until_restored() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        let at = format!("127.0.0.1:{}", proxy.port());
        let mut before = TcpStream::connect(&at).await.unwrap();
        assert_eq!(&round_trip(&mut before).await.unwrap(), b"ping");

        proxy.cut();
        // The open connection is closed (a read sees the end), and a new one is dropped at once.
        let mut buf = [0u8; 1];
        assert_eq!(before.read(&mut buf).await.unwrap_or(0), 0);
        let mut during = TcpStream::connect(&at).await.unwrap();
        assert!(round_trip(&mut during).await.is_err(), "a connection made while cut must not reach the target");

        proxy.restore();
        let mut after = TcpStream::connect(&at).await.unwrap();
        assert_eq!(&round_trip(&mut after).await.unwrap(), b"ping");
    }
}
