//! chitchat's transport, with every UDP packet sealed (ChaCha20-Poly1305) under a key derived from the
//! cluster secret.
//!
//! chitchat 0.13 keeps its wire encoding private (`ChitchatEnvelope::serialize` is `pub(crate)`), so a
//! custom `Socket` cannot turn an envelope into bytes itself. The only public code that can is chitchat's
//! own `UdpSocket`, so [`SealedSocket`] keeps one bound to 127.0.0.1 as a codec and relays through it:
//!
//! - send: chitchat's socket sends the envelope, in clear, to our loopback `pipe` socket; we read those
//!   bytes, seal them and send them from the public socket to the peer.
//! - receive: the public socket reads a sealed packet; if it opens, `pipe` sends the plaintext to
//!   chitchat's socket, which decodes it; we hand the envelope on with the real sender's address.
//!
//! Clear text only ever crosses loopback between two sockets of this process, and each side accepts
//! datagrams from the other side's address only. The cost is two extra loopback datagrams per packet,
//! nothing at gossip rates.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket as ChitchatUdpSocket};
use chitchat::ChitchatEnvelope;
use parking_lot::Mutex;
use tokio::net::UdpSocket;

use crate::crypto::{Sealer, OVERHEAD};
use crate::rejections::{Rejection, Rejections};

/// The largest UDP payload over IPv4 (65535 minus the IP and UDP headers). chitchat sizes its messages to
/// fit it, so a message within [`OVERHEAD`] bytes of it cannot be sent sealed.
const MAX_DATAGRAM: usize = 65_507;

/// How long a decoded plaintext may take to come back from chitchat's codec socket over loopback. Past
/// this, chitchat rejected it as not a chitchat message (it logs why), and we stop waiting for it.
const CODEC_TIMEOUT: Duration = Duration::from_millis(250);

/// At most one warning about messages too large to seal in this interval.
const TOO_LARGE_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// A chitchat [`Transport`] whose single socket is the gossip socket bound by [`crate::Membership::start`].
pub(crate) struct SealedTransport {
    socket: Mutex<Option<std::net::UdpSocket>>,
    sealer: Arc<Sealer>,
    rejections: Arc<Rejections>,
}

impl SealedTransport {
    /// A transport that will hand out `socket` (already bound, so that port 0 is resolved before chitchat
    /// learns the node's address).
    pub(crate) fn new(socket: std::net::UdpSocket, sealer: Arc<Sealer>, rejections: Arc<Rejections>) -> Self {
        SealedTransport { socket: Mutex::new(Some(socket)), sealer, rejections }
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = self.socket.lock().take().context("the gossip socket was already opened")?;
        socket.set_nonblocking(true).context("gossip socket")?;
        let public = UdpSocket::from_std(socket).context("gossip socket")?;
        anyhow::ensure!(
            public.local_addr()? == listen_addr,
            "chitchat asked for {listen_addr}, but the gossip socket is bound to {}",
            public.local_addr()?
        );
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let codec = ChitchatUdpSocket::open(loopback).await?;
        let codec_addr = codec.local_addr()?;
        let pipe = UdpSocket::bind(loopback).await.context("failed to bind the gossip codec pipe")?;
        let pipe_addr = pipe.local_addr()?;
        Ok(Box::new(SealedSocket {
            public,
            codec,
            codec_addr,
            pipe,
            pipe_addr,
            sealer: self.sealer.clone(),
            rejections: self.rejections.clone(),
            buf: vec![0; MAX_DATAGRAM + 1].into_boxed_slice(),
            sealed: Vec::with_capacity(MAX_DATAGRAM),
            in_codec: None,
            too_large_warned: None,
        }))
    }
}

/// See the module documentation.
struct SealedSocket {
    /// The gossip socket peers talk to: sealed packets only.
    public: UdpSocket,
    /// chitchat's own UDP socket on loopback, used as the envelope codec.
    codec: ChitchatUdpSocket,
    codec_addr: SocketAddr,
    /// Our end of the loopback pair.
    pipe: UdpSocket,
    pipe_addr: SocketAddr,
    sealer: Arc<Sealer>,
    rejections: Arc<Rejections>,
    buf: Box<[u8]>,
    sealed: Vec<u8>,
    /// A plaintext handed to the codec and not yet read back: its real sender and sealed size. Kept in
    /// `self` because chitchat drops `recv` futures whenever another event wins its `select!`.
    in_codec: Option<InCodec>,
    /// When a message too large to seal was last logged.
    too_large_warned: Option<Instant>,
}

#[derive(Clone, Copy)]
struct InCodec {
    from: SocketAddr,
    plain_len: usize,
    sealed_len: usize,
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.public.local_addr().context("gossip socket address")
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        // Encode through chitchat's socket, then read the clear bytes back on our end of the pipe.
        self.codec.send(self.pipe_addr, envelope).await?;
        let plain_len = loop {
            let (len, from) = self.pipe.recv_from(&mut self.buf).await.context("gossip codec pipe")?;
            if from == self.codec_addr {
                break len;
            }
        };
        if plain_len + OVERHEAD > MAX_DATAGRAM {
            // Only when a delta is filled to chitchat's limit: tens of kilobytes of (compressed) keys to
            // catch up on. The next rounds send smaller deltas once the peer has the rest.
            if !matches!(self.too_large_warned, Some(at) if at.elapsed() < TOO_LARGE_WARN_INTERVAL) {
                self.too_large_warned = Some(Instant::now());
                tracing::warn!(%to, bytes = plain_len, "gossip message too large to send sealed; dropped");
            }
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        self.sealer.seal(&self.buf[..plain_len], &mut self.sealed);
        let num_bytes_sent = self.public.send_to(&self.sealed, to).await.context("failed to send gossip packet")?;
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some(pending) = self.in_codec {
                match tokio::time::timeout(CODEC_TIMEOUT, self.codec.recv()).await {
                    Ok(outcome) => {
                        let outcome = outcome?;
                        if outcome.from_addr != self.pipe_addr || outcome.num_bytes_received != pending.plain_len {
                            // Not the packet we relayed (someone else on loopback, or a late one): skip it.
                            continue;
                        }
                        self.in_codec = None;
                        return Ok(RecvOutcome {
                            from_addr: pending.from,
                            envelope: outcome.envelope,
                            num_bytes_received: pending.sealed_len,
                        });
                    }
                    Err(_elapsed) => {
                        self.in_codec = None;
                        self.rejections.reject(pending.from, Rejection::Undecodable);
                    }
                }
            }
            let (sealed_len, from) = match self.public.recv_from(&mut self.buf).await {
                Ok(received) => received,
                // An ICMP error from an earlier send (a peer that went away) surfaces on the next read.
                Err(err) if is_transient(&err) => continue,
                Err(err) => return Err(err).context("gossip socket receive failed"),
            };
            if sealed_len > MAX_DATAGRAM {
                self.rejections.reject(from, Rejection::Gossip);
                continue;
            }
            let Ok(plain) = self.sealer.open(&mut self.buf[..sealed_len]) else {
                self.rejections.reject(from, Rejection::Gossip);
                continue;
            };
            if !looks_like_chitchat(plain) {
                self.rejections.reject(from, Rejection::Undecodable);
                continue;
            }
            let plain_len = plain.len();
            self.pipe.send_to(plain, self.codec_addr).await.context("gossip codec pipe")?;
            self.in_codec = Some(InCodec { from, plain_len, sealed_len });
        }
    }
}

/// Checks chitchat's message header (magic number, protocol version, message type), so that the codec is
/// only asked to decode what it will almost surely accept: a message it rejects costs [`CODEC_TIMEOUT`].
fn looks_like_chitchat(plain: &[u8]) -> bool {
    const MAGIC: [u8; 2] = 45_139u16.to_le_bytes();
    const PROTOCOL_VERSIONS: std::ops::RangeInclusive<u8> = 0..=1;
    const MESSAGE_TYPES: std::ops::RangeInclusive<u8> = 0..=3;
    matches!(plain, [m0, m1, version, kind, ..]
        if [*m0, *m1] == MAGIC && PROTOCOL_VERSIONS.contains(version) && MESSAGE_TYPES.contains(kind))
}

fn is_transient(err: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(err.kind(), ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset | ErrorKind::OutOfMemory)
}

#[cfg(test)]
mod tests {
    use chitchat::{ChitchatMessage, ProtocolVersion};

    use super::*;
    use crate::crypto::GOSSIP_LABEL;

    async fn open(secret: &[u8]) -> (Box<dyn Socket>, Arc<Rejections>) {
        let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = socket.local_addr().unwrap();
        let rejections = Arc::new(Rejections::default());
        let transport = SealedTransport::new(socket, Arc::new(Sealer::new(secret, GOSSIP_LABEL)), rejections.clone());
        (transport.open(addr).await.unwrap(), rejections)
    }

    fn bad_cluster() -> ChitchatEnvelope {
        // The one message that needs no digest, which chitchat does not let us build.
        ChitchatEnvelope { version: ProtocolVersion::V1, message: ChitchatMessage::BadCluster }
    }

    async fn recv(socket: &mut Box<dyn Socket>) -> RecvOutcome {
        tokio::time::timeout(Duration::from_secs(5), socket.recv()).await.expect("a packet arrives").unwrap()
    }

    #[tokio::test]
    async fn envelopes_travel_sealed_and_arrive_from_the_real_sender() {
        let (mut a, _) = open(b"secret").await;
        let (mut b, b_rejections) = open(b"secret").await;
        let eavesdropper = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();

        let sent = a.send(b.local_addr().unwrap(), bad_cluster()).await.unwrap();
        let received = recv(&mut b).await;
        assert_eq!(received.envelope, bad_cluster());
        assert_eq!(received.from_addr, a.local_addr().unwrap());
        assert_eq!(received.num_bytes_received, sent.num_bytes_sent);
        assert_eq!(b_rejections.count(), 0);

        // On the wire there is no chitchat header, only a sealed packet.
        a.send(eavesdropper.local_addr().unwrap(), bad_cluster()).await.unwrap();
        let mut wire = [0u8; 1024];
        let (len, _) = eavesdropper.recv_from(&mut wire).await.unwrap();
        assert!(!looks_like_chitchat(&wire[..len]) && len == sent.num_bytes_sent);
        assert!(looks_like_chitchat(&[0x53, 0xb0, 1, 3]), "the header check knows chitchat's header");
    }

    #[tokio::test]
    async fn packets_sealed_with_another_secret_or_unsealed_are_dropped_and_counted() {
        let (mut outsider, _) = open(b"other secret").await;
        let (mut b, b_rejections) = open(b"secret").await;
        let b_addr = b.local_addr().unwrap();
        outsider.send(b_addr, bad_cluster()).await.unwrap();
        let plain = ChitchatUdpSocket::open(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
        let mut plain: Box<dyn Socket> = Box::new(plain);
        plain.send(b_addr, bad_cluster()).await.unwrap();

        let deadline = Instant::now() + Duration::from_secs(5);
        while b_rejections.count() < 2 {
            assert!(Instant::now() < deadline, "both packets are rejected");
            let outcome = tokio::time::timeout(Duration::from_millis(20), b.recv()).await;
            assert!(outcome.is_err(), "nothing gets through: {outcome:?}");
        }

        // Still working afterwards.
        let (mut a, _) = open(b"secret").await;
        a.send(b_addr, bad_cluster()).await.unwrap();
        assert_eq!(recv(&mut b).await.from_addr, a.local_addr().unwrap());
    }
}
