//! Client of the telemetry query API (ingest-query), for the one thing the
//! legacy API needs from it: a device's latest temperature.

use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::StatusCode;
use serde::Deserialize;

/// The legacy GET waits at most this long for the query API before it
/// answers with the imported value.
const TIMEOUT: Duration = Duration::from_millis(1_500);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Metric the query API stores room temperatures under.
const TEMPERATURE: &str = "temperature";

/// `GET /api/v1/devices/{id}/telemetry/latest` of the query API.
#[derive(Clone)]
pub struct TelemetryClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// Never prints the token.
impl std::fmt::Debug for TelemetryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct DeviceLatest {
    metrics: Vec<Metric>,
}

#[derive(Deserialize)]
struct Metric {
    metric: String,
    value: f64,
}

impl TelemetryClient {
    /// `base` is the query API's root URL (e.g. `http://ingest-query:8081`);
    /// `token` a bearer token it accepts for the legacy homes' devices.
    pub fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let base = base.trim().trim_end_matches('/').to_string();
        // The workspace's reqwest is built without TLS: the query API is
        // reached inside the cluster, like the registry's other peers.
        if !base.starts_with("http://") {
            bail!("the telemetry query API URL must start with http:// (no TLS in this build), got {base:?}");
        }
        if token.trim().is_empty() {
            bail!(
                "the telemetry query API needs a bearer token (WARMHOUSE_REGISTRY_TELEMETRY_TOKEN)"
            );
        }
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .context("building the telemetry query API client")?;
        Ok(Self {
            http,
            base,
            token: token.trim().to_string(),
        })
    }

    /// The latest `temperature` reading of `device_id`; `None` when the
    /// query API has none. Errors when it cannot be asked or refuses.
    pub async fn latest_temperature(&self, device_id: &str) -> anyhow::Result<Option<f64>> {
        // Device ids are [A-Za-z0-9_-] (validated when stored): no escaping.
        let url = format!("{}/api/v1/devices/{device_id}/telemetry/latest", self.base);
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("asking the telemetry query API at {}", self.base))?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            status => {
                let body = response.text().await.unwrap_or_default();
                bail!(
                    "the telemetry query API answered {status}: {}",
                    body.chars().take(300).collect::<String>()
                );
            }
        }
        let latest: DeviceLatest = response
            .json()
            .await
            .context("decoding the telemetry query API's answer")?;
        Ok(latest
            .metrics
            .into_iter()
            .find(|m| m.metric == TEMPERATURE)
            .map(|m| m.value)
            .filter(|v| v.is_finite()))
    }
}
