//! InfluxDB through its v1 HTTP API (`/write` with line protocol, `/query`
//! with InfluxQL), which InfluxDB 1.x, 2.x (compatibility API) and 3.x serve.
//!
//! Storage layout (see docs/adr/0004-point-identity-and-idempotent-writes.md):
//! * database `warmhouse` (configurable);
//! * retention policy `raw` (default, 30 days) for readings as they arrive,
//!   `rollup_1h` (2 years) filled by the continuous query `rollup_1h`;
//! * one measurement per metric (`temperature`, `humidity`, ...), tags
//!   `home_id`, `device_id`, `device_type`, fields `value` (float) and `seq`
//!   (integer).

use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

pub const RAW_RP: &str = "raw";
pub const ROLLUP_RP: &str = "rollup_1h";

/// Settings of the storage layout; defaults match the local stack.
#[derive(Debug, Clone)]
pub struct InfluxSettings {
    pub url: String,
    pub database: String,
    pub raw_retention: String,
    pub rollup_retention: String,
    pub timeout: Duration,
}

impl InfluxSettings {
    pub fn new(url: impl Into<String>, database: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            database: database.into(),
            raw_retention: "30d".into(),
            rollup_retention: "104w".into(),
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone)]
pub struct InfluxClient {
    settings: InfluxSettings,
    http: reqwest::Client,
}

/// Why a write failed: worth retrying (InfluxDB down or overloaded) or not
/// (InfluxDB refused the data itself, retrying would loop forever).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("InfluxDB unavailable: {0}")]
    Unavailable(String),
    #[error("InfluxDB refused the batch ({status}): {body}")]
    Refused { status: u16, body: String },
}

/// `/query` JSON response.
#[derive(Debug, Deserialize, Default)]
pub struct QueryResponse {
    #[serde(default)]
    pub results: Vec<StatementResult>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
pub struct StatementResult {
    #[serde(default)]
    pub statement_id: u32,
    #[serde(default)]
    pub series: Vec<Series>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone)]
pub struct Series {
    /// Absent for some statements (SHOW RETENTION POLICIES).
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    pub columns: Vec<String>,
    #[serde(default)]
    pub values: Vec<Vec<serde_json::Value>>,
}

impl InfluxClient {
    pub fn new(settings: InfluxSettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .context("building HTTP client for InfluxDB")?;
        Ok(Self { settings, http })
    }

    pub fn settings(&self) -> &InfluxSettings {
        &self.settings
    }

    /// Runs InfluxQL against the configured database; timestamps come back
    /// as integer nanoseconds (`epoch=ns`). Errors of the statement itself are
    /// returned as errors too.
    pub async fn query(&self, influxql: &str) -> anyhow::Result<Vec<StatementResult>> {
        let response = self
            .http
            .post(format!("{}/query", self.settings.url))
            .query(&[
                ("db", self.settings.database.as_str()),
                ("epoch", "ns"),
                ("q", influxql),
            ])
            .send()
            .await
            .with_context(|| format!("querying InfluxDB at {}", self.settings.url))?;
        let status = response.status();
        let body: QueryResponse = response
            .json()
            .await
            .with_context(|| format!("decoding InfluxDB /query response ({status})"))?;
        if let Some(error) = body.error {
            bail!("InfluxDB query failed: {error}");
        }
        if let Some(error) = body.results.iter().find_map(|r| r.error.clone()) {
            bail!("InfluxDB query failed: {error}");
        }
        if !status.is_success() {
            bail!("InfluxDB query failed with HTTP {status}");
        }
        Ok(body.results)
    }

    /// Writes a gzip-compressed line-protocol body to the raw retention policy.
    pub async fn write_gzip(&self, body: Vec<u8>) -> Result<(), WriteError> {
        let request = self
            .http
            .post(format!("{}/write", self.settings.url))
            .query(&[
                ("db", self.settings.database.as_str()),
                ("rp", RAW_RP),
                ("precision", "ns"),
            ])
            .header("Content-Encoding", "gzip")
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(body);
        Self::write(request).await
    }

    /// Writes a few lines of line protocol, uncompressed, to the database's
    /// default retention policy (the registry's device catalogue; the
    /// database may have been made without this crate's layout).
    pub async fn write_lines(&self, lines: String) -> Result<(), WriteError> {
        let request = self
            .http
            .post(format!("{}/write", self.settings.url))
            .query(&[("db", self.settings.database.as_str())])
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(lines);
        Self::write(request).await
    }

    async fn write(request: reqwest::RequestBuilder) -> Result<(), WriteError> {
        let response = request
            .send()
            .await
            .map_err(|e| WriteError::Unavailable(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        // 5xx and 429 are InfluxDB's trouble (retry); 4xx is our data's.
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            Err(WriteError::Unavailable(format!("HTTP {status}: {body}")))
        } else {
            Err(WriteError::Refused {
                status: status.as_u16(),
                body,
            })
        }
    }

    /// Creates the database, retention policies and rollup continuous query
    /// if they are missing. Safe to run at every start.
    pub async fn ensure_schema(&self) -> anyhow::Result<()> {
        let s = &self.settings;
        let db = &s.database;
        self.admin(&format!("CREATE DATABASE \"{db}\"")).await?;
        // CREATE fails when the policy exists with other settings; then the
        // configured duration wins (an operator changed it).
        for (rp, duration, default) in [
            (RAW_RP, &s.raw_retention, " DEFAULT"),
            (ROLLUP_RP, &s.rollup_retention, ""),
        ] {
            let create = format!(
                "CREATE RETENTION POLICY \"{rp}\" ON \"{db}\" DURATION {duration} REPLICATION 1{default}"
            );
            if let Err(err) = self.admin(&create).await {
                if !err.to_string().contains("already exists") {
                    return Err(err);
                }
                self.admin(&format!(
                    "ALTER RETENTION POLICY \"{rp}\" ON \"{db}\" DURATION {duration}{default}"
                ))
                .await?;
            }
        }
        let cq = format!(
            "CREATE CONTINUOUS QUERY \"rollup_1h\" ON \"{db}\" RESAMPLE FOR 2h BEGIN \
             SELECT mean(\"value\") AS \"value\", min(\"value\") AS \"min\", max(\"value\") AS \"max\", count(\"value\") AS \"count\" \
             INTO \"{db}\".\"{ROLLUP_RP}\".:MEASUREMENT FROM \"{db}\".\"{RAW_RP}\"./.*/ GROUP BY time(1h), * END"
        );
        match self.admin(&cq).await {
            Ok(()) => Ok(()),
            Err(err) if err.to_string().contains("already exists") => Ok(()),
            Err(err) => Err(err),
        }
    }

    async fn admin(&self, statement: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/query", self.settings.url))
            .form(&[("q", statement)])
            .send()
            .await
            .with_context(|| format!("sending `{statement}` to InfluxDB"))?;
        let body: QueryResponse = response
            .json()
            .await
            .with_context(|| format!("decoding the answer to `{statement}`"))?;
        if let Some(error) = body
            .error
            .or_else(|| body.results.iter().find_map(|r| r.error.clone()))
        {
            bail!("`{statement}` failed: {error}");
        }
        Ok(())
    }

    /// `/ping` answers 204 when InfluxDB is up.
    pub async fn ping(&self) -> bool {
        matches!(
            self.http.get(format!("{}/ping", self.settings.url)).send().await,
            Ok(r) if r.status().is_success()
        )
    }
}
