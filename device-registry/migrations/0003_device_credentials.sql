-- Credentials issued to devices (docs/adr/0010-device-identity.md). No
-- secret is stored: a client certificate is kept as the SHA-256 of its DER
-- (the broker reports the same hash for a certificate connection), a
-- password as its Argon2id PHC string. Both are handed to the device once,
-- in the answer that issues them.
CREATE TABLE device_credentials (
    id                  bigserial PRIMARY KEY,
    -- A deleted device takes its credentials with it.
    device_id           text NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    kind                text NOT NULL CHECK (kind IN ('certificate', 'password')),
    certificate_sha256  text UNIQUE CHECK (certificate_sha256 ~ '^[0-9a-f]{64}$'),
    password_hash       text,
    -- End of the certificate's validity (the broker checks it too).
    not_after           timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    -- Set when replaced by a newer credential of the same kind or revoked;
    -- kept for audit.
    revoked_at          timestamptz,
    CHECK ((kind = 'certificate') = (certificate_sha256 IS NOT NULL AND not_after IS NOT NULL)),
    CHECK ((kind = 'password') = (password_hash IS NOT NULL))
);

-- One current credential of each kind per device: issuing another one
-- replaces it (rotation), so a leaked old one stops working.
CREATE UNIQUE INDEX device_credentials_current_idx
    ON device_credentials (device_id, kind) WHERE revoked_at IS NULL;
