#!/usr/bin/env bash
# A local PostgreSQL for the storage tests: installs the Debian package if missing, starts a
# cluster listening on localhost only, creates the test role and database, prints the URL.
# Idempotent: run it again and it only prints the URL. Needs root (or sudo) the first time.
#
#   export EDGE_NAS_TEST_PG_URL=$(scripts/postgres.sh)
#
# Settings (environment): EDGE_NAS_PG_USER (edge_nas), EDGE_NAS_PG_PASSWORD (edge_nas),
# EDGE_NAS_PG_DB (edge_nas_test), EDGE_NAS_PG_PORT (the cluster's port, 5432 when created here).
set -euo pipefail

user="${EDGE_NAS_PG_USER:-edge_nas}"
password="${EDGE_NAS_PG_PASSWORD:-edge_nas}"
db="${EDGE_NAS_PG_DB:-edge_nas_test}"

say() { echo "postgres.sh: $*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
as_postgres() { as_root runuser -u postgres -- "$@"; }

if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
    say "installing the postgresql package"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi

version="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
cluster="main"
if ! pg_lsclusters -h | awk '{print $1"/"$2}' | grep -qx "$version/$cluster"; then
    say "creating cluster $version/$cluster"
    as_root pg_createcluster "$version" "$cluster" >&2
fi
# localhost only, whatever the cluster said before
as_root pg_conftool "$version" "$cluster" set listen_addresses localhost >&2
port="$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1==v && $2==c {print $3}')"
status="$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1==v && $2==c {print $4}')"
if [ "$status" != "online" ]; then
    say "starting cluster $version/$cluster on localhost:$port"
    as_root pg_ctlcluster "$version" "$cluster" start >&2
fi
for _ in $(seq 1 30); do
    if as_postgres psql -p "$port" -tAc "SELECT 1" >/dev/null 2>&1; then break; fi
    sleep 1
done

if [ "$(as_postgres psql -p "$port" -tAc "SELECT 1 FROM pg_roles WHERE rolname='$user'")" != "1" ]; then
    say "creating role $user"
    as_postgres psql -p "$port" -q -c "CREATE ROLE \"$user\" LOGIN PASSWORD '$password'" >&2
fi
if [ "$(as_postgres psql -p "$port" -tAc "SELECT 1 FROM pg_database WHERE datname='$db'")" != "1" ]; then
    say "creating database $db"
    as_postgres psql -p "$port" -q -c "CREATE DATABASE \"$db\" OWNER \"$user\"" >&2
fi

echo "postgresql://$user:$password@localhost:$port/$db"
