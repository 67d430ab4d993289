use clap::Parser;
use warmhouse_ingest::writer::{start, WriterConfig};
use warmhouse_service_kit::{init_tracing, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let config = WriterConfig::parse();
    let writer = start(config, shutdown_signal()).await?;
    tracing::info!(admin = %writer.admin_addr, "ingest writer started");
    writer.join().await;
    tracing::info!("ingest writer stopped");
    Ok(())
}
