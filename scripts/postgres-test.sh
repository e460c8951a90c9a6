#!/usr/bin/env bash
# Starts the local PostgreSQL cluster (Debian's postgresql package, which
# scripts/setup.sh installs) and creates the role and database the
# PostgreSQL store tests use. Idempotent; installs nothing. Run as root.
# Prints the line to export, so a caller can do:
#   eval "$(scripts/postgres-test.sh)"
set -euo pipefail

role=${FERRY_PG_ROLE:-ferry}
password=${FERRY_PG_PASSWORD:-ferry}
db=${FERRY_PG_DATABASE:-ferry}

if ! command -v pg_lsclusters >/dev/null 2>&1; then
  echo "postgres-test: PostgreSQL is not installed; run scripts/setup.sh first" >&2
  exit 1
fi

# The first cluster Debian created (e.g. "15 main 5432 down ...").
read -r version cluster port status _ < <(pg_lsclusters --no-header | head -n1) || true
if [ -z "${version:-}" ]; then
  echo "postgres-test: no PostgreSQL cluster; create one with: pg_createcluster --start <version> main" >&2
  exit 1
fi
if [ "$status" != "online" ]; then
  pg_ctlcluster "$version" "$cluster" start >&2
fi

psql_admin() { su postgres -c "psql -p $port -v ON_ERROR_STOP=1 -qtA $(printf '%q ' "$@")"; }

for _ in $(seq 1 30); do
  psql_admin -c 'SELECT 1' >/dev/null 2>&1 && break
  sleep 1
done

if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$role'")" != "1" ]; then
  psql_admin -c "CREATE ROLE \"$role\" LOGIN PASSWORD '$password'" >&2
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" != "1" ]; then
  psql_admin -c "CREATE DATABASE \"$db\" OWNER \"$role\"" >&2
fi

echo "export FERRY_TEST_POSTGRES_URL='postgres://$role:$password@127.0.0.1:$port/$db?sslmode=disable'"
