-- Manifests name their owner (format 2, S1-8), so two tenants publishing
-- the same files get different manifest ids. What only depends on the files
-- (the gateway's download lists and release views) is keyed by the content
-- id instead: the id of the manifest without its owner. A format 1
-- manifest names no owner, so its content id is its id.
ALTER TABLE manifests ADD COLUMN content_id BYTEA CHECK (length(content_id) = 32);
-- The owner the manifest names (NULL for format 1), so answers can say
-- whose release it is without decoding it.
ALTER TABLE manifests ADD COLUMN owner_tenant TEXT;
ALTER TABLE manifests ADD COLUMN owner_app TEXT;
UPDATE manifests SET content_id = id;
-- Writers that do not know content ids (a registry replica still running
-- the previous version during a rolling upgrade) get the format 1 answer.
CREATE FUNCTION manifests_default_content_id() RETURNS trigger AS $$
BEGIN
    NEW.content_id := coalesce(NEW.content_id, NEW.id);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER manifests_default_content_id BEFORE INSERT ON manifests
    FOR EACH ROW EXECUTE FUNCTION manifests_default_content_id();
ALTER TABLE manifests ALTER COLUMN content_id SET NOT NULL;
