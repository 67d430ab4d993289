//! The registry's last "allowed" answers, used only while it cannot answer.
//!
//! Every connect still asks the registry. When it is down, slow or failing,
//! a device whose very same credentials the registry allowed within the
//! grace period (`WARMHOUSE_BROKER_ACCESS_GRACE_SECS`) gets in, so a
//! registry outage does not lock out devices that reconnect (after a broker
//! restart, a network blip). Anything that could have changed the answer
//! forgets the device: a refusal by the registry, and every revocation
//! (`device.disabled`, `device.deleted`, `device.credentials_rotated`, an
//! operator's revoke). A credential never allowed before is refused as
//! without this.
//!
//! Credentials are kept as keyed SHA-256 digests (a random key per process),
//! never as they came: a memory dump does not give out passwords.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};
use warmhouse_device_identity::access::AccessRequest;

/// Cheap to clone; clones share the answers.
#[derive(Clone)]
pub struct LastGoodAnswers {
    inner: Arc<Inner>,
}

struct Inner {
    key: [u8; 32],
    grace: Duration,
    allowed: Mutex<Table>,
}

/// How often expired answers are swept out (a reconnect storm must not
/// sweep the whole table at every connect).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

struct Table {
    /// Device id → credential digest → when the registry last allowed it.
    devices: HashMap<String, HashMap<[u8; 32], Instant>>,
    swept_at: Instant,
}

impl LastGoodAnswers {
    /// With a zero `grace` nothing is remembered: every registry failure
    /// refuses the connect.
    pub fn new(grace: Duration) -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self {
            inner: Arc::new(Inner {
                key,
                grace,
                allowed: Mutex::new(Table {
                    devices: HashMap::new(),
                    swept_at: Instant::now(),
                }),
            }),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // Single inserts and removes: a poisoned lock holds a whole map.
        self.inner
            .allowed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn digest(&self, request: &AccessRequest) -> [u8; 32] {
        let credential = match request {
            AccessRequest::Password { password, .. } => password,
            AccessRequest::Certificate {
                certificate_sha256, ..
            } => certificate_sha256,
        };
        let mut hash = Sha256::new();
        hash.update(self.inner.key);
        hash.update(request.method().as_bytes());
        hash.update([0]);
        hash.update(credential.as_bytes());
        hash.finalize().into()
    }

    /// The registry allowed `request` just now.
    pub fn remember(&self, request: &AccessRequest) {
        if self.inner.grace.is_zero() {
            return;
        }
        let digest = self.digest(request);
        let now = Instant::now();
        let grace = self.inner.grace;
        let mut table = self.table();
        if now.duration_since(table.swept_at) >= SWEEP_EVERY {
            table.devices.retain(|_, credentials| {
                credentials.retain(|_, at| now.duration_since(*at) < grace);
                !credentials.is_empty()
            });
            table.swept_at = now;
        }
        table
            .devices
            .entry(request.device_id().to_string())
            .or_default()
            .insert(digest, now);
    }

    /// Whether the registry allowed these very credentials within the grace
    /// period and nothing made the broker forget the device since.
    pub fn recall(&self, request: &AccessRequest) -> bool {
        let digest = self.digest(request);
        self.table()
            .devices
            .get(request.device_id())
            .and_then(|credentials| credentials.get(&digest))
            .is_some_and(|at| at.elapsed() < self.inner.grace)
    }

    /// Forgets every credential of `device_id` (refused or revoked).
    pub fn forget(&self, device_id: &str) {
        self.table().devices.remove(device_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password(device: &str, password: &str) -> AccessRequest {
        AccessRequest::Password {
            device_id: device.into(),
            password: password.into(),
        }
    }

    fn certificate(device: &str, sha256: &str) -> AccessRequest {
        AccessRequest::Certificate {
            device_id: device.into(),
            certificate_sha256: sha256.into(),
        }
    }

    #[test]
    fn recalls_only_the_same_credentials_of_the_same_device() {
        let answers = LastGoodAnswers::new(Duration::from_secs(60));
        answers.remember(&password("d1", "secret"));
        answers.remember(&certificate("d1", "ab12"));
        assert!(answers.recall(&password("d1", "secret")));
        assert!(answers.recall(&certificate("d1", "ab12")));
        assert!(!answers.recall(&password("d1", "other")));
        assert!(!answers.recall(&password("d2", "secret")));
        assert!(!answers.recall(&certificate("d1", "ab13")));
        // A password that happens to equal a fingerprint is another thing.
        assert!(!answers.recall(&password("d1", "ab12")));
    }

    #[test]
    fn forgetting_a_device_forgets_all_its_credentials() {
        let answers = LastGoodAnswers::new(Duration::from_secs(60));
        answers.remember(&password("d1", "secret"));
        answers.remember(&certificate("d1", "ab12"));
        answers.remember(&password("d2", "secret"));
        answers.forget("d1");
        assert!(!answers.recall(&password("d1", "secret")));
        assert!(!answers.recall(&certificate("d1", "ab12")));
        assert!(answers.recall(&password("d2", "secret")));
    }

    #[test]
    fn answers_expire_and_a_zero_grace_keeps_none() {
        let answers = LastGoodAnswers::new(Duration::from_millis(50));
        answers.remember(&password("d1", "secret"));
        assert!(answers.recall(&password("d1", "secret")));
        std::thread::sleep(Duration::from_millis(80));
        assert!(!answers.recall(&password("d1", "secret")));

        let off = LastGoodAnswers::new(Duration::ZERO);
        off.remember(&password("d1", "secret"));
        assert!(!off.recall(&password("d1", "secret")));
    }
}
