//! Issuing, revoking and checking device credentials.

use std::time::Duration;

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

use super::argon2::Argon2Slots;
use super::repo::Credentials;
use crate::db::OrProblem;
use crate::devices::{DeviceStatus, Devices};
use crate::kafka::Topics;
use crate::outbox;
use crate::problem::{internal, Problem};

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
    let prepared = Prepared::new(identity, &device, kind).await?;
    let home_id = lock_enabled_device(&mut *conn, device_id).await?;
    retire_current(&mut *conn, topics, &device, &home_id, kind).await?;
    prepared.store(&mut *conn, device_id, kind).await?;
    tracing::info!(device_id, kind = kind.as_str(), "device credentials issued");
    Ok(prepared.into_issued(device_id))
}

/// Locks the device's row until the caller's transaction ends and returns
/// its home id; 404 for an unknown device, 409 for a disabled one.
async fn lock_enabled_device(conn: &mut PgConnection, device_id: &str) -> Result<String, Problem> {
    let (status, home_id) = Devices::lock_status(&mut *conn, device_id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no device {device_id:?}")))?;
    match DeviceStatus::parse(&status) {
        None => Err(internal(
            "device status",
            format!("unknown status {status:?}"),
        )),
        Some(DeviceStatus::Disabled) => Err(Problem::conflict(format!(
            "device {device_id:?} is disabled; enable it before issuing credentials"
        ))),
        Some(_) => Ok(home_id),
    }
}

/// Revokes the device's current credential of `kind`, if any, and then
/// announces `device.credentials_rotated` so the brokers drop the
/// connections made with it.
async fn retire_current(
    conn: &mut PgConnection,
    topics: &Topics,
    device: &DeviceId,
    home_id: &str,
    kind: CredentialKind,
) -> Result<(), Problem> {
    let replaced = Credentials::revoke_kind(&mut *conn, device.as_str(), kind.as_str())
        .await
        .or_problem("credential")?;
    if replaced > 0 {
        let home_id = HomeId::new(home_id).map_err(|err| internal("stored home id", err))?;
        let event = DomainEventKind::CredentialsRotated {
            device_id: device.clone(),
            home_id,
            kind: kind.rotated(),
        };
        outbox::enqueue_event(&mut *conn, topics, event)
            .await
            .or_problem("credential")?;
    }
    Ok(())
}

/// A credential made ready outside the database: the secret with its
/// hash, or the certificate with its key.
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

impl Prepared {
    /// A new password (hashed) or certificate (signed by the platform CA;
    /// 503 without one) for `device`.
    async fn new(
        identity: &Identity,
        device: &DeviceId,
        kind: CredentialKind,
    ) -> Result<Self, Problem> {
        Ok(match kind {
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
                    .issue_device_certificate(device, identity.cert_validity)
                    .map_err(|err| internal("issuing a device certificate", err))?;
                let not_after =
                    DateTime::<Utc>::from_timestamp(issued.not_after.unix_timestamp(), 0)
                        .ok_or_else(|| internal("certificate end date", "out of range"))?;
                Prepared::Certificate {
                    ca_pem: ca.cert_pem().to_string(),
                    issued,
                    not_after,
                }
            }
        })
    }

    /// Stores it as the device's current credential of `kind`: only the
    /// password's hash, only the certificate's fingerprint and end date.
    async fn store(
        &self,
        conn: &mut PgConnection,
        device_id: &str,
        kind: CredentialKind,
    ) -> Result<(), Problem> {
        let (sha256, hash, not_after) = match self {
            Prepared::Password { hash, .. } => (None, Some(hash.as_str()), None),
            Prepared::Certificate {
                issued, not_after, ..
            } => (Some(issued.sha256.as_str()), None, Some(*not_after)),
        };
        Credentials::insert(conn, device_id, kind.as_str(), sha256, hash, not_after)
            .await
            .or_problem("credential")?;
        Ok(())
    }

    /// What the caller hands to the device, secrets included.
    fn into_issued(self, device_id: &str) -> IssuedCredentials {
        match self {
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
        }
    }
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
