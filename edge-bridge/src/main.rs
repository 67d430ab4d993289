use clap::Parser;
use warmhouse_edge_bridge::{start, BridgeConfig};
use warmhouse_service_kit::{init_tracing, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let config = BridgeConfig::parse();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let _bridge = start(config, async {
        let _ = rx.await;
    })
    .await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = tx.send(());
    Ok(())
}
