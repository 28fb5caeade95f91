-- A new app must become visible at once, like every other change: a
-- gateway that answered "not found" for it remembers that answer per
-- tenant, so creating an app announces `tenant:<tenant id>`. App changes
-- now name the tenant too (`app:<app id>:<tenant id>`), so a gateway finds
-- the one cache entry to correct without scanning them all.
CREATE OR REPLACE FUNCTION ferry_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'apps' AND TG_OP = 'INSERT' THEN
        PERFORM pg_notify('ferry_changes', 'tenant:' || NEW.tenant_id);
    ELSIF TG_TABLE_NAME = 'apps' THEN
        PERFORM pg_notify('ferry_changes', 'app:' || NEW.id || ':' || NEW.tenant_id);
    ELSIF TG_TABLE_NAME = 'releases' THEN
        PERFORM pg_notify('ferry_changes', 'app:' || NEW.app_id || ':' || NEW.tenant_id);
    ELSIF TG_TABLE_NAME = 'api_keys' THEN
        PERFORM pg_notify('ferry_changes', 'key:' || NEW.id);
    ELSIF TG_TABLE_NAME = 'tenant_limits' THEN
        PERFORM pg_notify('ferry_changes', 'limit:' || NEW.tenant_id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER apps_created_notify AFTER INSERT ON apps
    FOR EACH ROW EXECUTE FUNCTION ferry_notify_change();
