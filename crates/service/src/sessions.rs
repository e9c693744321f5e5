//! People's login sessions: the secret a `shoal_session` cookie carries (256 random bits in
//! the token text form, `shoal_ses_`), what the store keeps of it (its SHA-256), and the CSRF
//! token that goes with it.
//!
//! The CSRF token is stateless: HMAC-SHA256 keyed with the session's text over
//! [`CSRF_CONTEXT`], in hex. Only whoever holds the session can compute it, and a web page of
//! another site can read neither the cookie (HttpOnly) nor the login's answer, so a request
//! that carries it comes from the session's own client. Nothing more is stored per session.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use shoal_wire::{format_token, TokenKind, TOKEN_BYTES};
use subtle::ConstantTimeEq;

/// What the CSRF token's MAC is over.
pub const CSRF_CONTEXT: &[u8] = b"shoal-csrf";

/// A new session's text (for the cookie) and its hash (for the store).
pub fn generate() -> (String, String) {
    let mut secret = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let text = format_token(TokenKind::Session, &secret);
    let hash = crate::tokens::hash(&text);
    (text, hash)
}

/// The CSRF token of a session, by its text.
pub fn csrf_token(session: &str) -> String {
    hex::encode(csrf_mac(session).finalize().into_bytes())
}

fn csrf_mac(session: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(session.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(CSRF_CONTEXT);
    mac
}

/// Whether `sent` is the session's CSRF token, compared in constant time.
pub fn csrf_matches(session: &str, sent: &str) -> bool {
    let want = csrf_token(session);
    // Lengths differ only for a malformed token, which says nothing of the right one.
    want.len() == sent.len() && bool::from(want.as_bytes().ct_eq(sent.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_tokens_and_their_csrf_tokens_check() {
        let (text, hash) = generate();
        assert_eq!(shoal_wire::parse_token(&text), Ok(TokenKind::Session));
        assert_eq!(hash, crate::tokens::hash(&text));
        let (other, _) = generate();
        assert_ne!(text, other);
        let csrf = csrf_token(&text);
        assert_eq!(csrf.len(), 64);
        assert!(csrf_matches(&text, &csrf));
        assert!(!csrf_matches(&other, &csrf));
        assert!(!csrf_matches(&text, &csrf[..63]));
        assert!(!csrf_matches(&text, ""));
        assert!(!csrf.contains(&text[10..20]));
    }
}
