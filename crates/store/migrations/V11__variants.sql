-- Variants and download locations (issue 12).
--
-- `publisher` keys belong to no single tenant: the vendor's build pipeline
-- publishes (and deploys) for exactly the tenants in `key_tenants`, and
-- what is missing is answered across that set, since the holder knows all
-- of their content. `agent` keys keep their one tenant.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_admin_has_no_tenant;
ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('agent', 'client', 'admin', 'operator', 'publisher'));
ALTER TABLE api_keys ADD CONSTRAINT api_keys_tenant_by_role
    CHECK ((role IN ('admin', 'publisher')) = (tenant_id IS NULL));

CREATE TABLE key_tenants (
    key_id     TEXT NOT NULL REFERENCES api_keys (id),
    tenant_id  BIGINT NOT NULL REFERENCES tenants (id),
    PRIMARY KEY (key_id, tenant_id)
);
CREATE INDEX key_tenants_tenant ON key_tenants (tenant_id);

-- Download locations (S1-9): a bucket, a key prefix inside it, and the
-- endpoint phones reach it by (NULL: the registry's public endpoint). A
-- tenant placed on one has its files assembled there; each release
-- remembers where its files are (NULL: the registry's own bucket), so
-- moving a tenant changes where new releases go and never breaks the
-- links of releases already published.
CREATE TABLE locations (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bucket           TEXT NOT NULL,
    prefix           TEXT NOT NULL DEFAULT '',
    public_endpoint  TEXT NOT NULL DEFAULT '',
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (bucket, prefix, public_endpoint)
);
ALTER TABLE tenants ADD COLUMN location_id BIGINT REFERENCES locations (id);
ALTER TABLE releases ADD COLUMN location_id BIGINT REFERENCES locations (id);

-- Files assembled at a location other than the registry's bucket, and
-- which tenant proved it can rebuild them there: the same two facts as
-- `files` and `tenant_files`, per location.
CREATE TABLE location_files (
    location_id  BIGINT NOT NULL REFERENCES locations (id),
    tenant_id    BIGINT NOT NULL REFERENCES tenants (id),
    hash         BYTEA NOT NULL CHECK (length(hash) = 32),
    size         BIGINT NOT NULL CHECK (size >= 0),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (location_id, tenant_id, hash)
);
CREATE INDEX location_files_hash ON location_files (location_id, hash);
