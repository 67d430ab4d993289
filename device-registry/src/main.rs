use warmhouse_device_registry::{openapi, start, RegistryConfig};
use warmhouse_service_kit::args::parse_or_print_openapi;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(config) = parse_or_print_openapi::<RegistryConfig>(openapi)? else {
        return Ok(());
    };
    config.log.init()?;
    start(config, std::future::pending())
        .await?
        .run_until_signal()
        .await
}
