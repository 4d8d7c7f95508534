#!/usr/bin/env bash
# Start PostgreSQL from the distribution's packages on 127.0.0.1 for the distributed tests, and
# print the URL to export as SWEEP_TEST_POSTGRES. Installs the server if it is missing (root).
set -euo pipefail
# Everything but the URL goes to stderr (pg_ctlcluster prints e.g. "Removed stale pid file." on stdout).
exec 3>&1 1>&2
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
if ! pg_lsclusters -h 2>/dev/null | grep -q online; then
  pg_lsclusters -h | grep -q . || pg_createcluster "$(ls /usr/lib/postgresql | sort -V | tail -1)" main >/dev/null
  # 3>&-: the server must not inherit the URL pipe, or whoever reads it waits for EOF forever.
  pg_ctlcluster "$(pg_lsclusters -h | awk 'NR==1{print $1}')" main start 3>&-
fi
port=$(pg_lsclusters -h | awk 'NR==1{print $3}')
su postgres -c "psql -p $port -qtc \"SELECT 1 FROM pg_roles WHERE rolname='sweep'\"" | grep -q 1 \
  || su postgres -c "psql -p $port -qc \"CREATE USER sweep PASSWORD 'sweep' CREATEDB\""
echo "postgresql://sweep:sweep@127.0.0.1:$port/postgres" >&3
