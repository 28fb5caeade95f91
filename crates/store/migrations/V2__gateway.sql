-- What the access gateway needs: per-tenant rate limits, and change
-- notifications so running gateways drop cached answers within seconds.

CREATE TABLE tenant_limits (
    tenant_id   BIGINT PRIMARY KEY REFERENCES tenants (id),
    per_second  DOUBLE PRECISION NOT NULL CHECK (per_second > 0),
    burst       INTEGER NOT NULL CHECK (burst > 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every change a gateway caches is announced on channel `ferry_changes`,
-- by the database itself, so no writer can forget to: `app:<app id>` when a
-- release is published or the deployed version moves, `key:<key id>` when a
-- key changes (revocation), `limit:<tenant id>` when a limit changes.
-- NOTIFY is delivered on commit, never for rolled-back changes.
CREATE FUNCTION ferry_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'apps' THEN
        PERFORM pg_notify('ferry_changes', 'app:' || NEW.id);
    ELSIF TG_TABLE_NAME = 'releases' THEN
        PERFORM pg_notify('ferry_changes', 'app:' || NEW.app_id);
    ELSIF TG_TABLE_NAME = 'api_keys' THEN
        PERFORM pg_notify('ferry_changes', 'key:' || NEW.id);
    ELSIF TG_TABLE_NAME = 'tenant_limits' THEN
        PERFORM pg_notify('ferry_changes', 'limit:' || NEW.tenant_id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER apps_notify AFTER UPDATE ON apps
    FOR EACH ROW EXECUTE FUNCTION ferry_notify_change();
CREATE TRIGGER releases_notify AFTER INSERT ON releases
    FOR EACH ROW EXECUTE FUNCTION ferry_notify_change();
CREATE TRIGGER api_keys_notify AFTER UPDATE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION ferry_notify_change();
CREATE TRIGGER tenant_limits_notify AFTER INSERT OR UPDATE ON tenant_limits
    FOR EACH ROW EXECUTE FUNCTION ferry_notify_change();
