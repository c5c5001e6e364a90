#!/usr/bin/env bash
# Start (or stop) a Prefect API server and its UI for scale-out.
#
#   infra/prefect-server.sh                 # SQLite in $PREFECT_HOME (the embedded default's database)
#   infra/prefect-server.sh --postgres      # a local PostgreSQL (Debian's postgresql package) as its database
#   infra/prefect-server.sh stop            # stop the server started here and, if running, its PostgreSQL
#
# Settings (environment):
#   PREFECT_SERVER_HOST (127.0.0.1), PREFECT_SERVER_PORT (4200): where the API and UI listen. The server
#     binds beyond the loopback interface only when PREFECT_SERVER_HOST says so (e.g. 0.0.0.0); then set
#     PREFECT_SERVER_API_AUTH_STRING too. The UI is pointed at the same server
#     (PREFECT_UI_API_URL, default http://<host>:<port>/api; set it when browsers reach the host by another name).
#   PREFECT_SERVER_API_AUTH_STRING="user:password": HTTP basic auth on every API call and the UI's login;
#     workers and flows then need PREFECT_API_AUTH_STRING with the same value. Passed through as it is.
#   PREFECT_HOME (~/.prefect): the server's home; it records the server's process id in infra-server.pid.
#   --postgres: PGDATA (${PREFECT_HOME}/pgdata; as root /var/lib/postgresql/prefect), PGPORT (5433),
#     PGBIN (the newest /usr/lib/postgresql/*/bin).
#     The database cluster is created on first use (user "prefect", trust authentication, listening on
#     127.0.0.1 only), started, and Prefect is pointed at it with PREFECT_API_DATABASE_CONNECTION_URL.
#     As root the cluster runs as the "postgres" account: only the data folder itself is handed to it.
# For a Postgres you already run, just export that variable yourself, e.g.
#   export PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://prefect:secret@db-host:5432/prefect
# Workers and flows on other machines then use PREFECT_API_URL=http://<this host>:<port>/api.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFECT=${PREFECT:-.venv/bin/prefect}
HOST=${PREFECT_SERVER_HOST:-127.0.0.1}
PORT=${PREFECT_SERVER_PORT:-4200}
export PREFECT_HOME=${PREFECT_HOME:-$HOME/.prefect}
export PREFECT_SERVER_ANALYTICS_ENABLED=false
PIDFILE=$PREFECT_HOME/infra-server.pid  # not server.pid: `prefect server start --background` owns that name

ACTION=start POSTGRES=0
for arg in "$@"; do
  case $arg in
    --postgres) POSTGRES=1 ;;
    stop|--stop) ACTION=stop ;;
    *) echo "usage: $0 [--postgres] [stop]" >&2; exit 2 ;;
  esac
done

# as root the cluster runs as "postgres", which cannot enter /root: its data lives in postgres' own folder
DEFAULT_PGDATA=$PREFECT_HOME/pgdata
[[ $(id -u) == 0 ]] && DEFAULT_PGDATA=/var/lib/postgresql/prefect
PGDATA=${PGDATA:-$DEFAULT_PGDATA}
PGPORT=${PGPORT:-5433}
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
RUNAS=()
[[ $(id -u) == 0 ]] && RUNAS=(runuser -u postgres --)  # PostgreSQL refuses to run as root

# whether the process in $PIDFILE is a Prefect server (not a process that reused a stale id)
recorded_server() {
  [[ -f $PIDFILE ]] || return 1
  local pid; pid=$(cat "$PIDFILE")
  [[ $pid =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "server start"
}

if [[ $ACTION == stop ]]; then
  if [[ -f $PIDFILE ]]; then
    pid=$(cat "$PIDFILE")
    if recorded_server; then
      kill -TERM "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
      echo "Prefect server (process $pid) stopped"
    fi
    rm -f "$PIDFILE"
  fi
  if [[ -f $PGDATA/postmaster.pid && -n $PGBIN ]]; then
    "${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop
  fi
  exit 0
fi

if recorded_server; then
  echo "a Prefect server started by this script is running (process $(cat "$PIDFILE"), $PIDFILE): stop it first" \
       "with: $0 stop" >&2
  exit 2
fi

if [[ $POSTGRES == 1 ]]; then
  if [[ -z "$PGBIN" || ! -x "$PGBIN/initdb" ]]; then
    echo "PostgreSQL is not installed: apt-get install -y postgresql (or set PGBIN)" >&2
    exit 2
  fi
  if [[ $(id -u) == 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system postgres
    if [[ ! -d $PGDATA ]]; then
      mkdir -p "$PGDATA"
      chown postgres "$PGDATA"  # the data folder only: never its parents
    fi
    if ! "${RUNAS[@]}" test -w "$PGDATA"; then
      echo "PGDATA $PGDATA: the postgres account cannot write there (owner, or a parent folder it cannot" \
           "enter); choose another PGDATA or hand this folder to postgres" >&2
      exit 2
    fi
  fi
  if [[ ! -f "$PGDATA/PG_VERSION" ]]; then
    "${RUNAS[@]}" "$PGBIN/initdb" -D "$PGDATA" -U prefect --auth=trust >/dev/null
  fi
  PGCTL=("${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -o "-h 127.0.0.1 -p $PGPORT -k /tmp" -l "$PGDATA/server.log" -w)
  "${PGCTL[@]}" status >/dev/null 2>&1 || "${PGCTL[@]}" start
  "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U prefect -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='prefect'" | grep -q 1 \
    || "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U prefect prefect
  export PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://prefect@127.0.0.1:$PGPORT/prefect"
  echo "Prefect database: $PREFECT_API_DATABASE_CONNECTION_URL (data in $PGDATA; stop with: $0 stop)"
fi

# `prefect server start --port` sets only the listening port; the UI reads the API's address from
# these settings, which otherwise still say 4200.
export PREFECT_SERVER_API_HOST=$HOST PREFECT_SERVER_API_PORT=$PORT
case $HOST in 0.0.0.0|::|'[::]') UI_HOST=$(hostname -f 2>/dev/null || hostname) ;; *) UI_HOST=$HOST ;; esac
export PREFECT_UI_API_URL=${PREFECT_UI_API_URL:-http://$UI_HOST:$PORT/api}
[[ -n ${PREFECT_SERVER_API_AUTH_STRING:-} ]] && echo "API basic auth: on (clients need PREFECT_API_AUTH_STRING)"
[[ $HOST != 127.0.0.1 && $HOST != localhost && -z ${PREFECT_SERVER_API_AUTH_STRING:-} ]] \
  && echo "warning: listening on $HOST without PREFECT_SERVER_API_AUTH_STRING: anyone who reaches it can run flows" >&2
echo "Prefect UI: http://$UI_HOST:$PORT (API $PREFECT_UI_API_URL)"
mkdir -p "$PREFECT_HOME"
echo $$ >"$PIDFILE"  # exec keeps this process id
exec "$PREFECT" server start --host "$HOST" --port "$PORT"
