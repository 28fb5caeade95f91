-- Withdrawn releases (issue 14): a yanked release stays stored (every
-- version is kept) but is no longer offered: the gateway leaves it out of
-- version lists and `want`, and it cannot be deployed. The deployed
-- release cannot be yanked (checked under the app row's lock, which
-- deploys take too). Yanking announces the app's change like a publish.
ALTER TABLE releases
    ADD COLUMN yanked_at TIMESTAMPTZ,
    ADD COLUMN yank_reason TEXT CHECK (length(yank_reason) BETWEEN 1 AND 500),
    ADD CONSTRAINT releases_yank_has_reason CHECK ((yanked_at IS NULL) = (yank_reason IS NULL));

CREATE TRIGGER releases_yanked_notify AFTER UPDATE OF yanked_at ON releases
    FOR EACH ROW EXECUTE FUNCTION ferry_notify_change();
