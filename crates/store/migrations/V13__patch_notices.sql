-- Gateways learn at once that patches (and compressed files, patches from
-- the empty file) became available: a file list built while they were
-- being made is rebuilt on this notice rather than on its next recheck.
-- One notice per statement; the payload names no file (a gateway rebuilds
-- every list still waiting for patches, which is few and cheap).
CREATE FUNCTION ferry_notify_patches() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ferry_changes', 'patches:made');
    RETURN NULL;
END
$$;

CREATE TRIGGER patches_made_notify AFTER INSERT ON patches
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_notify_patches();
