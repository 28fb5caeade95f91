-- Upgrade outcomes reported by apps (S4-3), the latest failure of each
-- device (S4-5), and which client versions a release still works with
-- (required updates).

-- Every report, successes included. The primary key makes a retried report
-- (same client-chosen id) a no-op; `seq` orders reports; the alert folder
-- marks each failure `folded` once it is part of a message (a flag rather
-- than a cursor: reports from several gateways may commit out of `seq`
-- order). Retention deletes by `received_at` (FERRY_REPORT_RETENTION_DAYS).
CREATE TABLE reports (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY,
    tenant_id      BIGINT NOT NULL REFERENCES tenants (id),
    app_id         BIGINT NOT NULL REFERENCES apps (id),
    report_id      TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    from_version   TEXT NOT NULL,
    to_version     TEXT NOT NULL,
    result         TEXT NOT NULL CHECK (result IN ('success', 'failure', 'rolled_back')),
    error_code     TEXT,
    error_message  TEXT,
    duration_ms    BIGINT CHECK (duration_ms >= 0),
    platform       TEXT,
    received_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    folded         BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, report_id)
);
-- The dashboard's questions: an app's reports over time, per target
-- version and result, and the latest failures; the alert folder's scan;
-- retention.
CREATE INDEX reports_app_time ON reports (app_id, received_at DESC);
CREATE INDEX reports_app_target ON reports (app_id, to_version, result, received_at);
CREATE INDEX reports_unfolded ON reports (seq) WHERE result <> 'success' AND NOT folded;
CREATE INDEX reports_received ON reports (received_at);

-- The latest failure (or rollback) of a device, until a later success of
-- that device clears it: what the device's next check shows.
CREATE TABLE device_failures (
    app_id         BIGINT NOT NULL REFERENCES apps (id),
    device_id      TEXT NOT NULL,
    version        TEXT NOT NULL,
    result         TEXT NOT NULL CHECK (result IN ('failure', 'rolled_back')),
    error_code     TEXT,
    error_message  TEXT,
    at             TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (app_id, device_id)
);

-- A semver requirement (e.g. `>=2.4.0, <2.5.0`) naming the client versions
-- that still work with a release: they are not required to update. Not
-- part of the content (the manifest), so it may be set at deploy time.
ALTER TABLE releases ADD COLUMN compatible TEXT;

-- Setting it is a change gateways must see.
CREATE TRIGGER releases_updated_notify AFTER UPDATE OF compatible ON releases
    FOR EACH ROW EXECUTE FUNCTION ferry_notify_change();
