-- Version schemes per app (issue 14, seed 001): strict semantic versioning
-- (the default, and what every app created before used), integer version
-- codes, or dotted numbers. Chosen at `admin create-app --versioning`; the
-- registry accepts only versions of the app's scheme, so an app never mixes
-- them. `releases.precedence` holds the normalized form for all three.
ALTER TABLE apps
    ADD COLUMN versioning TEXT NOT NULL DEFAULT 'semver'
        CHECK (versioning IN ('semver', 'code', 'dotted'));
