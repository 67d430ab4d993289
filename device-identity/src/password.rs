//! Device passwords, for devices that cannot do TLS client certificates.
//!
//! A password is 32 random bytes (256 bits), base64url: the platform makes
//! it, the device stores it, nobody types it. Only its Argon2id hash (a PHC
//! string, which records its own parameters) is stored.
//!
//! Why light Argon2 parameters: a slow hash protects *guessable* passwords
//! against offline guessing after a database leak. A 256-bit random secret
//! cannot be guessed at any hashing cost, so the cost would only buy a
//! slower broker reconnect storm (every connect verifies a hash: 20,000
//! devices reconnecting after a broker restart is 20,000 verifications).
//! The PHC string keeps the parameters with each hash, so they can be
//! raised later without invalidating stored hashes.

use anyhow::Context;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;

/// Random bytes in a generated password.
pub const PASSWORD_BYTES: usize = 32;
/// Argon2id memory cost in KiB (see the module docs for why it is light).
pub const MEMORY_KIB: u32 = 4 * 1024;
/// Argon2id passes.
pub const ITERATIONS: u32 = 1;
/// Longest password [`verify`] looks at; longer ones are refused without
/// hashing, so a client cannot make the registry hash megabytes.
pub const MAX_PASSWORD_BYTES: usize = 256;

/// A new random password: 32 bytes from the OS generator, base64url
/// without padding (43 characters, safe in MQTT, JSON and shells).
pub fn generate() -> String {
    let mut bytes = [0u8; PASSWORD_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hasher() -> anyhow::Result<Argon2<'static>> {
    let params = Params::new(MEMORY_KIB, ITERATIONS, 1, None)
        .map_err(|err| anyhow::anyhow!("argon2 parameters: {err}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// The Argon2id PHC string of `password`, with a fresh random salt.
pub fn hash(password: &str) -> anyhow::Result<String> {
    let hash = hasher()?
        .hash_password(password.as_bytes())
        .map_err(|err| anyhow::anyhow!("hashing a password: {err}"))
        .context("argon2")?;
    Ok(hash.to_string())
}

/// Whether `password` matches `phc` (parameters and salt come from the PHC
/// string). Comparison is constant-time inside argon2. An unreadable PHC
/// string is an error (a storage problem, not a wrong password).
pub fn verify(password: &str, phc: &str) -> anyhow::Result<bool> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Ok(false);
    }
    match hasher()?.verify_password(password.as_bytes(), phc) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
        Err(err) => Err(anyhow::anyhow!(
            "checking a password against its hash: {err}"
        )),
    }
}

/// Passwords already verified against their stored hash, so a device that
/// reconnects (a broker replica restarted, a reconnect storm of the whole
/// fleet) costs a SHA-256 instead of an Argon2id verification.
///
/// It memoises [`verify`] and nothing else: the key binds the stored PHC
/// string and the password, so a rotated or revoked password (another or no
/// stored hash) never matches an entry, and whether the device is enabled is
/// still read from the database at every connect. Only matches are kept; a
/// wrong password always pays the full Argon2id. Entries live at most
/// `lifetime` and at most `capacity` are kept (least recently used go first).
/// What is kept is SHA-256 of a 256-bit random secret with its hash: no
/// help to anyone who reads the process's memory.
#[derive(Clone)]
pub struct VerifiedPasswords {
    cache: Option<moka::sync::Cache<[u8; 32], ()>>,
}

/// How [`VerifiedPasswords::verify`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Matched, from the cache (no Argon2id).
    Remembered,
    /// Matched, by Argon2id (and now remembered).
    Verified,
    /// Did not match.
    Wrong,
}

impl Verification {
    pub fn matches(self) -> bool {
        !matches!(self, Verification::Wrong)
    }

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Verification::Remembered => "remembered",
            Verification::Verified => "verified",
            Verification::Wrong => "wrong",
        }
    }
}

impl VerifiedPasswords {
    /// Keeps up to `capacity` verified passwords for `lifetime` each;
    /// `capacity` 0 keeps none (every check runs Argon2id).
    pub fn new(capacity: u64, lifetime: std::time::Duration) -> Self {
        let cache = (capacity > 0 && !lifetime.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(lifetime)
                .build()
        });
        Self { cache }
    }

    /// [`verify`], remembered. Blocking (Argon2id on a miss): call it from
    /// a blocking task, or use [`Self::remembered`] first.
    pub fn verify(&self, password: &str, phc: &str) -> anyhow::Result<Verification> {
        if self.remembered(password, phc) {
            return Ok(Verification::Remembered);
        }
        if !verify(password, phc)? {
            return Ok(Verification::Wrong);
        }
        if let Some(cache) = &self.cache {
            cache.insert(Self::key(password, phc), ());
        }
        Ok(Verification::Verified)
    }

    /// Whether this password was verified against this very hash lately
    /// (cheap: no Argon2id).
    pub fn remembered(&self, password: &str, phc: &str) -> bool {
        if password.len() > MAX_PASSWORD_BYTES {
            return false;
        }
        self.cache
            .as_ref()
            .is_some_and(|cache| cache.contains_key(&Self::key(password, phc)))
    }

    fn key(password: &str, phc: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        // Length-prefixed, so no two (phc, password) pairs hash alike.
        hasher.update((phc.len() as u64).to_be_bytes());
        hasher.update(phc.as_bytes());
        hasher.update(password.as_bytes());
        hasher.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_passwords_are_remembered_for_their_hash_only() {
        let verified = VerifiedPasswords::new(100, std::time::Duration::from_secs(60));
        let password = generate();
        let phc = hash(&password).unwrap();
        assert!(!verified.remembered(&password, &phc));
        assert_eq!(
            verified.verify(&password, &phc).unwrap(),
            Verification::Verified
        );
        assert!(verified.remembered(&password, &phc));
        assert_eq!(
            verified.verify(&password, &phc).unwrap(),
            Verification::Remembered
        );
        // Rotated: the same password against another hash (new salt), and
        // another password against the old hash, are not remembered.
        let rotated = hash(&password).unwrap();
        assert!(!verified.remembered(&password, &rotated));
        assert_eq!(verified.verify("wrong", &phc).unwrap(), Verification::Wrong);
        assert_eq!(verified.verify("wrong", &phc).unwrap(), Verification::Wrong);
        assert!(!verified.remembered("wrong", &phc));
    }

    #[test]
    fn verified_passwords_expire_and_can_be_turned_off() {
        let password = generate();
        let phc = hash(&password).unwrap();
        let off = VerifiedPasswords::new(0, std::time::Duration::from_secs(60));
        assert_eq!(off.verify(&password, &phc).unwrap(), Verification::Verified);
        assert_eq!(off.verify(&password, &phc).unwrap(), Verification::Verified);
        let short = VerifiedPasswords::new(100, std::time::Duration::from_millis(50));
        assert_eq!(
            short.verify(&password, &phc).unwrap(),
            Verification::Verified
        );
        std::thread::sleep(std::time::Duration::from_millis(120));
        assert!(!short.remembered(&password, &phc));
    }

    #[test]
    fn generated_passwords_are_long_random_and_url_safe() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn hash_verifies_only_its_password() {
        let password = generate();
        let phc = hash(&password).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=4096,t=1,p=1$"), "{phc}");
        assert!(!phc.contains(&password));
        assert!(verify(&password, &phc).unwrap());
        assert!(!verify("wrong", &phc).unwrap());
        assert!(!verify("", &phc).unwrap());
        assert!(!verify(&"x".repeat(MAX_PASSWORD_BYTES + 1), &phc).unwrap());
        // Same password, new salt: another hash.
        assert_ne!(hash(&password).unwrap(), phc);
    }

    #[test]
    fn hashes_with_other_parameters_still_verify() {
        // A hash made with stronger parameters (e.g. after raising them)
        // verifies with its own parameters.
        let strong = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(19 * 1024, 2, 1, None).unwrap(),
        );
        let phc = strong.hash_password(b"secret").unwrap().to_string();
        assert!(verify("secret", &phc).unwrap());
        assert!(!verify("other", &phc).unwrap());
    }

    #[test]
    fn a_broken_hash_is_an_error_not_a_mismatch() {
        assert!(verify("x", "not a phc string").is_err());
    }
}
