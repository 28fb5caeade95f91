#!/bin/sh
# One-shot (db-roles service): creates the gateway's PostgreSQL roles with
# deploy/sql/gateway-role.sql once the registry has migrated the schema:
# ferry_gateway (reads everything) and ferry_gateway_reports (also writes
# reports, device_failures and devices). Safe to run again.
set -eu
PGPASSWORD=$(cat /run/secrets/postgres_password)
export PGPASSWORD
exec psql -h postgres -U ferry -d ferry -v ON_ERROR_STOP=1 -q \
  -v gateway_password="$(cat /run/secrets/gateway_db_password)" \
  -v reports_password="$(cat /run/secrets/reports_db_password)" \
  -f /sql/gateway-role.sql
