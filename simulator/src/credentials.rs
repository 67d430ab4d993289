//! Per-device credentials (`--credentials FILE`, `--tls-ca FILE`), so
//! simulated devices connect like real ones: with the password or the
//! client certificate the registry issued them.
//!
//! The file is a JSON object from device id to what
//! `POST /api/v1/devices/{id}/credentials` answered (extra fields such as
//! `device_id`, `ca_pem` or `not_after` are ignored), or to file paths:
//!
//! ```json
//! {
//!   "home-0001-dev-01": {"kind": "password", "password": "..."},
//!   "home-0001-dev-02": {"kind": "certificate", "certificate_pem": "-----BEGIN ...", "private_key_pem": "..."},
//!   "home-0001-dev-03": {"kind": "certificate", "certificate_file": "dev-03.pem", "private_key_file": "dev-03.key"}
//! }
//! ```
//!
//! Relative paths are relative to the credentials file. Certificate devices
//! connect over TLS and trust only `--tls-ca` (the platform CA).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
use warmhouse_contracts::ids::DeviceId;

/// How one device proves who it is.
#[derive(Clone, PartialEq, Eq)]
pub enum DeviceCredential {
    /// Username = device id.
    Password(String),
    /// Client certificate and key (PEM).
    Certificate { cert_pem: Vec<u8>, key_pem: Vec<u8> },
}

/// Secrets stay out of logs.
impl std::fmt::Debug for DeviceCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceCredential::Password(_) => f.write_str("Password(<redacted>)"),
            DeviceCredential::Certificate { .. } => f.write_str("Certificate(<redacted>)"),
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Entry {
    Password {
        password: String,
        /// When present it must be the device id (it is the MQTT username).
        #[serde(default)]
        username: Option<String>,
    },
    Certificate {
        #[serde(default)]
        certificate_pem: Option<String>,
        #[serde(default)]
        private_key_pem: Option<String>,
        #[serde(default)]
        certificate_file: Option<PathBuf>,
        #[serde(default)]
        private_key_file: Option<PathBuf>,
    },
}

/// Credentials of a fleet, by device id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    by_device: HashMap<DeviceId, DeviceCredential>,
}

impl Credentials {
    /// Reads a credentials file (see the module docs).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading credentials file {}", path.display()))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::parse(&text, base).with_context(|| format!("in credentials file {}", path.display()))
    }

    /// Parses the JSON text; relative file paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> anyhow::Result<Self> {
        let entries: HashMap<String, Entry> = serde_json::from_str(text)
            .context("expected a JSON object of device id to credentials")?;
        let mut by_device = HashMap::with_capacity(entries.len());
        for (id, entry) in entries {
            let device =
                DeviceId::new(id.as_str()).with_context(|| format!("invalid device id {id:?}"))?;
            let credential = match entry {
                Entry::Password { password, username } => {
                    if username.as_deref().is_some_and(|u| u != id) {
                        bail!("{id}: username must be the device id");
                    }
                    if password.is_empty() {
                        bail!("{id}: empty password");
                    }
                    DeviceCredential::Password(password)
                }
                Entry::Certificate {
                    certificate_pem,
                    private_key_pem,
                    certificate_file,
                    private_key_file,
                } => {
                    let pem = |inline: Option<String>, file: Option<PathBuf>, what: &str| match (
                        inline, file,
                    ) {
                        (Some(text), None) => Ok(text.into_bytes()),
                        (None, Some(file)) => {
                            let file = base.join(file);
                            std::fs::read(&file)
                                .with_context(|| format!("{id}: reading {what} {}", file.display()))
                        }
                        _ => bail!("{id}: give either {what}_pem or {what}_file"),
                    };
                    DeviceCredential::Certificate {
                        cert_pem: pem(certificate_pem, certificate_file, "certificate")?,
                        key_pem: pem(private_key_pem, private_key_file, "private_key")?,
                    }
                }
            };
            by_device.insert(device, credential);
        }
        Ok(Self { by_device })
    }

    pub fn get(&self, device: &DeviceId) -> Option<&DeviceCredential> {
        self.by_device.get(device)
    }

    pub fn len(&self) -> usize {
        self.by_device.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_device.is_empty()
    }

    /// Whether any device connects with a certificate (and so needs TLS).
    pub fn has_certificates(&self) -> bool {
        self.by_device
            .values()
            .any(|c| matches!(c, DeviceCredential::Certificate { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_registry_answers_and_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("d3.pem"), "CERT").unwrap();
        std::fs::write(dir.path().join("d3.key"), "KEY").unwrap();
        let text = r#"{
            "d1": {"kind": "password", "device_id": "d1", "username": "d1", "password": "p1"},
            "d2": {"kind": "certificate", "certificate_pem": "C2", "private_key_pem": "K2", "ca_pem": "CA"},
            "d3": {"kind": "certificate", "certificate_file": "d3.pem", "private_key_file": "d3.key"}
        }"#;
        let creds = Credentials::parse(text, dir.path()).unwrap();
        assert_eq!(creds.len(), 3);
        let id = |s: &str| DeviceId::new(s).unwrap();
        assert_eq!(
            creds.get(&id("d1")),
            Some(&DeviceCredential::Password("p1".into()))
        );
        assert_eq!(
            creds.get(&id("d3")),
            Some(&DeviceCredential::Certificate {
                cert_pem: b"CERT".to_vec(),
                key_pem: b"KEY".to_vec()
            })
        );
        assert!(creds.has_certificates());
        assert!(!format!("{creds:?}").contains("p1"));
    }

    #[test]
    fn refuses_what_cannot_work() {
        let base = Path::new(".");
        for bad in [
            r#"{"a b": {"kind": "password", "password": "p"}}"#,
            r#"{"d": {"kind": "password", "password": ""}}"#,
            r#"{"d": {"kind": "password", "username": "other", "password": "p"}}"#,
            r#"{"d": {"kind": "certificate", "certificate_pem": "C"}}"#,
            r#"{"d": {"kind": "token"}}"#,
            r#"[]"#,
        ] {
            assert!(Credentials::parse(bad, base).is_err(), "{bad}");
        }
    }
}
