-- Homes group devices; ids are validated by the API (warmhouse_contracts::ids).
CREATE TABLE homes (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    address     text,
    timezone    text NOT NULL DEFAULT 'UTC',
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    id            text PRIMARY KEY,
    -- RESTRICT: deleting a home that still has devices is a conflict, not a cascade.
    home_id       text NOT NULL REFERENCES homes (id) ON DELETE RESTRICT,
    kind          text NOT NULL,
    name          text NOT NULL,
    capabilities  text[] NOT NULL DEFAULT '{}',
    metadata      jsonb NOT NULL DEFAULT '{}'::jsonb,
    status        text NOT NULL DEFAULT 'provisioning'
                  CHECK (status IN ('provisioning', 'active', 'disabled')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Filters are combined with keyset pagination on id, so each index ends in id.
CREATE INDEX devices_home_id_idx ON devices (home_id, id);
CREATE INDEX devices_kind_idx ON devices (kind, id);
CREATE INDEX devices_status_idx ON devices (status, id);
