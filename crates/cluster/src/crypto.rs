//! Keys derived from the cluster secret, and the AEAD seal that every gossip and multicast packet wears.
//!
//! The secret is never used directly: each use gets its own key through HKDF-SHA256 (RFC 5869, one
//! output block), so a key that leaks from one use says nothing about the others, and the chitchat
//! cluster id (which travels inside packets and shows in logs) reveals nothing about the secret.

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce, Tag};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// HKDF salt: fixed, so that the same secret always derives the same keys on every node.
const SALT: &[u8] = b"shoal cluster secret v1";

/// HKDF `info` for the key that seals chitchat packets.
pub(crate) const GOSSIP_LABEL: &str = "gossip packet aead";
/// HKDF `info` for the key that seals multicast announcements.
pub(crate) const MULTICAST_LABEL: &str = "multicast announcement aead";
/// HKDF `info` for the chitchat cluster id.
const CLUSTER_ID_LABEL: &str = "chitchat cluster id";

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes a sealed packet carries on top of its plaintext: the random nonce in front, the tag behind.
pub(crate) const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Derives a 32-byte key for `label` from the cluster secret (HKDF-SHA256 extract, then one expand block).
pub(crate) fn derive_key(secret: &[u8], label: &str) -> [u8; 32] {
    hkdf_sha256(SALT, secret, label.as_bytes())
}

/// The first 32 bytes of HKDF-SHA256's output (RFC 5869): `T(1) = HMAC(HMAC(salt, ikm), info || 0x01)`.
fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let prk = hmac_sha256(salt, &[ikm]);
    hmac_sha256(&prk, &[info, &[1]])
}

/// The chitchat cluster id: a fingerprint of the secret, so nodes with different secrets also disagree on
/// it, without putting the secret itself in every packet.
pub(crate) fn cluster_id(secret: &[u8]) -> String {
    let key = derive_key(secret, CLUSTER_ID_LABEL);
    let hex: String = key[..8].iter().map(|byte| format!("{byte:02x}")).collect();
    format!("shoal-{hex}")
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("hmac takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Seals and opens packets with ChaCha20-Poly1305 under one derived key.
///
/// A sealed packet is `nonce (12 bytes) || ciphertext || tag (16 bytes)`. The nonce is random per packet:
/// at gossip rates (a few packets per second per peer) a collision of 96-bit random nonces is not a
/// practical concern.
pub(crate) struct Sealer {
    cipher: ChaCha20Poly1305,
}

/// A packet that did not open: too short, or not sealed with this key.
#[derive(Debug)]
pub(crate) struct NotSealed;

impl Sealer {
    /// A sealer for the key derived from `secret` for `label`.
    pub(crate) fn new(secret: &[u8], label: &str) -> Sealer {
        let key = derive_key(secret, label);
        Sealer { cipher: ChaCha20Poly1305::new(&key.into()) }
    }

    /// Replaces `out` with the sealed form of the plaintext that `write` appends to the buffer it is given.
    pub(crate) fn seal_with(&self, out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
        out.clear();
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        write(out);
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", &mut out[NONCE_LEN..])
            .expect("chacha20poly1305 seals any packet that fits in memory");
        out.extend_from_slice(&tag);
    }

    /// Seals `plaintext` into `out` (replacing its content).
    pub(crate) fn seal(&self, plaintext: &[u8], out: &mut Vec<u8>) {
        self.seal_with(out, |buf| buf.extend_from_slice(plaintext));
    }

    /// Opens a sealed packet in place and returns its plaintext, a slice of `packet`.
    pub(crate) fn open<'a>(&self, packet: &'a mut [u8]) -> Result<&'a [u8], NotSealed> {
        if packet.len() < OVERHEAD {
            return Err(NotSealed);
        }
        let (nonce, rest) = packet.split_at_mut(NONCE_LEN);
        let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        self.cipher
            .decrypt_in_place_detached(Nonce::from_slice(nonce), b"", body, Tag::from_slice(tag))
            .map_err(|_| NotSealed)?;
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_packets_open_with_the_same_secret_only() {
        let sealer = Sealer::new(b"right", GOSSIP_LABEL);
        let mut packet = Vec::new();
        sealer.seal(b"hello", &mut packet);
        assert_eq!(packet.len(), 5 + OVERHEAD);

        let mut copy = packet.clone();
        assert_eq!(sealer.open(&mut copy).unwrap(), b"hello");

        let mut copy = packet.clone();
        assert!(Sealer::new(b"wrong", GOSSIP_LABEL).open(&mut copy).is_err());
        let mut copy = packet.clone();
        assert!(Sealer::new(b"right", MULTICAST_LABEL).open(&mut copy).is_err(), "labels separate the keys");

        let mut tampered = packet.clone();
        tampered[OVERHEAD / 2] ^= 1;
        assert!(sealer.open(&mut tampered).is_err());
        assert!(sealer.open(&mut [0u8; OVERHEAD - 1]).is_err());
    }

    #[test]
    fn nonces_differ_between_packets() {
        let sealer = Sealer::new(b"secret", GOSSIP_LABEL);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        sealer.seal(b"same", &mut a);
        sealer.seal(b"same", &mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn cluster_id_is_a_stable_fingerprint_not_the_secret() {
        let id = cluster_id(b"hunter2");
        assert_eq!(id, cluster_id(b"hunter2"));
        assert_ne!(id, cluster_id(b"hunter3"));
        assert!(id.starts_with("shoal-") && id.len() == "shoal-".len() + 16, "{id}");
        assert!(!id.contains("hunter2"));
    }

    #[test]
    fn hkdf_matches_rfc_5869_test_case_1() {
        let ikm = [0x0b; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let okm: String = hkdf_sha256(&salt, &ikm, &info).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(okm, "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf");
        assert_ne!(derive_key(b"s", "a"), derive_key(b"s", "b"));
    }
}
