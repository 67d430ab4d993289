//! Imports the legacy heating monolith's database into the registry (see
//! `warmhouse_device_registry::legacy::import`). Safe to run again: what is
//! imported already is left alone. Prints what it did as JSON on stdout,
//! warnings (rows skipped, values left out) on stderr.

use std::process::ExitCode;

use clap::Parser;
use warmhouse_device_registry::kafka::Topics;
use warmhouse_device_registry::legacy::import::{run, ImportOptions};
use warmhouse_service_kit::args::RegistryEventsTopic;

#[derive(Parser, Debug)]
#[command(
    name = "registry-import-monolith",
    about = "Import the legacy heating monolith's heating_systems and temperature_sensors into the device registry"
)]
struct Cli {
    /// PostgreSQL URL of the monolith's database (only read).
    #[arg(long, env = "WARMHOUSE_MONOLITH_DATABASE_URL", hide_env_values = true)]
    from: String,
    /// PostgreSQL URL of the registry's database (its migrations are
    /// applied first).
    #[arg(long, env = "WARMHOUSE_REGISTRY_DATABASE_URL", hide_env_values = true)]
    to: String,
    /// Time zone of the monolith's `timestamp` columns (an IANA name).
    #[arg(long, env = "WARMHOUSE_MONOLITH_TIMEZONE", default_value = "UTC")]
    monolith_timezone: String,
    /// Topic of the domain events announcing what was created; the same as
    /// the registry's, whose outbox relay publishes them.
    #[command(flatten)]
    registry_events_topic: RegistryEventsTopic,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = ImportOptions {
        monolith_timezone: cli.monolith_timezone,
        topics: Topics {
            registry_events: cli.registry_events_topic.name,
            ..Topics::default()
        },
        ..ImportOptions::new(cli.from, cli.to)
    };
    let report = match run(&options).await {
        Ok(report) => report,
        Err(err) => {
            // One line with every cause, for an operator rather than a developer.
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    match serde_json::to_string_pretty(&report) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: printing the report: {err}");
            ExitCode::FAILURE
        }
    }
}
