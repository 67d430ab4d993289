//! `warmhouse-sim`: simulated devices over MQTT, and the load generator.

use std::process::ExitCode;

use clap::Parser;
use warmhouse_simulator::{run, SimConfig};

#[tokio::main]
async fn main() -> ExitCode {
    let config = SimConfig::parse();
    if let Err(err) = config.log.init() {
        eprintln!("error: {err:#}");
        return ExitCode::FAILURE;
    }
    match run(config, warmhouse_service_kit::shutdown_signal()).await {
        Ok(summary) => {
            println!("{summary}");
            if summary.messages_unacked > 0 {
                // Scripts and benchmarks must notice that something was not delivered.
                eprintln!(
                    "warning: {} telemetry messages were never acknowledged",
                    summary.messages_unacked
                );
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
