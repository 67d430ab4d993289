//! Revoking a device: drop its live connections and refuse its reconnects.
//!
//! Sources of revocations:
//! * the registry's domain events on Kafka (`registry-events`):
//!   `device.disabled`, `device.deleted` and `device.credentials_rotated`
//!   revoke (the last one so that no connection made with replaced
//!   credentials outlives them: the device reconnects with its new ones),
//!   `device.enabled` and `device.registered` lift;
//! * operators: `POST /admin/v1/devices/{id}/revoke` (and `DELETE` to lift)
//!   on the admin port, with `Authorization: Bearer $WARMHOUSE_BROKER_ADMIN_TOKEN`.
//!
//! A revocation asks rumqttd's router to drop every connection of that
//! tenant (Warmhouse patch 3) and is remembered for
//! `revocation_memory_secs`.
//!
//! * For the registry's events the registry stays the authority on
//!   reconnects: it refuses a disabled or deleted device itself, and a
//!   device enabled again gets in at once, without waiting for its
//!   `device.enabled` event to reach every broker.
//! * An operator's revoke has no registry state behind it, so the broker
//!   itself refuses the device ([`Revocations::is_blocked`]) until an
//!   operator lifts it (`DELETE`) or the memory period ends. Disable the
//!   device in the registry for a lasting block.
//!
//! One race is closed twice: a connect whose registry check started before
//! the revocation arrived is refused when the answer comes back
//! ([`Revocations::revoked_since`]), and the tenant is dropped once more a
//! little later in case such a connect slipped in between.
//!
//! Every broker replica reads every partition of the topic with a manual
//! assignment (no consumer group): each replica must see every event, a
//! restarted broker has no connections that older events could concern, so
//! it starts at the end of each partition and commits nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use prometheus::{IntCounterVec, IntGauge};
use rdkafka::message::Message;
use serde::Deserialize;
use warmhouse_contracts::domain::{DomainEvent, DomainEventKind};
use warmhouse_contracts::ids::DeviceId;
use warmhouse_service_kit::kafka::{record_source, TopicTail};
use warmhouse_service_kit::Problem;

use crate::config::Secret;
use crate::last_good::LastGoodAnswers;

/// The broker's memory of revoked devices. Cheap to clone.
#[derive(Clone)]
pub struct Revocations {
    inner: Arc<Inner>,
}

/// One remembered revocation.
#[derive(Debug, Clone, Copy)]
struct Entry {
    at: Instant,
    /// Refuse reconnects without asking the registry (operator revokes).
    blocking: bool,
}

/// Where a revocation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `device.disabled`, `device.deleted`, `device.credentials_rotated` from
    /// the registry.
    RegistryEvent,
    /// `POST /admin/v1/devices/{id}/revoke`.
    Admin,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::RegistryEvent => "registry_event",
            Source::Admin => "admin",
        }
    }
}

struct Inner {
    revoked: Mutex<HashMap<String, Entry>>,
    disconnector: OnceLock<rumqttd::TenantDisconnector>,
    last_good: OnceLock<LastGoodAnswers>,
    memory: Duration,
    recheck: Duration,
    total: IntCounterVec,
}

impl Revocations {
    /// `memory`: how long a revocation is remembered; `recheck`: when the
    /// tenant is dropped a second time (longer than a registry check may
    /// take).
    pub fn new(memory: Duration, recheck: Duration, total: IntCounterVec) -> Self {
        Self {
            inner: Arc::new(Inner {
                revoked: Mutex::new(HashMap::new()),
                disconnector: OnceLock::new(),
                last_good: OnceLock::new(),
                memory,
                recheck,
                total,
            }),
        }
    }

    /// Connects the revocations to rumqttd's router (once, before it starts).
    pub fn attach(&self, disconnector: rumqttd::TenantDisconnector) {
        let _ = self.inner.disconnector.set(disconnector);
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (single insert/remove), so a poisoned lock is still usable.
        self.inner
            .revoked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes every revocation also forget the device's last good access
    /// answers (once, before the broker starts).
    pub fn also_forget(&self, last_good: LastGoodAnswers) {
        let _ = self.inner.last_good.set(last_good);
    }

    /// Drops the device's live connections (twice, see the module docs) and
    /// remembers the revocation for the memory period; an operator's
    /// ([`Source::Admin`]) also refuses reconnects for that long. Must run
    /// inside a Tokio runtime (it schedules the second drop).
    pub fn revoke(&self, device_id: &str, source: Source) {
        let now = Instant::now();
        {
            let mut table = self.table();
            let memory = self.inner.memory;
            table.retain(|_, entry| now.duration_since(entry.at) < memory);
            let blocking =
                source == Source::Admin || table.get(device_id).is_some_and(|entry| entry.blocking);
            table.insert(device_id.to_string(), Entry { at: now, blocking });
        }
        if let Some(last_good) = self.inner.last_good.get() {
            last_good.forget(device_id);
        }
        let label = source.label();
        self.inner.total.with_label_values(&[label]).inc();
        tracing::info!(
            device_id,
            source = label,
            "device revoked: dropping its connections"
        );
        self.disconnect(device_id);
        let this = self.clone();
        let device = device_id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(this.inner.recheck).await;
            // Unless lifted (or revoked anew, which schedules its own) since.
            let current = this
                .table()
                .get(&device)
                .is_some_and(|entry| entry.at == now);
            if current {
                this.disconnect(&device);
            }
        });
    }

    /// Forgets a revocation. From the registry (`device.enabled`,
    /// `device.registered`) it leaves an operator's block alone; an
    /// operator's lift forgets any.
    pub fn lift(&self, device_id: &str, source: Source) {
        let mut table = self.table();
        let lift = table
            .get(device_id)
            .is_some_and(|entry| source == Source::Admin || !entry.blocking);
        if lift {
            table.remove(device_id);
            tracing::info!(device_id, source = source.label(), "revocation lifted");
        }
    }

    /// Whether the broker itself refuses the device (an operator's revoke
    /// within the memory period).
    pub fn is_blocked(&self, device_id: &str) -> bool {
        self.table()
            .get(device_id)
            .is_some_and(|entry| entry.blocking && entry.at.elapsed() < self.inner.memory)
    }

    /// Whether the device was revoked at or after `since`.
    pub fn revoked_since(&self, device_id: &str, since: Instant) -> bool {
        self.table()
            .get(device_id)
            .is_some_and(|entry| entry.at >= since && entry.at.elapsed() < self.inner.memory)
    }

    fn disconnect(&self, device_id: &str) {
        match self.inner.disconnector.get() {
            Some(disconnector) => {
                if let Err(err) = disconnector.disconnect(device_id) {
                    tracing::error!(device_id, %err, "rumqttd's router is gone: cannot drop connections");
                }
            }
            None => tracing::warn!(device_id, "revocation before rumqttd started"),
        }
    }
}

/// What a domain event means for the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Revoke(String),
    Lift(String),
    Ignore,
}

/// Just the `type`, read before the full decode so unknown or unrelated
/// event types are skipped cheaply (readers must ignore unknown types).
#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    kind: String,
}

/// Reads one `registry-events` record.
pub fn effect_of(payload: &[u8]) -> anyhow::Result<Effect> {
    let TypeOnly { kind } = serde_json::from_slice(payload)
        .context("registry event is not a JSON object with a type")?;
    if !matches!(
        kind.as_str(),
        "device.disabled"
            | "device.deleted"
            | "device.credentials_rotated"
            | "device.enabled"
            | "device.registered"
    ) {
        return Ok(Effect::Ignore);
    }
    let event = DomainEvent::decode(payload).context("decoding a device lifecycle event")?;
    Ok(match event.event {
        DomainEventKind::DeviceDisabled { device_id, .. }
        | DomainEventKind::DeviceDeleted { device_id, .. }
        | DomainEventKind::CredentialsRotated { device_id, .. } => Effect::Revoke(device_id.into()),
        DomainEventKind::DeviceEnabled { device_id, .. }
        | DomainEventKind::DeviceRegistered { device_id, .. } => Effect::Lift(device_id.into()),
        _ => Effect::Ignore,
    })
}

/// Kafka settings of the revocation consumer.
#[derive(Debug, Clone)]
pub struct EventSource {
    pub bootstrap: String,
    pub topic: String,
    pub instance_id: String,
}

/// Creates the consumer and assigns every partition at its current end.
/// Returns once assigned, so events from then on are seen.
pub async fn assign(source: &EventSource) -> anyhow::Result<TopicTail> {
    TopicTail::assign(
        &source.bootstrap,
        &source.topic,
        &format!("warmhouse-broker-{}", source.instance_id),
        Duration::from_millis(100),
    )
    .await
}

/// Applies the registry's events to `revocations` until the task is
/// aborted. `tail` is already assigned (see [`assign`]); when it is `None`
/// (Kafka was unreachable at start) it is created here, retrying.
pub async fn run(
    source: EventSource,
    mut tail: Option<TopicTail>,
    revocations: Revocations,
    up: IntGauge,
) {
    let mut tail = loop {
        match tail.take() {
            Some(assigned) => break assigned,
            None => match assign(&source).await {
                Ok(assigned) => {
                    tracing::info!(topic = source.topic, "reading registry events");
                    tail = Some(assigned);
                }
                Err(err) => {
                    up.set(0);
                    tracing::warn!(
                        error = format!("{err:#}"),
                        "registry events unavailable; retrying"
                    );
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            },
        }
    };
    up.set(1);
    loop {
        match tail.recv().await {
            Ok(message) => {
                up.set(1);
                let Some(payload) = message.payload() else {
                    continue;
                };
                match effect_of(payload) {
                    Ok(Effect::Revoke(device)) => {
                        revocations.revoke(&device, Source::RegistryEvent)
                    }
                    Ok(Effect::Lift(device)) => revocations.lift(&device, Source::RegistryEvent),
                    Ok(Effect::Ignore) => {}
                    Err(err) => tracing::warn!(
                        source = record_source(&message),
                        error = format!("{err:#}"),
                        "skipping an unreadable registry event"
                    ),
                }
            }
            // librdkafka reconnects by itself; say so and keep reading.
            Err(err) => {
                up.set(0);
                tracing::warn!(%err, "registry events: Kafka error");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[derive(Clone)]
struct AdminState {
    revocations: Revocations,
    token: Option<Secret>,
    memory: Duration,
}

/// `POST` / `DELETE /admin/v1/devices/{id}/revoke` for operators.
pub fn admin_routes(revocations: Revocations, token: Option<Secret>, memory: Duration) -> Router {
    Router::new()
        .route(
            "/admin/v1/devices/{id}/revoke",
            post(revoke_device).delete(lift_device),
        )
        .with_state(AdminState {
            revocations,
            token,
            memory,
        })
}

fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), Problem> {
    let Some(token) = &state.token else {
        return Err(Problem::forbidden(
            "device revocation on the broker is disabled: set WARMHOUSE_BROKER_ADMIN_TOKEN",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(presented) if token.matches(presented) => Ok(()),
        Some(_) => Err(Problem::unauthorized(
            Some("invalid_token"),
            "the bearer token is not the broker's admin token",
        )),
        None => Err(Problem::unauthorized(
            None,
            "send the broker's admin token as `Authorization: Bearer <token>`",
        )),
    }
}

fn device_id(id: &str) -> Result<DeviceId, Problem> {
    DeviceId::new(id).map_err(|err| Problem::invalid_parameter("id", err.to_string()))
}

async fn revoke_device(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    authorize(&state, &headers)?;
    let device = device_id(&id)?;
    state.revocations.revoke(device.as_str(), Source::Admin);
    Ok((
        StatusCode::OK,
        Json(serde_json::json!({
            "device_id": device.as_str(),
            "revoked": true,
            "remembered_for_secs": state.memory.as_secs(),
        })),
    )
        .into_response())
}

async fn lift_device(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    authorize(&state, &headers)?;
    let device = device_id(&id)?;
    state.revocations.lift(device.as_str(), Source::Admin);
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revocations(memory: Duration) -> Revocations {
        let total = IntCounterVec::new(prometheus::Opts::new("t", "t"), &["source"]).unwrap();
        Revocations::new(memory, Duration::from_millis(10), total)
    }

    #[tokio::test]
    async fn remembers_revocations_for_a_while_and_lifts_them() {
        let r = revocations(Duration::from_millis(200));
        let before = Instant::now();
        // The registry's revocations close the race but do not block: the
        // registry itself refuses a disabled device.
        r.revoke("d", Source::RegistryEvent);
        assert!(!r.is_blocked("d"));
        assert!(r.revoked_since("d", before));
        assert!(!r.revoked_since("d", Instant::now()));
        r.lift("d", Source::RegistryEvent);
        assert!(!r.revoked_since("d", before));
        // An operator's revoke blocks until an operator lifts it.
        r.revoke("o", Source::Admin);
        assert!(r.is_blocked("o"));
        r.lift("o", Source::RegistryEvent);
        assert!(
            r.is_blocked("o"),
            "a registry event does not lift an operator's block"
        );
        r.revoke("o", Source::RegistryEvent);
        assert!(
            r.is_blocked("o"),
            "a later registry revocation keeps the block"
        );
        r.lift("o", Source::Admin);
        assert!(!r.is_blocked("o"));
        r.revoke("o", Source::Admin);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!r.is_blocked("o"), "forgotten after the memory period");
    }

    #[test]
    fn reads_lifecycle_events_and_skips_the_rest() {
        let event = |kind: DomainEventKind| DomainEvent::new("e".into(), 1, kind).to_json();
        let device = DeviceId::new("dev-1").unwrap();
        let home = warmhouse_contracts::ids::HomeId::new("home-1").unwrap();
        assert_eq!(
            effect_of(&event(DomainEventKind::DeviceDisabled {
                device_id: device.clone(),
                home_id: home.clone()
            }))
            .unwrap(),
            Effect::Revoke("dev-1".into())
        );
        assert_eq!(
            effect_of(&event(DomainEventKind::DeviceDeleted {
                device_id: device.clone(),
                home_id: home.clone()
            }))
            .unwrap(),
            Effect::Revoke("dev-1".into())
        );
        assert_eq!(
            effect_of(&event(DomainEventKind::CredentialsRotated {
                device_id: device.clone(),
                home_id: home.clone(),
                kind: warmhouse_contracts::domain::RotatedCredential::Password
            }))
            .unwrap(),
            Effect::Revoke("dev-1".into())
        );
        assert_eq!(
            effect_of(&event(DomainEventKind::DeviceEnabled {
                device_id: device.clone(),
                home_id: home.clone()
            }))
            .unwrap(),
            Effect::Lift("dev-1".into())
        );
        assert_eq!(
            effect_of(&event(DomainEventKind::HomeCreated {
                home_id: home,
                name: "n".into()
            }))
            .unwrap(),
            Effect::Ignore
        );
        assert_eq!(
            effect_of(br#"{"v":1,"type":"device.teleported","device_id":"x"}"#).unwrap(),
            Effect::Ignore
        );
        assert!(effect_of(b"not json").is_err());
        assert!(effect_of(
            br#"{"v":1,"event_id":"e","occurred_at_ms":1,"type":"device.disabled","device_id":"a b","home_id":"h"}"#
        )
        .is_err());
    }
}
