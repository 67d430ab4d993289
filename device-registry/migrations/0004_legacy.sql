-- Strangler fig (docs/adr/0013-legacy-monolith-strangler-fig.md): which
-- device the import made of each row of the legacy heating monolith. The
-- legacy /api/heating/{id} endpoints resolve their numeric ids here, and a
-- second import skips what is mapped already.
CREATE TABLE legacy_heating_systems (
    legacy_id                     bigint PRIMARY KEY CHECK (legacy_id > 0),
    -- Deleting the device forgets the mapping: the legacy id then answers 404.
    device_id                     text NOT NULL UNIQUE REFERENCES devices (id) ON DELETE CASCADE,
    -- heating_systems.current_temperature at import: what the legacy API
    -- answers until the device's own telemetry arrives.
    imported_current_temperature  double precision,
    imported_at                   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE legacy_temperature_sensors (
    legacy_id                     bigint PRIMARY KEY CHECK (legacy_id > 0),
    device_id                     text NOT NULL UNIQUE REFERENCES devices (id) ON DELETE CASCADE,
    imported_current_temperature  double precision,
    -- temperature_sensors.last_updated, read as a time in the monolith's zone.
    imported_last_updated         timestamptz,
    imported_at                   timestamptz NOT NULL DEFAULT now()
);
