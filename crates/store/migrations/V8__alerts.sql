-- Alerts about failed upgrades (S4-4): where each tenant wants them, the
-- folding state that keeps a flood to a handful of messages, and the outbox
-- every message goes through (retried until delivered; one sender each).

CREATE TABLE alert_targets (
    tenant_id       BIGINT PRIMARY KEY REFERENCES tenants (id),
    webhook_url     TEXT,
    webhook_secret  TEXT,
    emails          TEXT[] NOT NULL DEFAULT '{}',
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Per (tenant, app, target version): when a message was last sent, and
-- the failures folded since, waiting for the next digest.
CREATE TABLE alert_groups (
    tenant_id      BIGINT NOT NULL REFERENCES tenants (id),
    app_id         BIGINT NOT NULL REFERENCES apps (id),
    version        TEXT NOT NULL,
    last_sent_at   TIMESTAMPTZ NOT NULL,
    pending        BIGINT NOT NULL DEFAULT 0,
    pending_codes  JSONB NOT NULL DEFAULT '{}',
    pending_samples JSONB NOT NULL DEFAULT '[]',
    PRIMARY KEY (tenant_id, app_id, version)
);
CREATE INDEX alert_groups_pending ON alert_groups (last_sent_at) WHERE pending > 0;

-- One row per message and destination.
CREATE TABLE alert_outbox (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id        BIGINT NOT NULL REFERENCES tenants (id),
    app_id           BIGINT NOT NULL REFERENCES apps (id),
    version          TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('failure', 'digest')),
    channel          TEXT NOT NULL CHECK (channel IN ('webhook', 'email')),
    destination      TEXT NOT NULL,
    payload          JSONB NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at     TIMESTAMPTZ
);
CREATE INDEX alert_outbox_due ON alert_outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX alert_outbox_tenant ON alert_outbox (tenant_id, created_at DESC);
