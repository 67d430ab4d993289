//! Device identity: how a Warmhouse device proves who it is to the broker.
//!
//! * [`PlatformCa`]: the platform's certificate authority (PEM in, PEM out).
//!   It signs
//!   * device client certificates ([`PlatformCa::issue_device_certificate`]):
//!     subject `CN = O = device id`, extended key usage `clientAuth`. The
//!     broker's mTLS listener takes the tenant from the first `O`
//!     (rumqttd's `validate-tenant-prefix`), so a device may only publish and
//!     subscribe under `/tenants/{device_id}/`;
//!   * server certificates for the broker ([`PlatformCa::issue_server_certificate`]).
//! * [`password`]: random device passwords (for devices that cannot do TLS)
//!   and their Argon2id hashes as PHC strings; only hashes are stored.
//! * [`access`]: the question the broker asks the registry when a device
//!   connects (`POST /internal/v1/device-access`) and its answer.
//! * [`certificate_sha256`] / [`inspect_certificate`]: the fingerprint the
//!   registry stores for an issued certificate, and what a PEM certificate
//!   says about its subject, for checks and tests.
//!
//! See docs/adr/0010-device-identity.md for the design.

pub mod access;
pub mod password;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use warmhouse_contracts::ids::DeviceId;

/// Default lifetime of a device certificate. Devices are re-issued
/// certificates through the registry; a year bounds how long a leaked key
/// is useful even when nobody notices.
pub const DEFAULT_DEVICE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default lifetime of a broker server certificate.
pub const DEFAULT_SERVER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default lifetime of a generated platform CA.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Common name of a generated platform CA.
pub const DEFAULT_CA_NAME: &str = "Warmhouse platform CA";
/// Certificates start this long before "now", so a device whose clock is
/// a little behind still accepts a fresh certificate.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The platform certificate authority: its certificate (PEM) and signing key.
pub struct PlatformCa {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A freshly issued certificate with its private key (both PEM). The key
/// exists only here: hand it to the device once and drop it.
#[derive(Clone)]
pub struct IssuedCertificate {
    pub cert_pem: String,
    pub key_pem: String,
    /// SHA-256 of the certificate's DER, lowercase hex: what the registry
    /// stores and the broker reports for a certificate connection.
    pub sha256: String,
    pub not_after: OffsetDateTime,
}

impl IssuedCertificate {
    /// Writes the certificate and the key (mode 0600 on Unix) as new PEM
    /// files.
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> anyhow::Result<()> {
        write_new_file(key_path, self.key_pem.as_bytes(), true)?;
        write_new_file(cert_path, self.cert_pem.as_bytes(), false)
    }
}

/// Keys stay out of logs and panics.
impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("sha256", &self.sha256)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for PlatformCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformCa").finish_non_exhaustive()
    }
}

impl PlatformCa {
    /// A new self-signed CA (ECDSA P-256) that may sign only end-entity
    /// certificates (path length 0).
    pub fn generate(common_name: &str, validity: Duration) -> anyhow::Result<Self> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .context("building CA certificate parameters")?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        name.push(DnType::OrganizationName, "Warmhouse");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, validity)?;
        let cert = params
            .self_signed(&key)
            .context("self-signing the CA certificate")?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem,
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA from its certificate and private key (PEM, PKCS#8). Refuses a
    /// key that does not belong to the certificate, or a certificate that is
    /// not a CA: either would issue certificates nobody can verify.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        let key = KeyPair::from_pem(key_pem).context("parsing the CA private key (PEM)")?;
        let der = first_certificate_der(cert_pem).context("parsing the CA certificate")?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|err| anyhow::anyhow!("parsing the CA certificate: {err}"))?;
        if cert.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            bail!("the CA private key does not belong to the CA certificate");
        }
        if !cert.is_ca() {
            bail!("the CA certificate is not a CA (basicConstraints CA:TRUE missing)");
        }
        let issuer = Issuer::from_ca_cert_der(&der.clone().into(), key)
            .context("using the CA certificate as issuer")?;
        let key_pem = issuer.key().serialize_pem();
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key_pem,
            issuer,
        })
    }

    /// Reads the CA from two PEM files.
    pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Self> {
        let cert = fs::read_to_string(cert_path)
            .with_context(|| format!("reading CA certificate {}", cert_path.display()))?;
        let key = fs::read_to_string(key_path)
            .with_context(|| format!("reading CA key {}", key_path.display()))?;
        Self::from_pem(&cert, &key).with_context(|| {
            format!(
                "loading the CA from {} and {}",
                cert_path.display(),
                key_path.display()
            )
        })
    }

    /// Writes the certificate and the key (mode 0600 on Unix) as PEM files.
    /// Refuses to overwrite an existing file: replacing a CA silently would
    /// orphan every certificate it issued.
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> anyhow::Result<()> {
        write_new_file(key_path, self.key_pem.as_bytes(), true)?;
        write_new_file(cert_path, self.cert_pem.as_bytes(), false)
    }

    /// The CA certificate (PEM): what the broker and devices trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (PEM, PKCS#8).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A client certificate for `device_id`: subject `CN = O = device id`
    /// (rumqttd takes the tenant from the first `O`), key usage
    /// digitalSignature, extended key usage clientAuth only, so it cannot
    /// serve as a server certificate. Fresh ECDSA P-256 key.
    pub fn issue_device_certificate(
        &self,
        device_id: &DeviceId,
        validity: Duration,
    ) -> anyhow::Result<IssuedCertificate> {
        let mut params = CertificateParams::new(Vec::<String>::new())
            .context("building device certificate parameters")?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, device_id.as_str());
        name.push(DnType::OrganizationName, device_id.as_str());
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, validity)
            .with_context(|| format!("issuing a certificate for device {device_id}"))
    }

    /// A server certificate for the broker, valid for `names` (DNS names or
    /// IP addresses, at least one; the first is also the CN), extended key
    /// usage serverAuth.
    pub fn issue_server_certificate(
        &self,
        names: &[String],
        validity: Duration,
    ) -> anyhow::Result<IssuedCertificate> {
        let Some(first) = names.first() else {
            bail!("a server certificate needs at least one DNS name or IP address");
        };
        let mut params = CertificateParams::new(names.to_vec())
            .with_context(|| format!("invalid server names {names:?}"))?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, first.as_str());
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, validity)
            .with_context(|| format!("issuing a server certificate for {names:?}"))
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        validity: Duration,
    ) -> anyhow::Result<IssuedCertificate> {
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let not_after = set_validity(&mut params, validity)?;
        let key = KeyPair::generate().context("generating a key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing the certificate")?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            sha256: certificate_sha256(cert.der()),
            not_after,
        })
    }
}

/// SHA-256 of a certificate's DER, lowercase hex.
pub fn certificate_sha256(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

/// What a certificate says about itself (for checks, tests and operators).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Subject organisations in order; the first is the broker tenant.
    pub organizations: Vec<String>,
    pub common_names: Vec<String>,
    pub is_ca: bool,
    pub client_auth: bool,
    pub server_auth: bool,
    pub not_after: OffsetDateTime,
    pub sha256: String,
}

/// Parses the first certificate of a PEM text.
pub fn inspect_certificate(cert_pem: &str) -> anyhow::Result<CertificateInfo> {
    let der = first_certificate_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|err| anyhow::anyhow!("parsing the certificate: {err}"))?;
    let strings = |iter: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        iter.filter_map(|attr| attr.as_str().ok().map(str::to_string))
            .collect::<Vec<_>>()
    };
    let organizations = strings(&mut cert.subject().iter_organization());
    let common_names = strings(&mut cert.subject().iter_common_name());
    let eku = cert
        .extended_key_usage()
        .map_err(|err| anyhow::anyhow!("reading extended key usage: {err}"))?;
    let (client_auth, server_auth) = eku
        .map(|e| (e.value.client_auth, e.value.server_auth))
        .unwrap_or((false, false));
    Ok(CertificateInfo {
        organizations,
        common_names,
        is_ca: cert.is_ca(),
        client_auth,
        server_auth,
        not_after: cert.validity().not_after.to_datetime(),
        sha256: certificate_sha256(&der),
    })
}

/// The DER of the first `CERTIFICATE` block of a PEM text.
pub fn first_certificate_der(pem_text: &str) -> anyhow::Result<Vec<u8>> {
    for pem in x509_parser::pem::Pem::iter_from_buffer(pem_text.as_bytes()) {
        let pem = pem.map_err(|err| anyhow::anyhow!("reading PEM: {err}"))?;
        if pem.label == "CERTIFICATE" {
            return Ok(pem.contents);
        }
    }
    bail!("no CERTIFICATE block in the PEM text")
}

fn set_validity(
    params: &mut CertificateParams,
    validity: Duration,
) -> anyhow::Result<OffsetDateTime> {
    if validity.is_zero() {
        bail!("a certificate's validity must be longer than zero");
    }
    let now = OffsetDateTime::now_utc();
    let not_after = now
        .checked_add(time::Duration::try_from(validity).context("validity out of range")?)
        .context("validity out of range")?;
    params.not_before = now - CLOCK_SKEW;
    params.not_after = not_after;
    Ok(not_after)
}

/// 16 random bytes (RFC 5280 allows up to 20; CA/B asks for 64 random bits
/// at least), first bit cleared so the DER integer stays positive.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    // A leading zero byte would be dropped by DER; keep the length stable.
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a file that must not exist yet (mode 0600 on Unix when
/// `private`), and syncs it.
pub fn write_new_file(path: &Path, contents: &[u8], private: bool) -> anyhow::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> PlatformCa {
        PlatformCa::generate("test CA", Duration::from_secs(3600)).unwrap()
    }

    #[test]
    fn device_certificate_names_the_device_in_o_and_cn() {
        let ca = ca();
        let device = DeviceId::new("home-0001-dev-01").unwrap();
        let issued = ca
            .issue_device_certificate(&device, Duration::from_secs(600))
            .unwrap();
        let info = inspect_certificate(&issued.cert_pem).unwrap();
        assert_eq!(info.organizations, vec!["home-0001-dev-01".to_string()]);
        assert_eq!(info.common_names, vec!["home-0001-dev-01".to_string()]);
        assert!(info.client_auth && !info.server_auth && !info.is_ca);
        assert_eq!(info.sha256, issued.sha256);
        assert_eq!(info.sha256.len(), 64);
        let lifetime = info.not_after - OffsetDateTime::now_utc();
        assert!(
            lifetime <= time::Duration::seconds(600) && lifetime > time::Duration::seconds(500),
            "{lifetime}"
        );
        assert!(issued.key_pem.contains("PRIVATE KEY"));
        // The key is never in Debug output.
        assert!(!format!("{issued:?}").contains("PRIVATE"));
    }

    #[test]
    fn device_certificate_is_signed_by_the_ca() {
        let ca = ca();
        let device = DeviceId::new("d1").unwrap();
        let issued = ca
            .issue_device_certificate(&device, Duration::from_secs(600))
            .unwrap();
        let ca_der = first_certificate_der(ca.cert_pem()).unwrap();
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let der = first_certificate_der(&issued.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        // Another CA's key does not verify it.
        let other = PlatformCa::generate("other", Duration::from_secs(3600)).unwrap();
        let other_der = first_certificate_der(other.cert_pem()).unwrap();
        let (_, other_cert) = x509_parser::parse_x509_certificate(&other_der).unwrap();
        assert!(cert
            .verify_signature(Some(other_cert.public_key()))
            .is_err());
    }

    #[test]
    fn every_certificate_is_distinct() {
        let ca = ca();
        let device = DeviceId::new("d1").unwrap();
        let a = ca
            .issue_device_certificate(&device, Duration::from_secs(60))
            .unwrap();
        let b = ca
            .issue_device_certificate(&device, Duration::from_secs(60))
            .unwrap();
        assert_ne!(a.sha256, b.sha256);
        assert_ne!(a.key_pem, b.key_pem);
    }

    #[test]
    fn server_certificate_covers_its_names() {
        let ca = ca();
        let names = vec!["broker.local".to_string(), "127.0.0.1".to_string()];
        let issued = ca
            .issue_server_certificate(&names, Duration::from_secs(600))
            .unwrap();
        let info = inspect_certificate(&issued.cert_pem).unwrap();
        assert!(info.server_auth && !info.client_auth);
        assert_eq!(info.common_names, vec!["broker.local".to_string()]);
        let der = first_certificate_der(&issued.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 2);
        assert!(ca
            .issue_server_certificate(&[], Duration::from_secs(1))
            .is_err());
    }

    #[test]
    fn ca_round_trips_through_pem_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        let ca = ca();
        ca.save(&cert_path, &key_path).unwrap();
        // Never overwrites.
        assert!(ca.save(&cert_path, &key_path).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&key_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = PlatformCa::load(&cert_path, &key_path).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        // What the loaded CA issues verifies against the original certificate.
        let issued = loaded
            .issue_device_certificate(&DeviceId::new("d").unwrap(), Duration::from_secs(60))
            .unwrap();
        let ca_der = first_certificate_der(ca.cert_pem()).unwrap();
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let der = first_certificate_der(&issued.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    }

    #[test]
    fn refuses_a_key_of_another_ca_and_a_leaf_as_ca() {
        let a = ca();
        let b = ca();
        let err = PlatformCa::from_pem(a.cert_pem(), b.key_pem()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err:#}");
        let leaf = a
            .issue_device_certificate(&DeviceId::new("d").unwrap(), Duration::from_secs(60))
            .unwrap();
        let err = PlatformCa::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
        assert!(err.to_string().contains("not a CA"), "{err:#}");
        assert!(PlatformCa::from_pem("garbage", a.key_pem()).is_err());
        assert!(PlatformCa::from_pem(a.cert_pem(), "garbage").is_err());
    }

    #[test]
    fn zero_validity_is_refused() {
        let ca = ca();
        assert!(ca
            .issue_device_certificate(&DeviceId::new("d").unwrap(), Duration::ZERO)
            .is_err());
    }
}
