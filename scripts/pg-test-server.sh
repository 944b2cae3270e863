#!/usr/bin/env bash
# A private PostgreSQL server for the test suites (ims-meta conformance, jobs, …).
#
#   scripts/pg-test-server.sh start [DIR] [PORT]   install if missing, initdb, start, create
#                                                  role/db ims/ims, print the URL (idempotent)
#   scripts/pg-test-server.sh stop  [DIR]          stop the server (idempotent)
#   scripts/pg-test-server.sh url   [DIR] [PORT]   print the URL
#
# DIR defaults to $IMS_PG_DIR or /tmp/ims-pg, PORT to $IMS_PG_PORT or 55432. The server listens
# on 127.0.0.1 only, with its socket in DIR, and trades durability for speed (fsync off): it is
# for tests, never for data.
set -euo pipefail

cmd=${1:-}
dir=${2:-${IMS_PG_DIR:-/tmp/ims-pg}}
port=${3:-${IMS_PG_PORT:-55432}}
url="postgres://ims:ims@127.0.0.1:${port}/ims"

die() { echo "pg-test-server: $*" >&2; exit 1; }

pg_bin() {
    local initdb
    initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$initdb" ] && dirname "$initdb"
}

install_postgres() {
    [ -n "$(pg_bin)" ] && return
    [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed and installing it needs root"
    echo "pg-test-server: installing postgresql with apt-get" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    [ -n "$(pg_bin)" ] || die "postgresql installed but initdb not found"
}

# Runs a command as the server's owner: `postgres` when we are root (initdb refuses root).
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

psql_admin() {
    as_owner "$(pg_bin)/psql" -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA "$@"
}

start() {
    install_postgres
    local bin
    bin=$(pg_bin)
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
        mkdir -p "$dir"
        chown postgres: "$dir"
    fi
    chmod 700 "$dir" 2>/dev/null || mkdir -m 700 -p "$dir"
    if [ ! -f "$dir/PG_VERSION" ]; then
        as_owner "$bin/initdb" -D "$dir" -U postgres --encoding=UTF8 --locale=C \
            --auth-local=trust --auth-host=scram-sha-256 >"$dir.initdb.log" 2>&1 \
            || die "initdb failed, see $dir.initdb.log"
    fi
    if ! as_owner "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        as_owner "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
            start >/dev/null || die "server did not start, see $dir/server.log"
    fi
    if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'ims'")" != 1 ]; then
        psql_admin -c "CREATE ROLE ims LOGIN PASSWORD 'ims'"
    fi
    if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'ims'")" != 1 ]; then
        psql_admin -c "CREATE DATABASE ims OWNER ims"
    fi
    echo "$url"
}

stop() {
    local bin
    bin=$(pg_bin)
    [ -n "$bin" ] && [ -f "$dir/PG_VERSION" ] || return 0
    if as_owner "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        as_owner "$bin/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
    fi
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    url) echo "$url" ;;
    *) die "usage: $0 start|stop|url [DIR] [PORT]" ;;
esac
