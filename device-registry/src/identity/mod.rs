//! Device identity (docs/adr/0010-device-identity.md): the registry issues
//! each device its credentials and tells the broker, at every connect,
//! whether the device may connect.
//!
//! * `POST /api/v1/devices/{id}/credentials` with `{"kind":"certificate"}`
//!   or `{"kind":"password"}`: a client certificate signed by the platform
//!   CA (subject `O = CN = device id`) with its private key and the CA
//!   certificate, or a random password. The secret is in this answer only:
//!   the registry keeps the certificate's SHA-256 or the password's Argon2id
//!   hash. Issuing again replaces the device's current credential of that
//!   kind (rotation: the old one stops working).
//! * `POST /internal/v1/device-access` (administrators: the broker): the
//!   question the broker asks on every device connect
//!   ([`warmhouse_device_identity::access`]). Unknown, disabled or deleted
//!   devices, wrong passwords and certificates that are not a current
//!   credential are refused.
//!
//! [`issue_credentials`] and [`revoke_credentials`] take a connection (or a
//! transaction), so the onboarding saga can issue inside its own
//! transaction and revoke as its compensation.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub mod http;
mod repo;

use anyhow::Context;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use warmhouse_contracts::domain::{DomainEventKind, RotatedCredential};
use warmhouse_contracts::ids::{DeviceId, HomeId};
use warmhouse_device_identity::access::{AccessDecision, AccessRequest};
use warmhouse_device_identity::{password, PlatformCa};

use repo::Credentials;

use crate::db::OrProblem;
use crate::devices::{DeviceStatus, Devices};
use crate::kafka::Topics;
use crate::outbox;
use crate::problem::Problem;

/// Default lifetime of an issued device certificate, in days.
pub const DEFAULT_CERT_DAYS: u64 = 365;

/// What the registry needs to issue credentials.
pub struct Identity {
    ca: Option<PlatformCa>,
    cert_validity: Duration,
    /// Passwords that passed Argon2id lately (a reconnecting fleet skips it).
    verified: password::VerifiedPasswords,
    /// `warmhouse_registry_password_checks_total{outcome}`.
    password_checks: Option<prometheus::IntCounterVec>,
    /// Turns at Argon2id, for checks and for issuing.
    argon2: Argon2Slots,
}

/// Argon2id runs at most `parallel` at a time, and work waits at most `wait`
/// for its turn; beyond that the registry answers 503 (busy) at once.
///
/// A fleet connecting at once (a cold start, the registry restarted with
/// nothing remembered) asks for more checks than the CPU can do. Unbounded,
/// every check ran on its own blocking thread, all of them slowed down
/// together past the broker's wait (3 s, queue included), and the registry
/// went on hashing for connects the broker had already refused: no device
/// got in. Bounded, the registry does what the cores allow, at full speed,
/// and says "busy" for the rest while the broker still waits, so those
/// devices retry later instead of timing out.
#[derive(Clone)]
pub struct Argon2Slots {
    turns: Arc<tokio::sync::Semaphore>,
    wait: Duration,
}

impl Argon2Slots {
    pub fn new(parallel: usize, wait: Duration) -> Self {
        Self {
            turns: Arc::new(tokio::sync::Semaphore::new(parallel.max(1))),
            wait,
        }
    }

    /// Runs `work` (Argon2id) on a blocking thread once it has a turn; a
    /// 503 when none comes within the wait.
    async fn run<T: Send + 'static>(
        &self,
        what: &str,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, Problem> {
        let turn = tokio::time::timeout(self.wait, self.turns.clone().acquire_owned())
            .await
            .map_err(|_| {
                Problem::busy(format!(
                    "every Argon2id slot stayed taken for {} ms; retry",
                    self.wait.as_millis()
                ))
            })?
            .map_err(|err| internal("the Argon2id slots closed", err))?;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            work()
        })
        .await
        .map_err(|err| internal(&format!("{what}: task failed"), err))?
        .map_err(|err| internal(what, err))
    }
}

impl Default for Argon2Slots {
    /// One at a time per core, waiting up to [`DEFAULT_ARGON2_WAIT_MS`].
    fn default() -> Self {
        Self::new(
            default_argon2_parallel(),
            Duration::from_millis(DEFAULT_ARGON2_WAIT_MS),
        )
    }
}

/// How long a password check or hash waits for an Argon2id slot by default:
/// well within the broker's 3 s wait for an answer.
pub const DEFAULT_ARGON2_WAIT_MS: u64 = 1_500;

fn default_argon2_parallel() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

impl Identity {
    /// Loads the platform CA when both paths are given. Without a CA the
    /// registry still issues passwords; certificate requests answer 503.
    pub fn load(
        ca_cert: Option<&std::path::Path>,
        ca_key: Option<&std::path::Path>,
        cert_days: u64,
    ) -> anyhow::Result<Self> {
        let ca = match (ca_cert, ca_key) {
            (Some(cert), Some(key)) => Some(PlatformCa::load(cert, key)?),
            (None, None) => None,
            _ => anyhow::bail!(
                "set both WARMHOUSE_REGISTRY_CA_CERT and WARMHOUSE_REGISTRY_CA_KEY, or neither"
            ),
        };
        if cert_days == 0 {
            anyhow::bail!("device certificates must be valid for at least one day");
        }
        Ok(Self {
            ca,
            cert_validity: Duration::from_secs(cert_days.saturating_mul(24 * 3600)),
            verified: password::VerifiedPasswords::new(0, Duration::ZERO),
            password_checks: None,
            argon2: Argon2Slots::default(),
        })
    }

    /// An identity with this CA (tests, embedding).
    pub fn with_ca(ca: PlatformCa, cert_validity: Duration) -> Self {
        Self {
            ca: Some(ca),
            cert_validity,
            verified: password::VerifiedPasswords::new(0, Duration::ZERO),
            password_checks: None,
            argon2: Argon2Slots::default(),
        }
    }

    /// Runs Argon2id in these slots (see [`Argon2Slots`]).
    pub fn with_argon2_slots(mut self, argon2: Argon2Slots) -> Self {
        self.argon2 = argon2;
        self
    }

    /// Remembers verified passwords (see [`password::VerifiedPasswords`])
    /// and counts password checks in `metrics`.
    pub fn remembering_passwords(
        mut self,
        verified: password::VerifiedPasswords,
        metrics: &prometheus::Registry,
    ) -> anyhow::Result<Self> {
        let checks = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "warmhouse_registry_password_checks_total",
                "Device password checks at connect, by outcome: remembered (no Argon2id), verified (Argon2id), wrong, busy (no Argon2id slot in time: 503), error",
            ),
            &["outcome"],
        )?;
        metrics
            .register(Box::new(checks.clone()))
            .context("registering warmhouse_registry_password_checks_total")?;
        self.verified = verified;
        self.password_checks = Some(checks);
        Ok(self)
    }

    /// Whether `password` matches the stored `phc`, remembered.
    async fn check_password(&self, password: &str, phc: String) -> Result<bool, Problem> {
        let outcome = if self.verified.remembered(password, &phc) {
            password::Verification::Remembered
        } else {
            let (verified, password) = (self.verified.clone(), password.to_owned());
            match self
                .argon2
                .run("checking a password", move || {
                    verified.verify(&password, &phc)
                })
                .await
            {
                Ok(outcome) => outcome,
                Err(problem) => {
                    self.count_password_check(
                        if problem.status_code() == StatusCode::SERVICE_UNAVAILABLE {
                            "busy"
                        } else {
                            "error"
                        },
                    );
                    return Err(problem);
                }
            }
        };
        self.count_password_check(outcome.label());
        Ok(outcome.matches())
    }

    fn count_password_check(&self, outcome: &str) {
        if let Some(checks) = &self.password_checks {
            checks.with_label_values(&[outcome]).inc();
        }
    }

    /// Hashes a new password (Argon2id) in turn with the checks.
    async fn hash_password(&self, password: String) -> Result<String, Problem> {
        self.argon2
            .run("hashing a password", move || password::hash(&password))
            .await
    }

    /// The platform CA certificate (PEM), when configured.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca.as_ref().map(PlatformCa::cert_pem)
    }
}

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

/// Which credential to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    /// A TLS client certificate for the broker's mTLS listener.
    Certificate,
    /// A username (the device id) and password for the plain listeners, for
    /// devices that cannot do TLS.
    Password,
}

impl CredentialKind {
    /// The same kind as the domain event names it.
    fn rotated(self) -> RotatedCredential {
        match self {
            CredentialKind::Certificate => RotatedCredential::Certificate,
            CredentialKind::Password => RotatedCredential::Password,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Certificate => "certificate",
            CredentialKind::Password => "password",
        }
    }
}

/// Body of `POST /api/v1/devices/{id}/credentials`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialRequest {
    pub kind: CredentialKind,
}

/// Freshly issued credentials. The secret (private key or password) is in
/// this answer only.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum IssuedCredentials {
    Certificate {
        device_id: String,
        /// Client certificate (PEM), subject `O = CN = device id`.
        certificate_pem: String,
        /// Its private key (PEM, PKCS#8, ECDSA P-256).
        private_key_pem: String,
        /// The platform CA (PEM): the broker's server certificate chains to it.
        ca_pem: String,
        /// SHA-256 of the certificate (DER), lowercase hex.
        certificate_sha256: String,
        not_after: DateTime<Utc>,
    },
    Password {
        device_id: String,
        /// MQTT username: the device id.
        username: String,
        /// MQTT password (43 characters, base64url of 32 random bytes).
        password: String,
    },
}

/// Secrets stay out of logs and panics.
impl std::fmt::Debug for IssuedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IssuedCredentials::Certificate {
                device_id,
                certificate_sha256,
                ..
            } => f
                .debug_struct("Certificate")
                .field("device_id", device_id)
                .field("certificate_sha256", certificate_sha256)
                .finish_non_exhaustive(),
            IssuedCredentials::Password { device_id, .. } => f
                .debug_struct("Password")
                .field("device_id", device_id)
                .finish_non_exhaustive(),
        }
    }
}

/// Issues `kind` credentials to `device_id` on `conn` (a transaction of the
/// caller's, or a plain connection), replacing its current credential of
/// that kind. The device row is locked until the caller's transaction ends,
/// so two concurrent issuances cannot both stay current. Replacing a current
/// credential announces `device.credentials_rotated` in the same
/// transaction, and the brokers drop the connections made with it.
/// 404 for an unknown device, 409 for a disabled one, 503 for a certificate
/// without a CA.
pub async fn issue_credentials(
    conn: &mut PgConnection,
    identity: &Identity,
    topics: &Topics,
    device_id: &str,
    kind: CredentialKind,
) -> Result<IssuedCredentials, Problem> {
    let device = DeviceId::new(device_id)
        .map_err(|err| Problem::invalid_parameter("id", err.to_string()))?;
    // Prepare the secret before touching the database: hashing and key
    // generation are CPU work that should not hold a row lock.
    let prepared = match kind {
        CredentialKind::Password => {
            let secret = password::generate();
            let hash = identity.hash_password(secret.clone()).await?;
            Prepared::Password { secret, hash }
        }
        CredentialKind::Certificate => {
            let ca = identity.ca.as_ref().ok_or_else(|| {
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no-certificate-authority",
                    "No certificate authority",
                    "this registry has no platform CA (WARMHOUSE_REGISTRY_CA_CERT and \
                     WARMHOUSE_REGISTRY_CA_KEY); issue a password instead",
                )
            })?;
            let issued = ca
                .issue_device_certificate(&device, identity.cert_validity)
                .map_err(|err| internal("issuing a device certificate", err))?;
            let not_after = DateTime::<Utc>::from_timestamp(issued.not_after.unix_timestamp(), 0)
                .ok_or_else(|| internal("certificate end date", "out of range"))?;
            Prepared::Certificate {
                ca_pem: ca.cert_pem().to_string(),
                issued,
                not_after,
            }
        }
    };

    let (status, home_id) = Devices::lock_status(&mut *conn, device_id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no device {device_id:?}")))?;
    match DeviceStatus::parse(&status) {
        None => {
            return Err(internal(
                "device status",
                format!("unknown status {status:?}"),
            ))
        }
        Some(DeviceStatus::Disabled) => {
            return Err(Problem::conflict(format!(
                "device {device_id:?} is disabled; enable it before issuing credentials"
            )))
        }
        Some(_) => {}
    }
    let replaced = Credentials::revoke_kind(&mut *conn, device_id, kind.as_str())
        .await
        .or_problem("credential")?;
    if replaced > 0 {
        let home_id = HomeId::new(&home_id).map_err(|err| internal("stored home id", err))?;
        let event = DomainEventKind::CredentialsRotated {
            device_id: device.clone(),
            home_id,
            kind: kind.rotated(),
        };
        outbox::enqueue_event(&mut *conn, topics, event)
            .await
            .or_problem("credential")?;
    }
    let (sha256, hash, not_after) = match &prepared {
        Prepared::Password { hash, .. } => (None, Some(hash.as_str()), None),
        Prepared::Certificate {
            issued, not_after, ..
        } => (Some(issued.sha256.as_str()), None, Some(*not_after)),
    };
    Credentials::insert(
        &mut *conn,
        device_id,
        kind.as_str(),
        sha256,
        hash,
        not_after,
    )
    .await
    .or_problem("credential")?;
    tracing::info!(device_id, kind = kind.as_str(), "device credentials issued");

    Ok(match prepared {
        Prepared::Password { secret, .. } => IssuedCredentials::Password {
            device_id: device_id.to_string(),
            username: device_id.to_string(),
            password: secret,
        },
        Prepared::Certificate {
            ca_pem,
            issued,
            not_after,
        } => IssuedCredentials::Certificate {
            device_id: device_id.to_string(),
            certificate_pem: issued.cert_pem,
            private_key_pem: issued.key_pem,
            ca_pem,
            certificate_sha256: issued.sha256,
            not_after,
        },
    })
}

enum Prepared {
    Password {
        secret: String,
        hash: String,
    },
    Certificate {
        ca_pem: String,
        issued: warmhouse_device_identity::IssuedCertificate,
        not_after: DateTime<Utc>,
    },
}

/// Revokes every current credential of `device_id` (the onboarding saga's
/// compensation); returns how many. The broker refuses the device's next
/// connect; a live connection stays until then unless the device is also
/// disabled or deleted (whose events make the broker drop it).
pub async fn revoke_credentials(conn: &mut PgConnection, device_id: &str) -> Result<u64, Problem> {
    let revoked = Credentials::revoke_all(conn, device_id)
        .await
        .or_problem("credential")?;
    if revoked > 0 {
        tracing::info!(device_id, revoked, "device credentials revoked");
    }
    Ok(revoked)
}

/// Whether the device in `request` may connect now.
pub async fn check_access(
    pool: &PgPool,
    identity: &Identity,
    request: &AccessRequest,
) -> Result<AccessDecision, Problem> {
    let device_id = request.device_id();
    if DeviceId::new(device_id).is_err() {
        return Ok(AccessDecision::refuse("not a valid device id"));
    }
    let status = Devices::status(pool, device_id).await?;
    match status.as_deref().and_then(DeviceStatus::parse) {
        None => return Ok(AccessDecision::refuse("unknown device")),
        Some(DeviceStatus::Disabled) => return Ok(AccessDecision::refuse("device is disabled")),
        Some(_) => {}
    }
    match request {
        AccessRequest::Password { password, .. } => {
            let hash = Credentials::current_password_hash(pool, device_id)
                .await
                .or_problem("credential")?;
            let Some(hash) = hash else {
                return Ok(AccessDecision::refuse("no password issued"));
            };
            Ok(if identity.check_password(password, hash).await? {
                AccessDecision::allow()
            } else {
                AccessDecision::refuse("wrong password")
            })
        }
        AccessRequest::Certificate {
            certificate_sha256, ..
        } => {
            let current = Credentials::certificate_is_current(pool, device_id, certificate_sha256)
                .await
                .or_problem("credential")?;
            Ok(if current {
                AccessDecision::allow()
            } else {
                AccessDecision::refuse("certificate is not a current credential of the device")
            })
        }
    }
}

pub(crate) fn internal(what: &str, err: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %err, "{what}");
    Problem::internal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_credentials_are_tagged_and_keep_secrets_out_of_debug() {
        let issued = IssuedCredentials::Password {
            device_id: "d".into(),
            username: "d".into(),
            password: "secret-password".into(),
        };
        let json = serde_json::to_value(&issued).unwrap();
        assert_eq!(json["kind"], "password");
        assert_eq!(json["password"], "secret-password");
        assert!(!format!("{issued:?}").contains("secret-password"));
        let request: CredentialRequest = serde_json::from_str(r#"{"kind":"certificate"}"#).unwrap();
        assert_eq!(request.kind, CredentialKind::Certificate);
        assert!(serde_json::from_str::<CredentialRequest>(r#"{"kind":"token"}"#).is_err());
    }

    #[test]
    fn the_ca_is_all_or_nothing() {
        let path = std::path::Path::new("/nonexistent");
        assert!(Identity::load(Some(path), None, 1).is_err());
        let none = Identity::load(None, None, 1).unwrap();
        assert!(none.ca_pem().is_none());
        assert!(Identity::load(None, None, 0).is_err());
    }
}
