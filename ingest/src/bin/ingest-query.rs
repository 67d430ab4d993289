//! `ingest-query`: the telemetry query API (read side of CQRS).

use clap::Parser;
use warmhouse_ingest::query::{openapi, start, QueryConfig};

#[derive(Parser, Debug)]
#[command(
    name = "ingest-query",
    about = "Warmhouse telemetry query API (REST over InfluxDB)"
)]
struct Cli {
    /// Print the OpenAPI document (JSON) and exit, e.g. for docs and CI.
    #[arg(long)]
    print_openapi: bool,
    #[command(flatten)]
    config: QueryConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.print_openapi {
        println!("{}", openapi().to_pretty_json()?);
        return Ok(());
    }
    warmhouse_service_kit::init_tracing();
    start(cli.config, std::future::pending())
        .await?
        .run_until_signal()
        .await
}
