-- Garbage collection (ferry-store gc.rs) needs to know how recently a
-- manifest was last prepared or committed (a publish in progress touches
-- it), and how old a tenant's claim on a chunk or file is: nothing younger
-- than the grace period is ever collected.
ALTER TABLE manifests ADD COLUMN touched_at TIMESTAMPTZ NOT NULL DEFAULT now();
ALTER TABLE tenant_chunks ADD COLUMN created_at TIMESTAMPTZ NOT NULL DEFAULT now();
ALTER TABLE tenant_files ADD COLUMN created_at TIMESTAMPTZ NOT NULL DEFAULT now();
-- Finding unreferenced manifests, chunks and files without scanning.
CREATE INDEX releases_manifest ON releases (tenant_id, manifest_id);
CREATE INDEX tenant_chunks_hash ON tenant_chunks (hash);
CREATE INDEX tenant_files_hash ON tenant_files (hash);
