//! The SQL of device credentials: the `device_credentials` table. Only
//! hashes are stored (a certificate's SHA-256, a password's Argon2id).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

/// The `device_credentials` table.
pub struct Credentials;

impl Credentials {
    /// Revokes the device's current credential of `kind`; returns how many.
    pub async fn revoke_kind(
        conn: &mut PgConnection,
        device_id: &str,
        kind: &str,
    ) -> sqlx::Result<u64> {
        let done = sqlx::query(
            "UPDATE device_credentials SET revoked_at = now() \
             WHERE device_id = $1 AND kind = $2 AND revoked_at IS NULL",
        )
        .bind(device_id)
        .bind(kind)
        .execute(conn)
        .await?;
        Ok(done.rows_affected())
    }

    /// Revokes every current credential of the device; returns how many.
    pub async fn revoke_all(conn: &mut PgConnection, device_id: &str) -> sqlx::Result<u64> {
        let done = sqlx::query(
            "UPDATE device_credentials SET revoked_at = now() \
             WHERE device_id = $1 AND revoked_at IS NULL",
        )
        .bind(device_id)
        .execute(conn)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn insert(
        conn: &mut PgConnection,
        device_id: &str,
        kind: &str,
        certificate_sha256: Option<&str>,
        password_hash: Option<&str>,
        not_after: Option<DateTime<Utc>>,
    ) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO device_credentials (device_id, kind, certificate_sha256, password_hash, not_after) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(device_id)
        .bind(kind)
        .bind(certificate_sha256)
        .bind(password_hash)
        .bind(not_after)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// The PHC string of the device's current password, if it has one.
    pub async fn current_password_hash(
        pool: &PgPool,
        device_id: &str,
    ) -> sqlx::Result<Option<String>> {
        sqlx::query_scalar(
            "SELECT password_hash FROM device_credentials \
             WHERE device_id = $1 AND kind = 'password' AND revoked_at IS NULL",
        )
        .bind(device_id)
        .fetch_optional(pool)
        .await
    }

    /// Whether the certificate with this SHA-256 (any case) is a current,
    /// unexpired credential of the device.
    pub async fn certificate_is_current(
        pool: &PgPool,
        device_id: &str,
        certificate_sha256: &str,
    ) -> sqlx::Result<bool> {
        let found = sqlx::query(
            "SELECT 1 FROM device_credentials WHERE device_id = $1 AND kind = 'certificate' \
             AND certificate_sha256 = $2 AND revoked_at IS NULL AND not_after > now()",
        )
        .bind(device_id)
        .bind(certificate_sha256.to_ascii_lowercase())
        .fetch_optional(pool)
        .await?;
        Ok(found.is_some())
    }
}
