#!/usr/bin/env bash
# Start a Prefect API server (and UI) for scale-out.
#
#   infra/prefect-server.sh                 # SQLite in $PREFECT_HOME (the embedded default's database)
#   infra/prefect-server.sh --postgres      # a local PostgreSQL (Debian's postgresql package) as its database
#
# Postgres mode creates a database cluster in ${PGDATA:-.infra/pgdata} on 127.0.0.1:${PGPORT:-5433}
# (first run only), starts it, and points Prefect at it with PREFECT_API_DATABASE_CONNECTION_URL.
# For a Postgres you already run, just export that variable yourself, e.g.
#   export PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://prefect:secret@db-host:5432/prefect
# Workers and flows on other machines then use PREFECT_API_URL=http://<this host>:4200/api.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFECT=${PREFECT:-.venv/bin/prefect}
HOST=${PREFECT_SERVER_HOST:-127.0.0.1}
PORT=${PREFECT_SERVER_PORT:-4200}
export PREFECT_SERVER_ANALYTICS_ENABLED=false

if [[ "${1:-}" == "--postgres" ]]; then
  PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
  if [[ -z "$PGBIN" || ! -x "$PGBIN/initdb" ]]; then
    echo "PostgreSQL is not installed: apt-get install -y postgresql (or set PGBIN)" >&2
    exit 2
  fi
  PGDATA=${PGDATA:-$PWD/.infra/pgdata}
  PGPORT=${PGPORT:-5433}
  RUNAS=()
  if [[ $(id -u) == 0 ]]; then  # initdb refuses to run as root
    id postgres >/dev/null 2>&1 || useradd --system postgres
    mkdir -p "$PGDATA" && chown -R postgres "$(dirname "$PGDATA")"
    RUNAS=(runuser -u postgres --)
  fi
  if [[ ! -f "$PGDATA/PG_VERSION" ]]; then
    "${RUNAS[@]}" "$PGBIN/initdb" -D "$PGDATA" -U prefect --auth=trust >/dev/null
  fi
  "${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -o "-h 127.0.0.1 -p $PGPORT -k /tmp" -l "$PGDATA/server.log" -w status >/dev/null 2>&1 \
    || "${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -o "-h 127.0.0.1 -p $PGPORT -k /tmp" -l "$PGDATA/server.log" -w start
  "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U prefect -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='prefect'" | grep -q 1 \
    || "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U prefect prefect
  export PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://prefect@127.0.0.1:$PGPORT/prefect"
  echo "Prefect database: $PREFECT_API_DATABASE_CONNECTION_URL"
fi

exec "$PREFECT" server start --host "$HOST" --port "$PORT"
