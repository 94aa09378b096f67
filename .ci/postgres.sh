#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on loopback, for the tests that need a real
# database (`FRESHEN_POSTGRES_URL`).
#
#   eval "$(bash .ci/postgres.sh start)"   # prints the exports to use
#   bash .ci/postgres.sh stop
#
# The server refuses to run as root: as root, the cluster belongs to a
# system user made for it. Its data lives in a temporary directory, and only
# loopback may connect (trust authentication: nothing outside this machine
# can reach it).
set -euo pipefail

port=${FRESHEN_POSTGRES_PORT:-54329}
state=${TMPDIR:-/tmp}/freshen-postgres-$port
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$bin" ] || { echo "no PostgreSQL server installed (Debian: apt-get install postgresql)" >&2; exit 1; }

as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        id freshen-pg >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin freshen-pg
        chown -R freshen-pg "$state"
        runuser -u freshen-pg -- "$@"
    else
        "$@"
    fi
}

case "${1:-}" in
start)
    if [ -d "$state" ]; then bash "$0" stop; fi
    mkdir -p "$state/data" "$state/socket"
    chmod 700 "$state"
    as_owner "$bin/initdb" -D "$state/data" --auth=trust --username=freshen --encoding=UTF8 --no-sync >"$state/initdb.log" 2>&1 \
        || { cat "$state/initdb.log" >&2; exit 1; }
    as_owner "$bin/pg_ctl" -D "$state/data" -l "$state/server.log" -w -t 60 \
        -o "-p $port -k $state/socket -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >/dev/null \
        || { cat "$state/server.log" >&2; exit 1; }
    echo "export FRESHEN_POSTGRES_URL='host=127.0.0.1 port=$port user=freshen dbname=postgres'"
    ;;
stop)
    [ -d "$state/data" ] && as_owner "$bin/pg_ctl" -D "$state/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$state"
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
