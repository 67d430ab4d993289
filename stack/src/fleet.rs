//! Registers a simulator's fleet (its homes and devices) in the device
//! registry over REST, as an installer would, so commands can reach the
//! simulated devices and their state shows in the registry.

use anyhow::{bail, Context};
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
    for home in homes {
        let body = json!({"id": home, "name": format!("Simulated {home}")});
        create(http, &format!("{registry_url}/api/v1/homes"), token, &body).await?;
    }
    for spec in &specs {
        let body = json!({
            "id": spec.device_id.as_str(),
            "home_id": spec.home_id.as_str(),
            "kind": spec.kind.as_str(),
            "name": format!("Simulated {}", spec.kind.as_str()),
            "status": "active",
        });
        create(
            http,
            &format!("{registry_url}/api/v1/devices"),
            token,
            &body,
        )
        .await?;
    }
    Ok(specs.len())
}

async fn create(
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
