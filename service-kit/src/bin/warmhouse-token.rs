//! `warmhouse-token`: prints an HS256 bearer token for the registry and the
//! telemetry query API (local stack, tests, scripts). Production tokens come
//! from the identity provider, not from this tool.
//!
//! ```text
//! export WARMHOUSE_JWT_SECRET=...   # the secret the services verify with
//! curl -H "Authorization: Bearer $(warmhouse-token --home home-0001)" ...
//! ```

use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use warmhouse_service_kit::auth::{self, Claims};

#[derive(Parser)]
#[command(
    name = "warmhouse-token",
    about = "Print an HS256 bearer token for the Warmhouse REST APIs"
)]
struct Cli {
    /// HS256 shared secret the services verify with.
    #[arg(long, env = auth::SECRET_ENV, hide_env_values = true)]
    secret: String,
    /// Home the holder may use (repeat for several).
    #[arg(long = "home", value_name = "HOME_ID")]
    homes: Vec<String>,
    /// Administrator: every home, and managing homes.
    #[arg(long)]
    admin: bool,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
    /// Subject (`sub`): who holds the token.
    #[arg(long, default_value = "warmhouse-token")]
    sub: String,
    /// Issuer (`iss`), when the services require one.
    #[arg(long, env = auth::ISSUER_ENV)]
    issuer: Option<String>,
    /// Audience (`aud`), when the services require one.
    #[arg(long, env = auth::AUDIENCE_ENV)]
    audience: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !cli.admin && cli.homes.is_empty() {
        bail!("name at least one --home, or --admin: a token for no home grants nothing");
    }
    if cli.secret.len() < auth::MIN_SECRET_BYTES {
        bail!(
            "the secret is {} bytes; the services refuse secrets under {}",
            cli.secret.len(),
            auth::MIN_SECRET_BYTES
        );
    }
    let ttl = Duration::from_secs(cli.ttl_secs);
    let mut claims = if cli.admin {
        Claims::admin(cli.sub, ttl)
    } else {
        Claims::for_homes(cli.sub, cli.homes, ttl)
    };
    claims.iss = cli.issuer;
    claims.aud = cli.audience.into_iter().collect();
    println!("{}", auth::issue_hs256(&cli.secret, &claims)?);
    Ok(())
}
