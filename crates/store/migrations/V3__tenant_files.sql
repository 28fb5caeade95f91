-- Which tenant proved which assembled file: a tenant's release may use a file
-- only once that tenant's own chunks were shown to rebuild it, so nobody can
-- point a release at (or probe for) another tenant's file by its hash.
CREATE TABLE tenant_files (
    tenant_id   BIGINT NOT NULL REFERENCES tenants (id),
    hash        BYTEA NOT NULL REFERENCES files (hash),
    PRIMARY KEY (tenant_id, hash)
);
