#!/usr/bin/env bash
# A throw-away local PostgreSQL server for the mmcross tests.
#
# Usage:
#   scripts/postgres_local.sh start [DATA_DIR]   # install if needed, init, start, create db
#   scripts/postgres_local.sh url   [DATA_DIR]   # print the URL of a running cluster again
#   scripts/postgres_local.sh status [DATA_DIR]
#   scripts/postgres_local.sh stop  [DATA_DIR] [--clean]   # stop (and delete the cluster)
#
# DATA_DIR defaults to $MMCROSS_PG_DIR, else ${TMPDIR:-/tmp}/mmcross-postgres. It must be
# reachable by the `postgres` user when run as root.
#
# `start` and `url` print exactly two lines on stdout (everything else goes to stderr):
#   MMCROSS_TEST_POSTGRES_URL=postgresql+psycopg2://mmcross:<password>@127.0.0.1:<port>/mmcross_test
#   export MMCROSS_TEST_POSTGRES_URL
# so that a CI script can do:  eval "$(scripts/postgres_local.sh start)"
#
# When `initdb` is not found (PATH or /usr/lib/postgresql/*/bin), Debian's `postgresql`
# package is installed with apt-get (apt-get update first; needs root). The server listens
# on 127.0.0.1 only, on a free port, with scram-sha-256 password authentication over TCP.
# As root it runs as the `postgres` user (PostgreSQL refuses to run as root).
set -euo pipefail

DB_NAME=mmcross_test
DB_USER=mmcross

log() { echo "postgres_local: $*" >&2; }
die() { log "error: $*"; exit 1; }

cmd=${1:-}
[ -n "$cmd" ] || die "usage: $0 start|url|status|stop [DATA_DIR] [--clean]"
shift
clean=0
data_dir=""
for arg in "$@"; do
    case "$arg" in
        --clean) clean=1 ;;
        -*) die "unknown option $arg" ;;
        *) data_dir=$arg ;;
    esac
done
data_dir=${data_dir:-${MMCROSS_PG_DIR:-${TMPDIR:-/tmp}/mmcross-postgres}}
data_dir=$(realpath -m "$data_dir")
cluster="$data_dir/cluster"   # PGDATA
state="$data_dir/url.env"     # the URL of the running cluster

find_bindir() {
    local initdb_path d
    if initdb_path=$(command -v initdb 2>/dev/null); then
        dirname "$(realpath "$initdb_path")"
        return 0
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

ensure_installed() {
    if bindir=$(find_bindir); then
        return 0
    fi
    log "initdb not found: installing Debian's postgresql package"
    [ "$(id -u)" -eq 0 ] || die "initdb missing and not root: install postgresql first"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    apt-get install -y --no-install-recommends postgresql >&2
    bindir=$(find_bindir) || die "postgresql installed but initdb still not found"
}

# Run a command as the server's owner: `postgres` when we are root, else ourselves.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        if command -v runuser >/dev/null 2>&1; then
            runuser -u postgres -- "$@"
        else
            su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
        fi
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

is_running() {
    [ -f "$cluster/postmaster.pid" ] && as_owner "$bindir/pg_ctl" -D "$cluster" status >/dev/null 2>&1
}

print_url() {
    [ -f "$state" ] || die "no URL recorded in $state (is the cluster started?)"
    cat "$state"
    echo "export MMCROSS_TEST_POSTGRES_URL"
}

start() {
    ensure_installed
    log "using PostgreSQL binaries in $bindir"
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
        log "creating system user postgres"
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
    mkdir -p "$data_dir"
    chmod 700 "$data_dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$data_dir"
    if [ -f "$cluster/PG_VERSION" ] && is_running; then
        log "already running in $cluster"
        print_url
        return 0
    fi
    if [ ! -f "$cluster/PG_VERSION" ]; then
        local password pwfile
        password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
        pwfile="$data_dir/pwfile"
        printf '%s\n' "$password" >"$pwfile"
        [ "$(id -u)" -eq 0 ] && chown postgres: "$pwfile"
        log "initdb $cluster"
        as_owner "$bindir/initdb" -D "$cluster" -U "$DB_USER" --pwfile="$pwfile" \
            --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --no-locale >&2
        rm -f "$pwfile"
        printf '%s\n' "$password" >"$data_dir/password"
        chmod 600 "$data_dir/password"
    fi
    local port password
    port=$(free_port)
    password=$(cat "$data_dir/password")
    log "starting on 127.0.0.1:$port (log: $data_dir/server.log)"
    # Unix socket in the data dir: no need for /var/run/postgresql.
    as_owner "$bindir/pg_ctl" -D "$cluster" -l "$data_dir/server.log" -w -t 60 \
        -o "-p $port -h 127.0.0.1 -k $data_dir -c fsync=off -c synchronous_commit=off" \
        start >&2 || { tail -n 20 "$data_dir/server.log" >&2; die "server did not start"; }
    if ! as_owner "$bindir/psql" -h "$data_dir" -p "$port" -U "$DB_USER" -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" | grep -q 1; then
        as_owner "$bindir/createdb" -h "$data_dir" -p "$port" -U "$DB_USER" "$DB_NAME"
        log "created database $DB_NAME"
    fi
    echo "MMCROSS_TEST_POSTGRES_URL=postgresql+psycopg2://$DB_USER:$password@127.0.0.1:$port/$DB_NAME" >"$state"
    chmod 600 "$state"
    print_url
}

stop() {
    bindir=$(find_bindir) || die "PostgreSQL binaries not found"
    if [ -f "$cluster/PG_VERSION" ] && is_running; then
        as_owner "$bindir/pg_ctl" -D "$cluster" -m fast -w stop >&2
        log "stopped $cluster"
    else
        log "not running: $cluster"
    fi
    rm -f "$state"
    if [ "$clean" -eq 1 ]; then
        rm -rf "$data_dir"
        log "deleted $data_dir"
    fi
}

case "$cmd" in
    start) start ;;
    url) print_url ;;
    status)
        bindir=$(find_bindir) || die "PostgreSQL binaries not found"
        if is_running; then log "running in $cluster"; else log "not running"; exit 3; fi ;;
    stop) stop ;;
    *) die "unknown command $cmd (start|url|status|stop)" ;;
esac
