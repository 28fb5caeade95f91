-- Version schemes per app (issue 14, seed 001): strict semantic versioning
-- (the default, and what every app created before used), integer version
-- codes, or dotted numbers. Chosen at `admin create-app --versioning`; the
-- registry accepts only versions of the app's scheme, so an app never mixes
-- them.
ALTER TABLE apps
    ADD COLUMN versioning TEXT NOT NULL DEFAULT 'semver'
        CHECK (versioning IN ('semver', 'code', 'dotted'));

-- What orders a version, without build metadata, now written by the
-- registry (`Version::precedence`: at least three numbers with leading and
-- trailing zeros normalized, then the semver pre-release), no longer
-- generated from the text: dotted `1.0` and `1.0.0`, or `2024.01.3` and
-- `2024.1.3`, are one version. For every existing (semver) release both
-- forms are the same: the version without its build metadata.
-- The values and the unique index stay as they are (no table rewrite).
ALTER TABLE releases ALTER COLUMN precedence DROP EXPRESSION;
ALTER TABLE releases ALTER COLUMN precedence SET NOT NULL;
