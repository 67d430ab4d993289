-- Commands to devices: a durable state machine per command.
-- queued -> sent -> delivered -> acked | failed; any non-terminal -> expired.
CREATE TABLE commands (
    command_id       text PRIMARY KEY,
    device_id        text NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    home_id          text NOT NULL,
    name             text NOT NULL,
    params           jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Client-chosen key: a retried POST with the same key returns the
    -- command it created the first time instead of creating another.
    idempotency_key  text,
    request_hash     text NOT NULL,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'sent', 'delivered', 'acked', 'failed', 'expired')),
    detail           text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    sent_at          timestamptz,
    delivered_at     timestamptz,
    completed_at     timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (device_id, idempotency_key)
);
CREATE INDEX commands_device_created_idx ON commands (device_id, created_at DESC, command_id);
-- The expiry sweep and the redelivery on reconnect look only at open commands.
CREATE INDEX commands_open_expiry_idx ON commands (expires_at)
    WHERE status IN ('queued', 'sent', 'delivered');
CREATE INDEX commands_open_device_idx ON commands (device_id)
    WHERE status IN ('queued', 'sent', 'delivered');

-- Transactional outbox: written in the same transaction as the change it
-- announces, published to Kafka by the relay, deleted once Kafka has it.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    topic       text NOT NULL,
    key         text NOT NULL,
    payload     bytea NOT NULL,
    -- Set for records on device-commands: publishing one marks the command sent.
    command_id  text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The desired half of a device's shadow belongs to the write side: commands
-- change it. The reported half and presence come from the devices (read model).
ALTER TABLE devices
    ADD COLUMN desired jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN desired_version bigint NOT NULL DEFAULT 0;

-- Read model, fed by device-events: what each device last said about itself.
CREATE TABLE device_views (
    device_id            text PRIMARY KEY,
    reported             jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- The device's own timestamp of `reported`; older reports are ignored.
    reported_at          timestamptz,
    online               boolean,
    presence_changed_at  timestamptz,
    last_seen_at         timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
