//! `warmhouse-broker`: runs the broker until SIGTERM/Ctrl-C, or exits
//! non-zero when it can no longer serve, so the orchestrator restarts it.

use clap::Parser;
use warmhouse_broker::{start, BrokerConfig};
use warmhouse_service_kit::{init_tracing, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let config = BrokerConfig::parse();
    let mut broker = start(config).await?;
    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutdown signal received");
            broker.shutdown().await;
            // Returning ends the process and with it rumqttd's threads.
            Ok(())
        }
        err = broker.failed() => Err(err.context("broker can no longer serve")),
    }
}
