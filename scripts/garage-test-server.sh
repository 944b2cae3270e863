#!/usr/bin/env bash
# A private single-node Garage (S3-compatible object storage) for the test suites.
#
#   scripts/garage-test-server.sh install ROOT          print the path of the pinned garage:
#                                                       on PATH, in ROOT/bin, or else built
#                                                       there with cargo install
#   scripts/garage-test-server.sh start DIR PORT        configure, start, lay out the node,
#                                                       create key and buckets, print the
#                                                       connection as NAME=VALUE lines
#                                                       (idempotent)
#   scripts/garage-test-server.sh stop  DIR             stop the server (idempotent)
#
# The S3 API listens on 127.0.0.1:PORT, Garage's RPC on PORT+1 and its admin API on PORT+2.
# `start` prints:
#   IMS_TEST_S3_ENDPOINT=http://127.0.0.1:PORT   IMS_TEST_S3_REGION=garage
#   IMS_TEST_S3_BUCKET=ims-test                  IMS_TEST_S3_ACCESS_KEY=GK…
#   IMS_TEST_S3_SECRET_KEY=…
# and keeps them in DIR/connection.env (mode 600). Two buckets exist: ims-test (the store and
# suites) and ims-test-user (stands in for a user's own bucket in import/export tests).
#
# The garage binary `start` runs: $IMS_GARAGE_BIN, else `garage` on PATH.
# Tests only: fsync off, no compression, one replica.
set -euo pipefail

GARAGE_VERSION=2.5.0
# Only the SQLite metadata engine (bundled): LMDB, metrics and K2V are not needed for tests and
# cost build minutes.
GARAGE_FEATURES=bundled-libs,sqlite
REGION=garage
BUCKETS=(ims-test ims-test-user)
KEY_NAME=ims-test

cmd=${1:-}
die() { echo "garage-test-server: $*" >&2; exit 1; }

install() {
    local root=${1:?usage: install ROOT} have
    for have in "$(command -v garage || true)" "$root/bin/garage"; do
        if [[ -n $have && -x $have ]] && "$have" --version 2>/dev/null | grep -q "cargo:$GARAGE_VERSION "; then
            echo "$have"
            return
        fi
    done
    echo "garage-test-server: building garage $GARAGE_VERSION into $root (~17 CPU-minutes)" >&2
    cargo install garage --version "$GARAGE_VERSION" --locked --no-default-features \
        --features "$GARAGE_FEATURES" --root "$root" --target-dir "$root/garage-build" >&2
    rm -rf "$root/garage-build"
    echo "$root/bin/garage"
}

garage_bin() {
    if [[ -n ${IMS_GARAGE_BIN:-} ]]; then echo "$IMS_GARAGE_BIN"
    elif command -v garage >/dev/null; then command -v garage
    else die "no garage binary (set IMS_GARAGE_BIN, or run: $0 install ROOT)"
    fi
}

# Runs a garage command until it succeeds (up to ~20 s); prints its output; the last error goes
# to stderr.
retry() {
    local out _
    for _ in $(seq 100); do
        if out=$("$@" 2>"$RETRY_ERR"); then printf '%s\n' "$out"; return 0; fi
        sleep 0.2
    done
    cat "$RETRY_ERR" >&2
    return 1
}

start() {
    local dir=${1:?usage: start DIR PORT} port=${2:?usage: start DIR PORT}
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    local bin conf="$dir/garage.toml" pidfile="$dir/garage.pid"
    bin=$(garage_bin)
    if [[ ! -f $conf ]]; then
        mkdir -p "$dir/meta" "$dir/data"
        cat >"$conf" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
metadata_fsync = false
data_fsync = false
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$((port + 1))"
rpc_public_addr = "127.0.0.1:$((port + 1))"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$((port + 2))"
EOF
    fi
    local g=("$bin" -c "$conf")
    RETRY_ERR="$dir/cli.err"
    if [[ ! -f $pidfile ]] || ! kill -0 "$(<"$pidfile")" 2>/dev/null; then
        # setsid: the server outlives the shell that started it, like pg_ctl's.
        setsid "$bin" -c "$conf" server >"$dir/server.log" 2>&1 </dev/null &
        echo $! >"$pidfile"
    fi
    local node="" _
    for _ in $(seq 100); do
        kill -0 "$(<"$pidfile")" 2>/dev/null || { tail -20 "$dir/server.log" >&2; die "garage exited"; }
        node=$("${g[@]}" node id -q 2>/dev/null | cut -d@ -f1) && [[ -n $node ]] && break
        sleep 0.2
    done
    [[ -n $node ]] || { tail -20 "$dir/server.log" >&2; die "garage did not answer"; }
    # Each step retries: right after start the node may not yet answer, or may not yet have
    # applied its layout.
    local layout
    layout=$(retry "${g[@]}" layout show) || die "garage layout show failed"
    if grep -q "No nodes currently have a role" <<<"$layout"; then
        retry "${g[@]}" layout assign -z dc1 -c 10G "$node" >/dev/null || die "layout assign failed"
        retry "${g[@]}" layout apply --version 1 >/dev/null || die "layout apply failed"
    fi
    if ! "${g[@]}" key info "$KEY_NAME" >/dev/null 2>&1; then
        retry "${g[@]}" key create "$KEY_NAME" >/dev/null || die "key create failed"
    fi
    local b
    for b in "${BUCKETS[@]}"; do
        "${g[@]}" bucket info "$b" >/dev/null 2>&1 || retry "${g[@]}" bucket create "$b" >/dev/null ||
            die "bucket create $b failed"
        retry "${g[@]}" bucket allow --read --write --owner "$b" --key "$KEY_NAME" >/dev/null ||
            die "bucket allow $b failed"
    done
    local info key_id secret
    info=$("${g[@]}" key info --show-secret "$KEY_NAME")
    key_id=$(awk -F': *' '/^Key ID/ {print $2; exit}' <<<"$info")
    secret=$(awk -F': *' '/^Secret key/ {print $2; exit}' <<<"$info")
    [[ -n $key_id && -n $secret ]] || die "could not read the key from: garage key info"
    (
        umask 077
        cat >"$dir/connection.env" <<EOF
IMS_TEST_S3_ENDPOINT=http://127.0.0.1:$port
IMS_TEST_S3_REGION=$REGION
IMS_TEST_S3_BUCKET=${BUCKETS[0]}
IMS_TEST_S3_USER_BUCKET=${BUCKETS[1]}
IMS_TEST_S3_ACCESS_KEY=$key_id
IMS_TEST_S3_SECRET_KEY=$secret
EOF
    )
    cat "$dir/connection.env"
}

stop() {
    local dir=${1:?usage: stop DIR} pidfile pid
    pidfile="$dir/garage.pid"
    [[ -f $pidfile ]] || return 0
    pid=$(<"$pidfile")
    rm -f "$pidfile"
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
}

case "$cmd" in
    install) install "${2:-}" ;;
    start) start "${2:-}" "${3:-}" ;;
    stop) stop "${2:-}" ;;
    *) die "usage: $0 install ROOT | start DIR PORT | stop DIR" ;;
esac
