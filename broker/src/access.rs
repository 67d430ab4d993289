//! Device access decisions at connect: the auth handlers rumqttd calls on
//! the device listeners.
//!
//! * Password listeners: rumqttd calls `(client id, username, password)`;
//!   the username must be a device id, the registry checks the password.
//! * The mTLS listener (Warmhouse patch 3 of rumqttd): rumqttd has verified
//!   the certificate chain against the platform CA and calls
//!   `(client id, tenant id = subject O, certificate sha256)`; the registry
//!   checks that this certificate is a current credential of an enabled
//!   device.
//!
//! Every decision fails closed: no answer from the registry in time, an
//! error status or an unreadable body refuses the connect, unless the
//! registry allowed these very credentials shortly before
//! ([`LastGoodAnswers`], forgotten on any revocation). The self-probe's
//! own identity ([`PROBE_DEVICE_ID`]) is decided locally, so a registry
//! outage does not take the broker out of its load balancer.
//!
//! rumqttd runs each listener on its own single-threaded Tokio runtime and
//! awaits the handler there; the registry call is spawned onto the broker's
//! main runtime instead, where the HTTP client's connection pool lives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use prometheus::IntCounterVec;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use warmhouse_contracts::ids::DeviceId;
use warmhouse_device_identity::access::{AccessDecision, AccessRequest, DEVICE_ACCESS_PATH};

use crate::config::Secret;
use crate::last_good::LastGoodAnswers;
use crate::probe::{Listener, PROBE_DEVICE_ID};
use crate::revocation::Revocations;

/// Longest password passed on to the registry (its own limit is the same).
const MAX_PASSWORD_BYTES: usize = 256;

/// Outcome label of `warmhouse_broker_device_auth_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Allowed,
    /// The registry said no (unknown device, wrong password, disabled ...).
    Refused,
    /// Refused by the broker's own revocation list.
    Revoked,
    /// Not even asked: no device id, empty or oversized password.
    Invalid,
    /// No usable answer from the registry (down, slow, error status).
    Error,
    /// No usable answer, but the registry allowed these credentials within
    /// the grace period.
    AllowedRegistryDown,
    /// The self-probe's own login.
    Probe,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Refused => "refused",
            Outcome::Revoked => "revoked",
            Outcome::Invalid => "invalid",
            Outcome::Error => "error",
            Outcome::AllowedRegistryDown => "allowed_registry_down",
            Outcome::Probe => "probe",
        }
    }

    fn allowed(self) -> bool {
        matches!(
            self,
            Outcome::Allowed | Outcome::AllowedRegistryDown | Outcome::Probe
        )
    }

    /// What the device is told: a registry that could not answer is "server
    /// unavailable" (retry later; patch 30), not "not authorized".
    fn to_rumqttd(self) -> rumqttd::AuthOutcome {
        match self {
            Outcome::Error => rumqttd::AuthOutcome::Unavailable,
            outcome => outcome.allowed().into(),
        }
    }
}

/// Decides whether a device may connect. Cheap to clone.
#[derive(Clone)]
pub struct DeviceAccess {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    url: String,
    token: Secret,
    timeout: Duration,
    limit: Semaphore,
    probe_password: Secret,
    revocations: Revocations,
    last_good: LastGoodAnswers,
    runtime: Handle,
    decisions: IntCounterVec,
}

impl DeviceAccess {
    /// `registry_url` is the registry's base URL; `probe_password` the
    /// per-process secret of the self-probe's password logins. Must be
    /// called inside the broker's Tokio runtime.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        registry_url: &str,
        token: Secret,
        timeout: Duration,
        concurrency: usize,
        probe_password: Secret,
        revocations: Revocations,
        last_good: LastGoodAnswers,
        decisions: IntCounterVec,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .context("building the registry HTTP client")?;
        let url = format!("{}{DEVICE_ACCESS_PATH}", registry_url.trim_end_matches('/'));
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                url,
                token,
                timeout,
                limit: Semaphore::new(concurrency.max(1)),
                probe_password,
                revocations,
                last_good,
                runtime: Handle::current(),
                decisions,
            }),
        })
    }

    /// rumqttd's handler for a password listener.
    pub async fn check_password(
        self,
        listener: Listener,
        client_id: String,
        username: String,
        password: String,
    ) -> rumqttd::AuthOutcome {
        let outcome = if username == PROBE_DEVICE_ID {
            if self.inner.probe_password.matches(&password) {
                Outcome::Probe
            } else {
                Outcome::Invalid
            }
        } else if DeviceId::new(username.as_str()).is_err()
            || password.is_empty()
            || password.len() > MAX_PASSWORD_BYTES
        {
            Outcome::Invalid
        } else {
            self.clone()
                .ask(AccessRequest::Password {
                    device_id: username.clone(),
                    password,
                })
                .await
        };
        self.record(listener, &client_id, &username, outcome)
    }

    /// rumqttd's handler for the mTLS listener (patch 3): the tenant id is
    /// the certificate's subject O, already checked against the platform
    /// CA by the TLS handshake.
    pub async fn check_certificate(
        self,
        listener: Listener,
        client_id: String,
        tenant_id: String,
        certificate_sha256: String,
    ) -> rumqttd::AuthOutcome {
        let outcome = if tenant_id == PROBE_DEVICE_ID {
            Outcome::Probe
        } else if DeviceId::new(tenant_id.as_str()).is_err() {
            Outcome::Invalid
        } else {
            self.clone()
                .ask(AccessRequest::Certificate {
                    device_id: tenant_id.clone(),
                    certificate_sha256,
                })
                .await
        };
        self.record(listener, &client_id, &tenant_id, outcome)
    }

    fn record(
        &self,
        listener: Listener,
        client_id: &str,
        device: &str,
        outcome: Outcome,
    ) -> rumqttd::AuthOutcome {
        self.inner
            .decisions
            .with_label_values(&[listener.name(), outcome.label()])
            .inc();
        if outcome.allowed() {
            tracing::debug!(
                listener = listener.name(),
                client_id,
                device,
                "device connect allowed"
            );
        } else {
            tracing::info!(
                listener = listener.name(),
                client_id,
                device,
                outcome = outcome.label(),
                "device connect refused"
            );
        }
        outcome.to_rumqttd()
    }

    /// Asks the registry on the broker's main runtime (see the module docs).
    async fn ask(self, request: AccessRequest) -> Outcome {
        let device = request.device_id().to_string();
        let revocations = self.inner.revocations.clone();
        if revocations.is_blocked(&device) {
            return Outcome::Revoked;
        }
        let started = Instant::now();
        let inner = self.inner.clone();
        let question = request.clone();
        let answer = self
            .inner
            .runtime
            .spawn(async move {
                tokio::time::timeout(inner.timeout, inner.ask_registry(&question))
                    .await
                    .unwrap_or_else(|_| {
                        Err(anyhow::anyhow!(
                            "no answer within {:?} (queue included)",
                            inner.timeout
                        ))
                    })
            })
            .await;
        let last_good = &self.inner.last_good;
        let failed = |error: String| {
            if last_good.recall(&request) {
                tracing::warn!(
                    device,
                    error,
                    "registry access check failed; allowing credentials it allowed shortly before"
                );
                Outcome::AllowedRegistryDown
            } else {
                tracing::warn!(device, error, "registry access check failed; refusing");
                Outcome::Error
            }
        };
        let outcome = match answer {
            Ok(Ok(decision)) if decision.allowed => {
                last_good.remember(&request);
                Outcome::Allowed
            }
            Ok(Ok(decision)) => {
                last_good.forget(&device);
                tracing::info!(
                    device,
                    reason = decision.reason.as_deref().unwrap_or("none given"),
                    "registry refused the device"
                );
                Outcome::Refused
            }
            Ok(Err(err)) => failed(format!("{err:#}")),
            Err(err) => failed(format!("the check did not run: {err}")),
        };
        // A revocation that arrived while the registry was answering wins:
        // the answer may predate it.
        if outcome.allowed() && revocations.revoked_since(&device, started) {
            // And the answer just remembered must not outlive it.
            last_good.forget(&device);
            return Outcome::Revoked;
        }
        outcome
    }
}

impl Inner {
    async fn ask_registry(&self, request: &AccessRequest) -> anyhow::Result<AccessDecision> {
        let _permit = self
            .limit
            .acquire()
            .await
            .context("registry request limiter closed")?;
        let response = self
            .http
            .post(&self.url)
            .bearer_auth(self.token.expose())
            .json(request)
            .send()
            .await
            .with_context(|| format!("POST {}", self.url))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(300).collect();
            anyhow::bail!("POST {} answered {status}: {body}", self.url);
        }
        response
            .json::<AccessDecision>()
            .await
            .with_context(|| format!("reading the answer of POST {}", self.url))
    }
}
