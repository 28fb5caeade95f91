-- Ferry registry schema, version 1. Invariants:
-- * a release row exists only once every file it references is assembled in
--   S3 (rows in `files`), so what is visible is always downloadable;
-- * releases are immutable: (app, version) is unique and never updated;
-- * `chunks` and `files` are global (bytes stored once), `tenant_chunks`
--   records which tenant proved it holds which chunk (S3-2, per tenant).

CREATE TABLE tenants (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE apps (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   BIGINT NOT NULL REFERENCES tenants (id),
    name        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    tenant_id    BIGINT NOT NULL REFERENCES tenants (id),
    role         TEXT NOT NULL CHECK (role IN ('agent', 'client')),
    secret_hash  BYTEA NOT NULL CHECK (length(secret_hash) = 32),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE chunks (
    hash        BYTEA PRIMARY KEY CHECK (length(hash) = 32),
    size        INTEGER NOT NULL CHECK (size > 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE tenant_chunks (
    tenant_id   BIGINT NOT NULL REFERENCES tenants (id),
    hash        BYTEA NOT NULL REFERENCES chunks (hash),
    PRIMARY KEY (tenant_id, hash)
);

CREATE TABLE files (
    hash        BYTEA PRIMARY KEY CHECK (length(hash) = 32),
    size        BIGINT NOT NULL CHECK (size >= 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE manifests (
    tenant_id   BIGINT NOT NULL REFERENCES tenants (id),
    id          BYTEA NOT NULL CHECK (length(id) = 32),
    body        BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE releases (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    BIGINT NOT NULL REFERENCES tenants (id),
    app_id       BIGINT NOT NULL REFERENCES apps (id),
    version      TEXT NOT NULL,
    manifest_id  BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (app_id, version),
    FOREIGN KEY (tenant_id, manifest_id) REFERENCES manifests (tenant_id, id)
);

-- Every deploy ever recorded; the newest per app is what runs now.
CREATE TABLE deployments (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_id       BIGINT NOT NULL REFERENCES apps (id),
    release_id   BIGINT NOT NULL REFERENCES releases (id),
    deployed_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX deployments_app ON deployments (app_id, id DESC);

ALTER TABLE apps ADD COLUMN deployed_release_id BIGINT REFERENCES releases (id);
