-- Presence is ordered by the MQTT connection a status came over: a device
-- that moved to another broker replica must not be marked offline by its
-- old connection's last will arriving after the new connection's "online"
-- (docs/adr/0019-puback-when-safe.md). NULL: the status named no connection.
ALTER TABLE device_views
    ADD COLUMN presence_connected_at TIMESTAMPTZ,
    ADD COLUMN presence_broker TEXT,
    ADD COLUMN presence_connection BIGINT;
