use clap::Parser;
use warmhouse_device_registry::{openapi, start, RegistryConfig};

#[derive(Parser, Debug)]
#[command(
    name = "device-registry",
    about = "Warmhouse device registry (REST over PostgreSQL)"
)]
struct Cli {
    /// Print the OpenAPI document (JSON) and exit, e.g. for docs and CI.
    #[arg(long)]
    print_openapi: bool,
    #[command(flatten)]
    config: RegistryConfig,
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
