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

#[cfg(test)]
mod tests {
    use super::*;

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
