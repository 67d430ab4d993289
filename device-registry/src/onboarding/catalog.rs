//! The saga's telemetry step: the device's entry in InfluxDB's
//! `device_catalog` measurement, which dashboards list devices from,
//! written through the ingest crate's InfluxDB client.

use axum::http::StatusCode;
use warmhouse_contracts::ids::{DeviceId, HomeId};
use warmhouse_ingest::influx::InfluxClient;

use crate::problem::Problem;

/// InfluxDB as the onboarding saga sees it.
#[derive(Clone)]
pub struct TelemetryCatalog {
    influx: InfluxClient,
}

impl TelemetryCatalog {
    pub fn new(influx: InfluxClient) -> Self {
        Self { influx }
    }

    /// Writes the device's catalogue point:
    /// `device_catalog,device_id=..,device_type=..,home_id=.. registered=1i`.
    pub async fn add(
        &self,
        device_id: &DeviceId,
        kind: &str,
        home_id: &HomeId,
    ) -> Result<(), Problem> {
        let line = format!(
            "device_catalog,device_id={device_id},device_type={kind},home_id={home_id} registered=1i"
        );
        self.influx
            .write_lines(line)
            .await
            .map_err(|err| unavailable(format!("InfluxDB write: {err}")))
    }

    /// Drops the device's catalogue series (the compensation).
    pub async fn remove(&self, device_id: &str) -> Result<(), Problem> {
        // Ids are validated ([A-Za-z0-9_-]), so they are safe in a quoted literal.
        DeviceId::new(device_id).map_err(|e| Problem::invalid_field("device.id", e.to_string()))?;
        let q = format!("DROP SERIES FROM device_catalog WHERE device_id = '{device_id}'");
        self.influx
            .query(&q)
            .await
            .map(drop)
            .map_err(|err| unavailable(format!("{err:#}")))
    }
}

fn unavailable(detail: String) -> Problem {
    Problem::new(
        StatusCode::BAD_GATEWAY,
        "telemetry-store-unavailable",
        "Telemetry store unavailable",
        detail,
    )
}
