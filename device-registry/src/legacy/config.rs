//! Where the legacy API reads current temperatures.

use std::fmt;

use super::telemetry::TelemetryClient;

/// Where the legacy API reads current temperatures (flags or environment).
#[derive(clap::Args, Clone, Default)]
pub struct LegacyConfig {
    /// Root URL of the telemetry query API (ingest-query), where the legacy
    /// `/api/heating` endpoints read current temperatures. Unset: they
    /// answer the temperatures imported from the monolith.
    #[arg(long, env = "WARMHOUSE_REGISTRY_TELEMETRY_URL")]
    pub telemetry_url: Option<String>,
    /// Bearer token the registry sends to the telemetry query API: a
    /// long-lived service token covering the legacy homes.
    #[arg(
        long,
        env = "WARMHOUSE_REGISTRY_TELEMETRY_TOKEN",
        hide_env_values = true
    )]
    pub telemetry_token: Option<String>,
}

/// The token stays out of logs.
impl fmt::Debug for LegacyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LegacyConfig")
            .field("telemetry_url", &self.telemetry_url)
            .field(
                "telemetry_token",
                &self.telemetry_token.as_ref().map(|_| "<set>"),
            )
            .finish()
    }
}

/// What the legacy handlers need besides the registry's state.
#[derive(Clone, Debug, Default)]
pub struct LegacyState {
    pub(super) telemetry: Option<TelemetryClient>,
}

impl LegacyState {
    /// A URL without a token is a configuration error: the query API
    /// refuses every request without one.
    pub fn new(config: &LegacyConfig) -> anyhow::Result<Self> {
        let url = config
            .telemetry_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty());
        let telemetry = match url {
            None => None,
            Some(url) => Some(TelemetryClient::new(
                url,
                config.telemetry_token.as_deref().unwrap_or_default(),
            )?),
        };
        Ok(Self { telemetry })
    }
}
