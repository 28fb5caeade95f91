-- The operator dashboard (S4-6): who may see it, their sessions, and what
-- it reads, kept small enough to render at once over millions of reports.

-- A signed-in browser. Only BLAKE3 of the cookie's token is stored; a
-- revoked key ends its sessions (the lookup joins the live key).
CREATE TABLE dashboard_sessions (
    token_hash  BYTEA PRIMARY KEY CHECK (length(token_hash) = 32),
    key_id      TEXT NOT NULL REFERENCES api_keys (id),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at);

-- Reports counted per app, target version, UTC hour (whatever a session's
-- TimeZone) and result: the charts and
-- rollout failure rates read these, never the raw reports.
CREATE TABLE report_counts (
    app_id      BIGINT NOT NULL REFERENCES apps (id),
    to_version  TEXT NOT NULL,
    hour        TIMESTAMPTZ NOT NULL,
    result      TEXT NOT NULL CHECK (result IN ('success', 'failure', 'rolled_back')),
    reports     BIGINT NOT NULL,
    PRIMARY KEY (app_id, to_version, hour, result)
);
CREATE INDEX report_counts_hour ON report_counts (hour);

-- The version each device runs, one row per device: a device that checks a
-- thousand times is one device. Written by gateways' check census (flushed
-- in batches, never once per check) and by success reports.
CREATE TABLE devices (
    app_id     BIGINT NOT NULL REFERENCES apps (id),
    device_id  TEXT NOT NULL,
    version    TEXT NOT NULL,
    seen_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (app_id, device_id)
);
CREATE INDEX devices_app_version ON devices (app_id, version);
CREATE INDEX devices_seen ON devices (seen_at);

-- The most recent failures of an app, for its page.
CREATE INDEX reports_app_failures ON reports (app_id, seq DESC) WHERE result <> 'success';
CREATE INDEX alert_outbox_app ON alert_outbox (app_id, created_at DESC);

-- Every batch of reports updates the counts and the devices' versions in
-- the same transaction, and tells dashboards which apps moved. SECURITY
-- DEFINER: the gateways' reports role needs no rights on these tables.
CREATE FUNCTION ferry_reports_inserted() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO report_counts AS c (app_id, to_version, hour, result, reports)
        SELECT app_id, to_version, date_bin('1 hour', received_at, TIMESTAMPTZ '2000-01-01 00:00:00+00'), result, count(*)
        FROM new_reports GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (app_id, to_version, hour, result) DO UPDATE SET reports = c.reports + EXCLUDED.reports;
    INSERT INTO devices AS d (app_id, device_id, version, seen_at)
        SELECT DISTINCT ON (app_id, device_id) app_id, device_id, to_version, received_at
        FROM new_reports WHERE result = 'success' ORDER BY app_id, device_id, seq DESC
        ON CONFLICT (app_id, device_id) DO UPDATE SET version = EXCLUDED.version, seen_at = EXCLUDED.seen_at
        WHERE d.seen_at <= EXCLUDED.seen_at;
    PERFORM pg_notify('ferry_reports', tenant_id || ':' || app_id || ':' ||
                      count(*) FILTER (WHERE result <> 'success'))
        FROM new_reports GROUP BY tenant_id, app_id;
    RETURN NULL;
END $$;

CREATE TRIGGER reports_inserted AFTER INSERT ON reports
    REFERENCING NEW TABLE AS new_reports
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_reports_inserted();

-- Reports stored before this migration.
INSERT INTO report_counts (app_id, to_version, hour, result, reports)
    SELECT app_id, to_version, date_bin('1 hour', received_at, TIMESTAMPTZ '2000-01-01 00:00:00+00'), result, count(*)
    FROM reports GROUP BY 1, 2, 3, 4;
INSERT INTO devices (app_id, device_id, version, seen_at)
    SELECT DISTINCT ON (app_id, device_id) app_id, device_id, to_version, received_at
    FROM reports WHERE result = 'success' ORDER BY app_id, device_id, seq DESC;

-- Dashboard keys: `admin` sees every tenant and belongs to none; `operator`
-- sees its own tenant only. Gateways and the registry's gRPC API look keys
-- up joined to their tenant and by role, so neither kind opens them. Last
-- in this migration: the ACCESS EXCLUSIVE lock on api_keys is held from
-- here to the commit only, not through the backfill above.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('agent', 'client', 'admin', 'operator'));
ALTER TABLE api_keys ALTER COLUMN tenant_id DROP NOT NULL;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_admin_has_no_tenant
    CHECK ((role = 'admin') = (tenant_id IS NULL));
