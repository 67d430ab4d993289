//! `warmhouse-identity`: bootstrap the platform CA and the broker's
//! certificates (operators, the local stack). Devices get theirs from the
//! registry (`POST /api/v1/devices/{id}/credentials`).
//!
//! ```sh
//! warmhouse-identity ca --cert ca.pem --key ca.key
//! warmhouse-identity server-cert --ca-cert ca.pem --ca-key ca.key \
//!     --name broker.example.com --name 10.0.0.5 --cert broker.pem --key broker.key
//! warmhouse-identity device-cert --ca-cert ca.pem --ca-key ca.key \
//!     --device-id warmhouse-broker-probe --cert probe.pem --key probe.key
//! warmhouse-identity inspect --cert broker.pem
//! ```
//!
//! Output files must not exist yet; private keys are written with mode 0600.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use warmhouse_contracts::ids::DeviceId;
use warmhouse_device_identity::{inspect_certificate, IssuedCertificate, PlatformCa};

#[derive(Parser)]
#[command(
    name = "warmhouse-identity",
    about = "Create the Warmhouse platform CA and issue broker and device certificates"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct CaFiles {
    /// Platform CA certificate (PEM).
    #[arg(long, env = "WARMHOUSE_CA_CERT")]
    ca_cert: PathBuf,
    /// Platform CA private key (PEM).
    #[arg(long, env = "WARMHOUSE_CA_KEY")]
    ca_key: PathBuf,
}

#[derive(clap::Args)]
struct Output {
    /// Where to write the certificate (PEM); must not exist.
    #[arg(long)]
    cert: PathBuf,
    /// Where to write the private key (PEM, mode 0600); must not exist.
    #[arg(long)]
    key: PathBuf,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    days: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a new platform CA (ECDSA P-256, path length 0).
    Ca {
        #[command(flatten)]
        out: Output,
        /// Common name of the CA.
        #[arg(long, default_value = warmhouse_device_identity::DEFAULT_CA_NAME)]
        name: String,
    },
    /// Issue a server certificate for the broker's TLS listeners.
    ServerCert {
        #[command(flatten)]
        ca: CaFiles,
        #[command(flatten)]
        out: Output,
        /// DNS name or IP address devices connect to (repeat for several).
        #[arg(long = "name", required = true)]
        names: Vec<String>,
    },
    /// Issue a device client certificate (subject O = CN = device id).
    DeviceCert {
        #[command(flatten)]
        ca: CaFiles,
        #[command(flatten)]
        out: Output,
        #[arg(long)]
        device_id: String,
    },
    /// Print what a certificate says about its subject.
    Inspect {
        #[arg(long)]
        cert: PathBuf,
    },
}

fn days(n: u64) -> Duration {
    Duration::from_secs(n.saturating_mul(24 * 3600))
}

fn load(ca: &CaFiles) -> anyhow::Result<PlatformCa> {
    PlatformCa::load(&ca.ca_cert, &ca.ca_key)
}

fn write(issued: &IssuedCertificate, cert: &Path, key: &Path) -> anyhow::Result<()> {
    issued.save(cert, key)?;
    println!(
        "wrote {} (sha256 {}) and {}",
        cert.display(),
        issued.sha256,
        key.display()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ca { out, name } => {
            let ca = PlatformCa::generate(&name, days(out.days))?;
            ca.save(&out.cert, &out.key)?;
            println!("wrote {} and {}", out.cert.display(), out.key.display());
        }
        Command::ServerCert { ca, out, names } => {
            let issued = load(&ca)?.issue_server_certificate(&names, days(out.days))?;
            write(&issued, &out.cert, &out.key)?;
        }
        Command::DeviceCert { ca, out, device_id } => {
            let device_id = DeviceId::new(device_id).context("invalid --device-id")?;
            let issued = load(&ca)?.issue_device_certificate(&device_id, days(out.days))?;
            write(&issued, &out.cert, &out.key)?;
        }
        Command::Inspect { cert } => {
            let text = std::fs::read_to_string(&cert)
                .with_context(|| format!("reading {}", cert.display()))?;
            let info = inspect_certificate(&text)?;
            println!("organizations: {:?}", info.organizations);
            println!("common names:  {:?}", info.common_names);
            println!(
                "ca: {}  clientAuth: {}  serverAuth: {}",
                info.is_ca, info.client_auth, info.server_auth
            );
            println!("not after:     {}", info.not_after);
            println!("sha256:        {}", info.sha256);
        }
    }
    Ok(())
}
