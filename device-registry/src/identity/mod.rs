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

mod argon2;
mod config;
mod credentials;
pub mod http;
mod repo;

pub use argon2::{Argon2Slots, DEFAULT_ARGON2_WAIT_MS};
pub use config::{IdentityConfig, DEFAULT_VERIFIED_PASSWORDS, DEFAULT_VERIFIED_PASSWORD_SECS};
pub use credentials::{
    check_access, issue_credentials, revoke_credentials, CredentialKind, CredentialRequest,
    Identity, IssuedCredentials, DEFAULT_CERT_DAYS,
};
