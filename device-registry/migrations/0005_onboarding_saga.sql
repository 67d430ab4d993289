-- Device onboarding saga: one row per run, one row per step event. The log
-- is what a restarted registry reads to compensate a run that a crash cut
-- short.
CREATE TABLE onboarding_sagas (
    saga_id     text PRIMARY KEY,
    device_id   text NOT NULL,
    home_id     text NOT NULL,
    -- The request, without secrets (credentials are only ever in the answer).
    request     jsonb NOT NULL,
    -- running -> completed, or running -> compensating -> compensated | compensation_failed
    state       text NOT NULL DEFAULT 'running'
                CHECK (state IN ('running', 'completed', 'compensating', 'compensated', 'compensation_failed')),
    -- The step being done (or last done), by name.
    step        text,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX onboarding_sagas_open_idx ON onboarding_sagas (created_at)
    WHERE state IN ('running', 'compensating');

CREATE TABLE onboarding_saga_steps (
    id        bigserial PRIMARY KEY,
    saga_id   text NOT NULL REFERENCES onboarding_sagas (saga_id) ON DELETE CASCADE,
    step      text NOT NULL,
    -- started, done, failed, compensated, compensation_failed
    outcome   text NOT NULL,
    detail    text,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX onboarding_saga_steps_saga_idx ON onboarding_saga_steps (saga_id, id);

-- Which saga created a device: its compensation deletes only its own device.
ALTER TABLE devices ADD COLUMN onboarded_by text;
