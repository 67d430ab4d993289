//! Registers a simulator's fleet (its homes and devices) in the device
//! registry over REST, as an installer would, so commands can reach the
//! simulated devices and their state shows in the registry.

use anyhow::{bail, Context};
use futures::StreamExt;
use serde_json::json;
use warmhouse_simulator::SimConfig;

/// Creates every home and device of `sim` (status `active`); ones that
/// already exist are left as they are, so it can run twice.
pub async fn register_fleet(
    http: &reqwest::Client,
    registry_url: &str,
    token: &str,
    sim: &SimConfig,
) -> anyhow::Result<usize> {
    let specs = sim.device_specs()?;
    let mut homes: Vec<&str> = specs.iter().map(|s| s.home_id.as_str()).collect();
    homes.dedup();
    let homes_url = format!("{registry_url}/api/v1/homes");
    all(homes.into_iter().map(|home| {
        let body = json!({"id": home, "name": format!("Simulated {home}")});
        let url = &homes_url;
        async move { create(http, url, token, &body).await }
    }))
    .await?;
    let devices_url = format!("{registry_url}/api/v1/devices");
    all(specs.iter().map(|spec| {
        let body = json!({
            "id": spec.device_id.as_str(),
            "home_id": spec.home_id.as_str(),
            "kind": spec.kind.as_str(),
            "name": format!("Simulated {}", spec.kind.as_str()),
            "status": "active",
        });
        let url = &devices_url;
        async move { create(http, url, token, &body).await }
    }))
    .await?;
    Ok(specs.len())
}

/// Requests the registry answers at once while a fleet is registered.
const CONCURRENT_REQUESTS: usize = 16;

/// Runs `requests`, `CONCURRENT_REQUESTS` at a time; the first error wins.
async fn all<T>(
    requests: impl IntoIterator<Item = impl std::future::Future<Output = anyhow::Result<T>>>,
) -> anyhow::Result<Vec<T>> {
    futures::stream::iter(requests)
        .buffer_unordered(CONCURRENT_REQUESTS)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Issues each of `devices` a password (`POST .../credentials`), as an
/// installer would; returns (device id, password).
pub async fn issue_passwords(
    http: &reqwest::Client,
    registry_url: &str,
    token: &str,
    devices: impl IntoIterator<Item = String>,
) -> anyhow::Result<Vec<(String, String)>> {
    all(devices.into_iter().map(|device| async move {
        let url = format!("{registry_url}/api/v1/devices/{device}/credentials");
        let response = http
            .post(&url)
            .bearer_auth(token)
            .json(&json!({"kind": "password"}))
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("POST {url} answered {status}: {text}");
        }
        let issued: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("POST {url} answered {text}"))?;
        let password = issued["password"]
            .as_str()
            .with_context(|| format!("no password issued for {device}"))?
            .to_string();
        Ok((device, password))
    }))
    .await
}

/// `POST`s a resource (a home, a device) to the registry; one that exists
/// already (409) is left as it is.
pub async fn create(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &serde_json::Value,
) -> anyhow::Result<()> {
    let response = http
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    // 409: it exists already.
    if !status.is_success() && status != reqwest::StatusCode::CONFLICT {
        let text = response.text().await.unwrap_or_default();
        bail!("POST {url} answered {status}: {text}");
    }
    Ok(())
}
