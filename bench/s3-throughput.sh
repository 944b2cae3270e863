#!/usr/bin/env bash
# Upload/download throughput of one big image through `ims serve` on the local store vs. on S3
# (a private single-node Garage on loopback, scripts/garage-test-server.sh).
#
#   bench/s3-throughput.sh [--runs N] [--size-mib M]      (defaults: 3 runs, 1024 MiB)
#
# Three nodes run side by side on fresh data dirs (embedded SQLite): `local` (the local store),
# `s3` (S3 store, payloads signed with SHA-256) and `s3-unsigned` (IMS_STORE_S3_UNSIGNED_PAYLOAD).
# Each run uploads the same file of random bytes (in page cache) with `curl -T` and downloads it
# with `curl -o /dev/null`, node after node, the order rotating per run; after each upload the
# image must be active with the file's md5. Prints one line per transfer and the medians.
# Needs: target/release/ims (IMS_BIN), garage (IMS_GARAGE_BIN or PATH; else built with
# `garage-test-server.sh install ~/.cargo`), curl, python3.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS=3
SIZE_MIB=1024
while (($#)); do
  case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --size-mib) SIZE_MIB=$2; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--size-mib M]" >&2; exit 2 ;;
  esac
done
IMS_BIN="${IMS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/ims}"
[[ -x $IMS_BIN ]] || { echo "no $IMS_BIN (cargo build --release -p ims-cli)" >&2; exit 1; }
if [[ -z ${IMS_GARAGE_BIN:-} ]]; then
  IMS_GARAGE_BIN=$("$ROOT/scripts/garage-test-server.sh" install "$HOME/.cargo")
fi
export IMS_GARAGE_BIN

TMP=$(mktemp -d /tmp/ims-s3-bench.XXXXXX)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  "$ROOT/scripts/garage-test-server.sh" stop "$TMP/garage" >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT

port_run() {
  python3 -c '
import random, socket
for _ in range(200):
    base = random.randrange(20000, 60000); held = []
    try:
        for p in range(base, base + 3):
            s = socket.socket(); s.bind(("127.0.0.1", p)); held.append(s)
        print(base); break
    except OSError: pass
    finally:
        for s in held: s.close()'
}

eval "$("$ROOT/scripts/garage-test-server.sh" start "$TMP/garage" "$(port_run)" | sed 's/^/export /')"
echo "garage: $("$IMS_GARAGE_BIN" --version) at $IMS_TEST_S3_ENDPOINT"

head -c "$((SIZE_MIB << 20))" /dev/urandom >"$TMP/image"
MD5=$(md5sum "$TMP/image" | cut -d' ' -f1)
PASSWORD="bench-$RANDOM$RANDOM"

declare -A URL TOKEN
start_node() {
  local name=$1; shift
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$TMP/$name"
  env IMS_ADMIN_PASSWORD="$PASSWORD" IMS_LOG=warn "$@" \
    "$IMS_BIN" serve --data-dir "$TMP/$name" --listen "127.0.0.1:$port" \
    >"$TMP/$name.out" 2>"$TMP/$name.log" </dev/null &
  PIDS+=($!)
  URL[$name]="http://127.0.0.1:$port"
  for _ in $(seq 100); do
    grep -q "listening on" "$TMP/$name.out" 2>/dev/null && break
    sleep 0.1
  done
  TOKEN[$name]=$(curl -s -D - -o /dev/null -H 'Content-Type: application/json' \
    -d "{\"auth\":{\"identity\":{\"methods\":[\"password\"],\"password\":{\"user\":{\"name\":\"admin\",\"domain\":{\"name\":\"Default\"},\"password\":\"$PASSWORD\"}}},\"scope\":{\"project\":{\"name\":\"admin\",\"domain\":{\"name\":\"Default\"}}}}}" \
    "${URL[$name]}/identity/v3/auth/tokens" | awk -F': ' 'tolower($1) == "x-subject-token" {print $2}' | tr -d '\r')
  [[ -n ${TOKEN[$name]} ]] || { echo "node $name did not start:" >&2; tail -5 "$TMP/$name.log" >&2; exit 1; }
}

S3_ENV=(IMS_STORE_KIND=s3 IMS_STORE_S3_BUCKET="$IMS_TEST_S3_BUCKET" IMS_STORE_S3_PREFIX=bench
  IMS_STORE_S3_ENDPOINT="$IMS_TEST_S3_ENDPOINT" IMS_STORE_S3_REGION="$IMS_TEST_S3_REGION"
  IMS_STORE_S3_ACCESS_KEY_ID="$IMS_TEST_S3_ACCESS_KEY"
  IMS_STORE_S3_SECRET_ACCESS_KEY="$IMS_TEST_S3_SECRET_KEY" IMS_STORE_S3_ALLOW_HTTP=true)
start_node local
start_node s3 "${S3_ENV[@]}"
start_node s3-unsigned "${S3_ENV[@]/IMS_STORE_S3_PREFIX=bench/IMS_STORE_S3_PREFIX=bench-unsigned}" \
  IMS_STORE_S3_UNSIGNED_PAYLOAD=true
NODES=(local s3 s3-unsigned)

mibs() { python3 -c "print(f'{$SIZE_MIB / $1:.1f}')"; }

transfer() {
  local name=$1 url=${URL[$1]} token=${TOKEN[$1]} id t_up t_down checksum
  id=$(curl -sf -H "X-Auth-Token: $token" -H 'Content-Type: application/json' \
    -d '{"name":"bench","disk_format":"raw","container_format":"bare"}' "$url/v2/images" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
  t_up=$(curl -sf -o /dev/null -w '%{time_total}' -X PUT -H 'Expect:' -H "X-Auth-Token: $token" \
    -H 'Content-Type: application/octet-stream' -T "$TMP/image" "$url/v2/images/$id/file")
  checksum=$(curl -sf -H "X-Auth-Token: $token" "$url/v2/images/$id" |
    python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["status"], d["checksum"])')
  [[ $checksum == "active $MD5" ]] || { echo "$name: image not active with the right md5: $checksum" >&2; exit 1; }
  t_down=$(curl -sf -o /dev/null -w '%{time_total}' -H "X-Auth-Token: $token" "$url/v2/images/$id/file")
  curl -sf -o /dev/null -X DELETE -H "X-Auth-Token: $token" "$url/v2/images/$id"
  printf '%s\t%s\t%s\n' "$name" "$(mibs "$t_up")" "$(mibs "$t_down")" | tee -a "$TMP/results.tsv"
}

echo "size ${SIZE_MIB} MiB, $RUNS runs; node, upload MiB/s, download MiB/s:"
for ((run = 0; run < RUNS; run++)); do
  for ((i = 0; i < ${#NODES[@]}; i++)); do
    transfer "${NODES[$(((i + run) % ${#NODES[@]}))]}"
  done
done
echo "medians:"
python3 - "$TMP/results.tsv" <<'EOF'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
for node in dict.fromkeys(r[0] for r in rows):
    up = [float(r[1]) for r in rows if r[0] == node]
    down = [float(r[2]) for r in rows if r[0] == node]
    print(f"  {node:12} upload {statistics.median(up):7.1f} MiB/s   download {statistics.median(down):7.1f} MiB/s")
EOF
