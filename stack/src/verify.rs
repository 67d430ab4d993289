//! Checks, through the REST query API, that what the simulator published (and
//! got acknowledged) is stored exactly once with the right value and time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;
use warmhouse_simulator::PublishedMessage;

/// One reading as the query API returns it: (metric, device ms, seq, value).
pub type Reading = (String, i64, i64, f64);

/// What every device should hold, sorted.
pub fn expected_readings(published: &[PublishedMessage]) -> BTreeMap<String, Vec<Reading>> {
    let mut expected: BTreeMap<String, Vec<Reading>> = BTreeMap::new();
    for message in published {
        let readings = expected.entry(message.device_id.to_string()).or_default();
        for sample in &message.samples {
            for (metric, value) in &sample.values {
                readings.push((metric.to_string(), sample.ts, sample.seq as i64, *value));
            }
        }
    }
    for readings in expected.values_mut() {
        readings.sort_by(compare);
    }
    expected
}

fn compare(a: &Reading, b: &Reading) -> std::cmp::Ordering {
    (&a.0, a.1, a.2)
        .cmp(&(&b.0, b.1, b.2))
        .then(a.3.total_cmp(&b.3))
}

#[derive(Deserialize)]
struct RawTelemetry {
    truncated: bool,
    points: Vec<RawPoint>,
}

#[derive(Deserialize)]
struct RawPoint {
    metric: String,
    value: f64,
    seq: Option<i64>,
    ts_ms: i64,
}

/// Every stored reading of `device` between `from_ms` and `to_ms`
/// (inclusive); `http` must send a bearer token that may read the device.
pub async fn fetch_readings(
    http: &reqwest::Client,
    query_url: &str,
    device: &str,
    from_ms: i64,
    to_ms: i64,
) -> anyhow::Result<Vec<Reading>> {
    let url = format!("{query_url}/api/v1/devices/{device}/telemetry");
    let response = http
        .get(&url)
        .query(&[
            ("from", from_ms.to_string()),
            ("to", (to_ms + 1).to_string()),
            ("limit", "10000".to_string()),
        ])
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(Vec::new());
    }
    let body = response
        .text()
        .await
        .context("reading query API response")?;
    if !status.is_success() {
        bail!("GET {url}: {status}: {body}");
    }
    let raw: RawTelemetry =
        serde_json::from_str(&body).with_context(|| format!("decoding {body}"))?;
    if raw.truncated {
        bail!("{device}: more than 10000 points; the check needs a smaller run");
    }
    let mut readings: Vec<Reading> = raw
        .points
        .into_iter()
        .map(|p| (p.metric, p.ts_ms, p.seq.unwrap_or(-1), p.value))
        .collect();
    readings.sort_by(compare);
    Ok(readings)
}

/// Polls the stack's query API (as an admin) until every device holds
/// exactly what was published, or fails after `timeout` with what differs.
pub async fn wait_for_exactly(
    stack: &crate::Stack,
    published: &[PublishedMessage],
    timeout: Duration,
) -> anyhow::Result<usize> {
    let expected = expected_readings(published);
    let http = stack
        .api_client_builder()?
        .build()
        .context("building the HTTP client")?;
    let query_url = stack.query_url();
    let query_url = query_url.as_str();
    let deadline = Instant::now() + timeout;
    loop {
        let mut differences = Vec::new();
        let mut total = 0;
        for (device, want) in &expected {
            let from = want.iter().map(|r| r.1).min().unwrap_or(0);
            let to = want.iter().map(|r| r.1).max().unwrap_or(0);
            let got = fetch_readings(&http, query_url, device, from, to).await?;
            total += want.len();
            if &got != want {
                let missing = want.iter().filter(|r| !got.contains(r)).count();
                let unexpected = got.iter().filter(|r| !want.contains(r)).count();
                differences.push(format!(
                    "{device}: expected {} readings, found {} ({missing} missing, {unexpected} unexpected); first missing {:?}, first unexpected {:?}",
                    want.len(),
                    got.len(),
                    want.iter().find(|r| !got.contains(r)),
                    got.iter().find(|r| !want.contains(r)),
                ));
            }
        }
        if differences.is_empty() {
            return Ok(total);
        }
        if Instant::now() > deadline {
            bail!(
                "after {timeout:?} the stored readings still differ:\n{}",
                differences.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
