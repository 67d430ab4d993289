//! Flags and environment variables of device identity.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use warmhouse_device_identity::password;

use super::argon2::{default_argon2_parallel, Argon2Slots, DEFAULT_ARGON2_WAIT_MS};
use super::credentials::{Identity, DEFAULT_CERT_DAYS};

/// Command-line / environment settings of device identity (flattened into
/// the registry's configuration).
#[derive(clap::Args, Debug, Clone)]
pub struct IdentityConfig {
    /// Platform CA certificate (PEM file) that signs device certificates.
    #[arg(long, env = "WARMHOUSE_REGISTRY_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Platform CA private key (PEM file). Without the CA, only password
    /// credentials can be issued.
    #[arg(long, env = "WARMHOUSE_REGISTRY_CA_KEY")]
    pub ca_key: Option<PathBuf>,
    /// Lifetime of issued device certificates, in days.
    #[arg(long, env = "WARMHOUSE_REGISTRY_DEVICE_CERT_DAYS", default_value_t = DEFAULT_CERT_DAYS)]
    pub device_cert_days: u64,
    /// Device passwords remembered after a successful Argon2id check, so a
    /// reconnecting device costs a SHA-256 (0: none, every connect runs
    /// Argon2id). Size it above the fleet.
    #[arg(long, env = "WARMHOUSE_REGISTRY_VERIFIED_PASSWORDS", default_value_t = DEFAULT_VERIFIED_PASSWORDS)]
    pub verified_passwords: u64,
    /// How long a verified password is remembered, in seconds.
    #[arg(long, env = "WARMHOUSE_REGISTRY_VERIFIED_PASSWORD_SECS", default_value_t = DEFAULT_VERIFIED_PASSWORD_SECS)]
    pub verified_password_secs: u64,
    /// Argon2id runs (password checks and hashes) at once; 0: one a core.
    #[arg(long, env = "WARMHOUSE_REGISTRY_ARGON2_PARALLEL", default_value_t = 0)]
    pub argon2_parallel: usize,
    /// How long a password check waits for an Argon2id slot before the
    /// registry answers 503 (busy), in milliseconds. Keep it below the
    /// broker's WARMHOUSE_BROKER_REGISTRY_TIMEOUT_MS.
    #[arg(long, env = "WARMHOUSE_REGISTRY_ARGON2_WAIT_MS", default_value_t = DEFAULT_ARGON2_WAIT_MS)]
    pub argon2_wait_ms: u64,
}

/// Passwords remembered: above the assignment's fleet of 100,000 devices
/// (about 100 bytes each).
pub const DEFAULT_VERIFIED_PASSWORDS: u64 = 250_000;
/// Twelve hours: a device that reconnects at least twice a day never pays
/// Argon2id again; rotation and revocation do not wait for it (the key is
/// the stored hash).
pub const DEFAULT_VERIFIED_PASSWORD_SECS: u64 = 12 * 3600;

impl Default for IdentityConfig {
    /// No CA (passwords only), certificates valid for a year.
    fn default() -> Self {
        Self {
            ca_cert: None,
            ca_key: None,
            device_cert_days: DEFAULT_CERT_DAYS,
            verified_passwords: DEFAULT_VERIFIED_PASSWORDS,
            verified_password_secs: DEFAULT_VERIFIED_PASSWORD_SECS,
            argon2_parallel: 0,
            argon2_wait_ms: DEFAULT_ARGON2_WAIT_MS,
        }
    }
}

impl IdentityConfig {
    /// The identity, counting its password checks in `metrics`.
    pub fn load(&self, metrics: &prometheus::Registry) -> anyhow::Result<Arc<Identity>> {
        let identity = Identity::load(
            self.ca_cert.as_deref(),
            self.ca_key.as_deref(),
            self.device_cert_days,
        )
        .context("loading the platform CA")?;
        let verified = password::VerifiedPasswords::new(
            self.verified_passwords,
            Duration::from_secs(self.verified_password_secs),
        );
        let parallel = match self.argon2_parallel {
            0 => default_argon2_parallel(),
            n => n,
        };
        let argon2 = Argon2Slots::new(parallel, Duration::from_millis(self.argon2_wait_ms));
        Ok(Arc::new(
            identity
                .with_argon2_slots(argon2)
                .remembering_passwords(verified, metrics)?,
        ))
    }
}
