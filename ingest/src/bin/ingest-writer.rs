use clap::Parser;
use warmhouse_ingest::writer::{start, WriterConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = WriterConfig::parse();
    config.log.init()?;
    // Stopped by run_until_signal rather than by a future of its own.
    let writer = start(config, std::future::pending()).await?;
    tracing::info!(admin = %writer.admin_addr, "ingest writer started");
    writer.run_until_signal().await
}
