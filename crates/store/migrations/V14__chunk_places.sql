-- Storage that does not double (issue 13). Until now every chunk stayed
-- an object (`chunks/<hash>`) beside the assembled files holding the same
-- bytes: about twice the unique bytes. Now, once a file is assembled in
-- the registry's bucket, the position of each of its chunks in it is
-- recorded here, and a chunk's own object is deleted: its bytes are read
-- from the file (a ranged GET, consecutive chunks in one request) by later
-- assemblies. Deduplication is still answered from `tenant_chunks`.
--
-- The rule that holds: a `chunks` row has its bytes in its own object
-- (`in_object`) or in at least one place (or both, for a moment).
ALTER TABLE chunks ADD COLUMN in_object BOOLEAN NOT NULL DEFAULT true;

CREATE TABLE chunk_places (
    hash        BYTEA NOT NULL REFERENCES chunks (hash),
    file_hash   BYTEA NOT NULL REFERENCES files (hash),
    "offset"    BIGINT NOT NULL CHECK ("offset" >= 0),
    -- Newest first: consecutive chunks of a new release are then read
    -- from one recent file, in few requests.
    seq         BIGINT GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (hash, file_hash)
);
CREATE INDEX chunk_places_file ON chunk_places (file_hash);
CREATE INDEX chunk_places_newest ON chunk_places (hash, seq DESC);
