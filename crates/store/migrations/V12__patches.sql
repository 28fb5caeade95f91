-- Binary patches between files (issue 13). A patch turns one file (the
-- base, a file of a release clients are likely to have) into another (the
-- target, the same artifact and path in the release they move to); it is
-- stored content-addressed in the registry's bucket as `patches/<blake3>`.
-- Rows appear only once the patch was applied to its base and rebuilt the
-- target exactly, so whatever is offered works.
CREATE TABLE patches (
    base_hash    BYTEA NOT NULL CHECK (length(base_hash) = 32),
    target_hash  BYTEA NOT NULL CHECK (length(target_hash) = 32),
    algorithm    TEXT NOT NULL,
    patch_hash   BYTEA NOT NULL CHECK (length(patch_hash) = 32),
    size         BIGINT NOT NULL CHECK (size > 0),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (base_hash, target_hash, algorithm)
);

-- The work queue: one job per (base, target), taken by one registry
-- replica at a time under a lease (FOR UPDATE SKIP LOCKED; `not_before` is
-- the lease's end while a worker holds it, renewed while it works, and
-- `attempts` is the lease's token: a worker whose lease was taken over
-- cannot finish the job), retried with back-off, given up after a few
-- attempts and queued again by a later deploy. The locations say where
-- each file is (NULL: the registry's bucket).
CREATE TABLE patch_jobs (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    base_hash     BYTEA NOT NULL CHECK (length(base_hash) = 32),
    target_hash   BYTEA NOT NULL CHECK (length(target_hash) = 32),
    base_location_id    BIGINT REFERENCES locations (id),
    target_location_id  BIGINT REFERENCES locations (id),
    state         TEXT NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'done', 'skipped', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    not_before    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error    TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at   TIMESTAMPTZ,
    UNIQUE (base_hash, target_hash)
);
CREATE INDEX patch_jobs_pending ON patch_jobs (not_before, id) WHERE state = 'pending';
