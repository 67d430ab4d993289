//! `warmhouse-broker`: runs the broker until SIGTERM/Ctrl-C, or exits
//! non-zero when it can no longer serve, so the orchestrator restarts it.

use clap::Parser;
use warmhouse_broker::{start, BrokerConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = BrokerConfig::parse();
    config.log.init()?;
    start(config).await?.run_until_signal().await
}
