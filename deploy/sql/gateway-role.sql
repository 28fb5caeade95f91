-- The gateway's PostgreSQL roles (psql script; safe to run again).
--
--   ferry_gateway          DATABASE_URL of ferry-gateway: reads, never writes.
--   ferry_gateway_reports  FERRY_REPORTS_DATABASE_URL of ferry-gateway: reads,
--                          inserts into reports, writes device_failures
--                          (insert, update, delete: a success clears a
--                          device's last failure) and inserts into and
--                          updates devices (the census upsert).
--
-- What the trigger on reports writes (report_counts, and devices on success
-- reports) needs no grant: its function is SECURITY DEFINER. The gateway
-- also LISTENs for change notices, which needs no grant either.
--
-- Run it after the registry has migrated the schema (ferry-registry migrate,
-- or a first ferry-registry serve), and again after upgrades that add
-- tables if it was not run as the schema's owner, as the schema's owner
-- (the registry's role) or a superuser, with CREATEROLE if the roles do not
-- exist yet:
--
--   psql "$REGISTRY_DATABASE_URL" -v ON_ERROR_STOP=1 \
--        -v gateway_password="$(cat gateway-password)" \
--        -v reports_password="$(cat reports-password)" \
--        -f deploy/sql/gateway-role.sql
--
-- Both passwords are optional (omit them to set passwords yourself, or to
-- authenticate otherwise, e.g. with client certificates or IAM).
\set ON_ERROR_STOP on

SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ferry_gateway') AS create_gateway,
       NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ferry_gateway_reports') AS create_reports,
       EXISTS (SELECT FROM pg_tables WHERE schemaname = 'public' AND tablename = 'reports') AS migrated,
       current_database() AS database
\gset

\if :migrated
\else
\echo 'gateway-role.sql: the Ferry schema is missing: run `ferry-registry migrate` first'
SELECT 1 / 0 AS the_ferry_schema_is_missing;
\endif

SELECT tableowner AS owner FROM pg_tables WHERE schemaname = 'public' AND tablename = 'reports'
\gset

\if :create_gateway
CREATE ROLE ferry_gateway LOGIN;
\endif
\if :create_reports
CREATE ROLE ferry_gateway_reports LOGIN;
\endif
\if :{?gateway_password}
ALTER ROLE ferry_gateway PASSWORD :'gateway_password';
\endif
\if :{?reports_password}
ALTER ROLE ferry_gateway_reports PASSWORD :'reports_password';
\endif

BEGIN;

GRANT CONNECT ON DATABASE :"database" TO ferry_gateway, ferry_gateway_reports;
GRANT USAGE ON SCHEMA public TO ferry_gateway, ferry_gateway_reports;

-- Reads: every table, including those later migrations add (default
-- privileges of the schema's owner, who runs the migrations) ...
GRANT SELECT ON ALL TABLES IN SCHEMA public TO ferry_gateway, ferry_gateway_reports;
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT ON TABLES TO ferry_gateway, ferry_gateway_reports;
-- ... but not what only the registry needs and an internet-facing process
-- should not hold: tenants' webhook signing secrets and dashboard sessions.
REVOKE ALL ON alert_targets, dashboard_sessions FROM ferry_gateway, ferry_gateway_reports;

-- Writes: reports, devices' latest failures, the device census. Nothing
-- else, and nothing at all for ferry_gateway.
GRANT INSERT ON reports TO ferry_gateway_reports;
GRANT INSERT, UPDATE, DELETE ON device_failures TO ferry_gateway_reports;
GRANT INSERT, UPDATE ON devices TO ferry_gateway_reports;

COMMIT;
