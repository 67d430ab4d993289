//! The saga's steps, its failure injection and its settings.

use std::time::Duration;

use anyhow::Context;
use warmhouse_ingest::influx::{InfluxClient, InfluxSettings};

use super::catalog::TelemetryCatalog;

/// Database of the telemetry when none is configured: the ingest writer's,
/// so the saga registers devices where their readings are written.
pub use warmhouse_service_kit::args::DEFAULT_INFLUX_DATABASE;

/// The steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    CreateDevice,
    IssueCredentials,
    ProvisionTelemetry,
    AnnounceRegistered,
    Activate,
}

impl Step {
    pub const ALL: [Step; 5] = [
        Step::CreateDevice,
        Step::IssueCredentials,
        Step::ProvisionTelemetry,
        Step::AnnounceRegistered,
        Step::Activate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::CreateDevice => "create_device",
            Step::IssueCredentials => "issue_credentials",
            Step::ProvisionTelemetry => "provision_telemetry",
            Step::AnnounceRegistered => "announce_registered",
            Step::Activate => "activate",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Failure injection for tests and game days (`WARMHOUSE_REGISTRY_SAGA_FAULT`):
/// `fail:<step>` makes that step fail; `crash:<step>` abandons the saga right
/// after that step, as if the process died (its lock is released, nothing is
/// compensated until [`super::recover`] runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    FailAt(Step),
    CrashAfter(Step),
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text.is_empty() || text == "none" {
            return Ok(Fault::None);
        }
        let (mode, step) = text
            .split_once(':')
            .ok_or_else(|| format!("expected fail:<step> or crash:<step>, got {text:?}"))?;
        let step = Step::parse(step).ok_or_else(|| {
            format!(
                "unknown step {step:?}; steps: {}",
                Step::ALL.map(Step::as_str).join(", ")
            )
        })?;
        match mode {
            "fail" => Ok(Fault::FailAt(step)),
            "crash" => Ok(Fault::CrashAfter(step)),
            other => Err(format!("unknown fault {other:?}; use fail or crash")),
        }
    }
}

/// How long `provision_telemetry` and its compensation wait for InfluxDB.
const INFLUX_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of the onboarding saga (flags or environment variables).
#[derive(clap::Args, Debug, Clone)]
pub struct OnboardingConfig {
    /// InfluxDB (v1 HTTP API) that `provision_telemetry` registers devices
    /// in; without it that step is skipped (and logged so).
    #[arg(long = "onboarding-influx-url", env = "WARMHOUSE_REGISTRY_INFLUX_URL")]
    pub influx_url: Option<String>,
    /// Database of the telemetry (the ingest writer's).
    #[arg(
        long = "onboarding-influx-database",
        env = "WARMHOUSE_INFLUX_DATABASE",
        default_value = DEFAULT_INFLUX_DATABASE
    )]
    pub influx_database: String,
    /// Failure injection for tests and game days: `fail:<step>` or
    /// `crash:<step>` (steps: create_device, issue_credentials,
    /// provision_telemetry, announce_registered, activate).
    #[arg(
        long = "onboarding-fault",
        env = "WARMHOUSE_REGISTRY_SAGA_FAULT",
        default_value = "none"
    )]
    pub fault: Fault,
}

impl Default for OnboardingConfig {
    /// No InfluxDB (the telemetry step is skipped), no fault.
    fn default() -> Self {
        Self {
            influx_url: None,
            influx_database: DEFAULT_INFLUX_DATABASE.into(),
            fault: Fault::None,
        }
    }
}

impl OnboardingConfig {
    /// The telemetry catalogue `provision_telemetry` writes to, when an
    /// InfluxDB is configured; its HTTP client is built once, here.
    pub fn telemetry_catalog(&self) -> anyhow::Result<Option<TelemetryCatalog>> {
        let Some(url) = &self.influx_url else {
            return Ok(None);
        };
        let database = if self.influx_database.is_empty() {
            DEFAULT_INFLUX_DATABASE
        } else {
            &self.influx_database
        };
        let settings = InfluxSettings {
            timeout: INFLUX_TIMEOUT,
            ..InfluxSettings::new(url.trim_end_matches('/'), database)
        };
        let client =
            InfluxClient::new(settings).context("building the onboarding InfluxDB client")?;
        Ok(Some(TelemetryCatalog::new(client)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!("".parse::<Fault>(), Ok(Fault::None));
        assert_eq!(
            "fail:activate".parse::<Fault>(),
            Ok(Fault::FailAt(Step::Activate))
        );
        assert_eq!(
            "crash:issue_credentials".parse::<Fault>(),
            Ok(Fault::CrashAfter(Step::IssueCredentials))
        );
        assert!("fail:nap"
            .parse::<Fault>()
            .unwrap_err()
            .contains("create_device"));
        assert!("explode:activate".parse::<Fault>().is_err());
    }

    #[test]
    fn steps_round_trip() {
        for step in Step::ALL {
            assert_eq!(Step::parse(step.as_str()), Some(step));
        }
    }
}
