//! What a client sends to onboard a device, and what it gets back.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::devices::{Device, NewDevice};
use crate::identity::{CredentialKind, IssuedCredentials};

/// Body of `POST /api/v1/onboarding`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OnboardingRequest {
    pub device: NewDevice,
    /// Which credentials the device gets.
    pub credentials: CredentialKind,
}

/// Answer of a completed onboarding. The credentials' secret is only here.
#[derive(Debug, Serialize, ToSchema)]
pub struct Onboarded {
    pub saga: SagaView,
    pub device: Device,
    pub credentials: IssuedCredentials,
}

/// A saga and its log.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SagaView {
    pub saga_id: String,
    pub device_id: String,
    pub home_id: String,
    /// running, completed, compensating, compensated or compensation_failed.
    pub state: String,
    pub step: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub log: Vec<SagaLogEntry>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SagaLogEntry {
    pub step: String,
    /// started, done, failed, compensated or compensation_failed.
    pub outcome: String,
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
}
