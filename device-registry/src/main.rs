use clap::Parser;
use warmhouse_device_registry::{start, RegistryConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    warmhouse_service_kit::init_tracing();
    let config = RegistryConfig::parse();
    let running = start(config, warmhouse_service_kit::shutdown_signal()).await?;
    running.wait().await
}
