//! The broker asks the registry, on every device connect, whether the
//! device may connect now: `POST /internal/v1/device-access` with an
//! [`AccessRequest`], answered `200` with an [`AccessDecision`]. The broker
//! authenticates with a bearer token (an administrator's). Any other answer
//! is a refusal: the broker fails closed.
//!
//! ```json
//! {"method":"password","device_id":"home-0001-dev-01","password":"..."}
//! {"method":"certificate","device_id":"home-0001-dev-02","certificate_sha256":"3f1c..."}
//! {"allowed":false,"reason":"device home-0001-dev-01 is disabled"}
//! ```
//!
//! For a certificate connection the broker has already checked the chain
//! against the platform CA; the registry checks that this very certificate
//! (by SHA-256) is a current credential of an enabled device, so a rotated
//! or revoked certificate stops working although it is still valid.

use serde::{Deserialize, Serialize};

/// Path of the access check on the registry.
pub const DEVICE_ACCESS_PATH: &str = "/internal/v1/device-access";

/// One connect attempt, as the broker saw it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum AccessRequest {
    /// Username (= device id) and password from a plain listener.
    Password { device_id: String, password: String },
    /// A client certificate the broker verified against the platform CA;
    /// `device_id` is its subject O.
    Certificate {
        device_id: String,
        /// SHA-256 of the certificate (DER), lowercase hex.
        certificate_sha256: String,
    },
}

impl AccessRequest {
    pub fn device_id(&self) -> &str {
        match self {
            AccessRequest::Password { device_id, .. }
            | AccessRequest::Certificate { device_id, .. } => device_id,
        }
    }

    pub fn method(&self) -> &'static str {
        match self {
            AccessRequest::Password { .. } => "password",
            AccessRequest::Certificate { .. } => "certificate",
        }
    }
}

/// Passwords stay out of logs and panics.
impl std::fmt::Debug for AccessRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessRequest::Password { device_id, .. } => f
                .debug_struct("Password")
                .field("device_id", device_id)
                .finish_non_exhaustive(),
            AccessRequest::Certificate {
                device_id,
                certificate_sha256,
            } => f
                .debug_struct("Certificate")
                .field("device_id", device_id)
                .field("certificate_sha256", certificate_sha256)
                .finish(),
        }
    }
}

/// The registry's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessDecision {
    pub allowed: bool,
    /// Why not, for the broker's log; never sent to the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl AccessDecision {
    pub fn allow() -> Self {
        Self {
            allowed: true,
            reason: None,
        }
    }

    pub fn refuse(reason: impl Into<String>) -> Self {
        Self {
            allowed: false,
            reason: Some(reason.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_by_method() {
        let request = AccessRequest::Password {
            device_id: "d".into(),
            password: "secret".into(),
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"method": "password", "device_id": "d", "password": "secret"})
        );
        assert!(!format!("{request:?}").contains("secret"));
        let cert: AccessRequest = serde_json::from_value(serde_json::json!({
            "method": "certificate", "device_id": "d", "certificate_sha256": "ab"
        }))
        .unwrap();
        assert_eq!(cert.device_id(), "d");
        assert_eq!(cert.method(), "certificate");
        assert!(serde_json::from_value::<AccessRequest>(
            serde_json::json!({"method": "password", "device_id": "d"})
        )
        .is_err());
    }

    #[test]
    fn decisions_omit_an_empty_reason() {
        assert_eq!(
            serde_json::to_string(&AccessDecision::allow()).unwrap(),
            r#"{"allowed":true}"#
        );
        let refused: AccessDecision =
            serde_json::from_str(r#"{"allowed":false,"reason":"disabled","extra":1}"#).unwrap();
        assert_eq!(refused, AccessDecision::refuse("disabled"));
    }
}
