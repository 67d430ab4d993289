//! `ingest-query`: the telemetry query API (read side of CQRS).

use warmhouse_ingest::query::{openapi, start, QueryConfig};
use warmhouse_service_kit::args::parse_or_print_openapi;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(config) = parse_or_print_openapi::<QueryConfig>(openapi)? else {
        return Ok(());
    };
    config.log.init()?;
    start(config, std::future::pending())
        .await?
        .run_until_signal()
        .await
}
