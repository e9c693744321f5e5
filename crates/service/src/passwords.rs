//! People's passwords: hashed with Argon2id at OWASP's parameters (19 MiB, 2 passes, one lane)
//! into a PHC string for the store, and checked against one. Each hash takes about 19 MiB and
//! tens of milliseconds of a core, so it runs on tokio's blocking threads, never on the async
//! ones, and at most [`AT_ONCE`] at a time per node: a flood of logins queues here rather than
//! taking the node's memory.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Memory of one hash, in KiB (OWASP's Argon2id recommendation: m=19456, t=2, p=1).
pub const MEMORY_KIB: u32 = 19_456;
/// Passes over the memory.
pub const PASSES: u32 = 2;
/// Lanes.
pub const LANES: u32 = 1;

/// Hashes or checks at once on one node.
pub const AT_ONCE: usize = 2;

/// Shortest password taken, in characters.
pub const MIN_CHARS: usize = 12;
/// Longest password taken, in bytes (longer ones are refused before any hashing).
pub const MAX_BYTES: usize = 1024;

/// The hash an unknown user's password is checked against, so that an unknown name costs the
/// time a wrong password does and nobody learns by timing which names exist. Made with the
/// parameters above (a test holds them equal); no password matches it but a random one.
const DUMMY: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2hvYWwtdW5rbm93bi11c2Vy$jGa2hfK6ZiJ4E4P1MtRBLBPvyHNxm4fcIo2UPhwQ38A";

fn argon2() -> Argon2<'static> {
    let params = Params::new(MEMORY_KIB, PASSES, LANES, None).expect("OWASP's Argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Why a new password is refused; the message says what to fix.
pub fn check_new(password: &str) -> Result<(), String> {
    if password.len() > MAX_BYTES {
        return Err(format!("the password is over {MAX_BYTES} bytes; use a shorter one"));
    }
    if password.chars().count() < MIN_CHARS {
        return Err(format!("the password is shorter than {MIN_CHARS} characters; use a longer one"));
    }
    Ok(())
}

/// Hashes and checks passwords, [`AT_ONCE`] at most, off the async threads.
#[derive(Clone)]
pub struct Passwords {
    turns: Arc<Semaphore>,
}

impl Default for Passwords {
    fn default() -> Self {
        Passwords::new()
    }
}

impl Passwords {
    pub fn new() -> Passwords {
        Passwords { turns: Arc::new(Semaphore::new(AT_ONCE)) }
    }

    /// The PHC string of `password` with a new random salt.
    pub async fn hash(&self, password: String) -> Result<String, crate::DomainError> {
        self.blocking(move || {
            let mut salt = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut salt);
            let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
            argon2().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
        })
        .await?
        .map_err(|e| crate::DomainError::Internal(format!("cannot hash a password: {e}")))
    }

    /// Whether `password` is the one `phc` was made from. `None` (an unknown user) checks it
    /// against a fixed hash instead, which takes as long and never matches. An unreadable
    /// stored hash never matches either.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, crate::DomainError> {
        if password.len() > MAX_BYTES {
            return Ok(false);
        }
        self.blocking(move || {
            let known = phc.is_some();
            let stored = phc.unwrap_or_else(|| DUMMY.to_owned());
            let Ok(parsed) = PasswordHash::new(&stored) else { return false };
            // The stored parameters decide the work (a hash made with older ones still checks).
            let ok = argon2().verify_password(password.as_bytes(), &parsed).is_ok();
            known && ok
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, crate::DomainError> {
        // The permit goes with the work, so it is held until the hash ends even when the
        // request that asked is dropped: what bounds the memory is the hashes running.
        let turn = self
            .turns
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| crate::DomainError::Internal("the password hasher was closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let out = work();
            drop(turn);
            out
        })
        .await
        .map_err(|e| crate::DomainError::Internal(format!("a password hash panicked: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashes_verify_and_carry_owasp_parameters() {
        let p = Passwords::new();
        let phc = p.hash("correct horse battery".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(!phc.contains("correct horse"), "{phc}");
        assert!(p.verify("correct horse battery".into(), Some(phc.clone())).await.unwrap());
        assert!(!p.verify("correct horse batterx".into(), Some(phc.clone())).await.unwrap());
        // Salted: the same password hashes differently.
        assert_ne!(p.hash("correct horse battery".into()).await.unwrap(), phc);
        // An unknown user: checked against the dummy, never a match; an unreadable hash neither.
        assert!(!p.verify("correct horse battery".into(), None).await.unwrap());
        assert!(!p.verify("x".into(), Some("not a hash".into())).await.unwrap());
        assert!(!p.verify("x".repeat(MAX_BYTES + 1), Some(phc)).await.unwrap());
        // The dummy is a real hash at the same parameters, so it costs what a user's does.
        let dummy = PasswordHash::new(DUMMY).unwrap();
        assert_eq!(dummy.algorithm.as_str(), "argon2id");
        let params = Params::try_from(&dummy).unwrap();
        assert_eq!((params.m_cost(), params.t_cost(), params.p_cost()), (MEMORY_KIB, PASSES, LANES));
        assert!(dummy.hash.is_some_and(|h| h.len() == 32));
    }

    #[test]
    fn new_passwords_are_long_enough_and_bounded() {
        assert!(check_new("eleven char").unwrap_err().contains("shorter than 12"));
        assert!(check_new("twelve chars").is_ok());
        // Characters, not bytes, for the minimum.
        assert!(check_new("ééééééééééé").is_err());
        assert!(check_new(&"é".repeat(12)).is_ok());
        assert!(check_new(&"x".repeat(MAX_BYTES + 1)).unwrap_err().contains("over 1024 bytes"));
    }
}
