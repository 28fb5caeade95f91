-- Versions that differ only in build metadata (1.0.0 and 1.0.0+b2) have
-- equal precedence (semver 2.0.0, item 10): a client on one cannot be told
-- it runs something other than the other. So an app holds at most one
-- release per precedence; the registry refuses the second with a message
-- naming the first.
ALTER TABLE releases
    ADD COLUMN precedence TEXT GENERATED ALWAYS AS (split_part(version, '+', 1)) STORED;
CREATE UNIQUE INDEX releases_app_precedence ON releases (app_id, precedence);
