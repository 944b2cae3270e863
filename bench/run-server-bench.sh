#!/usr/bin/env bash
# Benchmark ims against a real Glance 33 on this host (not a test: nothing here pass/fails CI).
#   bench/run-server-bench.sh [--out FILE] [extra server_bench.py flags...]
# Builds `ims` (release), starts Glance with ../shared/peers/glance/start.sh (default no-auth
# flavor, 2 uWSGI workers, fresh /tmp/glance), starts `ims serve` on a free loopback port with a
# fresh data dir, runs bench/server_bench.py (interleaved runs), then stops both and cleans up.
# Knobs:
#   IMS_BENCH_SKIP_BUILD=1     use target/release/ims as it is
#   IMS_BENCH_WAIT_QUIET=600   seconds to wait for no cargo/rustc process before starting (0: don't)
#   IMS_BENCH_KEEP=1           keep the work dir (payload file, ims data dir, logs)
#   GLANCE_PEER=../shared/peers/glance
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEER="${GLANCE_PEER:-$ROOT/../shared/peers/glance}"
PEER="$(cd "$PEER" && pwd)"
OUT="$ROOT/target/server-bench.json"
if [[ "${1:-}" == --out ]]; then OUT="$2"; shift 2; fi

WORK="$(mktemp -d /tmp/ims-bench.XXXXXX)"
IMS_PID=""
GLANCE_STARTED=""
cleanup() {
  set +e
  if [[ -n "$IMS_PID" ]] && kill -0 "$IMS_PID" 2>/dev/null; then
    kill -TERM "$IMS_PID"
    for _ in $(seq 50); do kill -0 "$IMS_PID" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$IMS_PID" 2>/dev/null && kill -KILL "$IMS_PID"
    echo "stopped ims (pid $IMS_PID)"
  fi
  [[ -n "$GLANCE_STARTED" ]] && GLANCE_CLEAN=1 "$PEER/stop.sh"
  if [[ "${IMS_BENCH_KEEP:-0}" == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

builds() { { pgrep -x cargo; pgrep -x rustc; } | wc -l; }

if [[ "${IMS_BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$ROOT" && cargo build --release -p ims-cli)
fi
IMS_BIN="$ROOT/target/release/ims"

wait_quiet="${IMS_BENCH_WAIT_QUIET:-600}"
waited=0
while (( waited < wait_quiet )) && (( $(builds) > 0 )); do
  (( waited % 60 == 0 )) && echo "waiting for a quiet window: $(builds) cargo/rustc processes running (${waited}s)"
  sleep 10; waited=$((waited + 10))
done
echo "cargo/rustc processes at start: $(builds) (waited ${waited}s); loadavg: $(cut -d' ' -f1-3 /proc/loadavg)"

# Glance: default (no-auth) flavor; a Glance left running by someone else is not ours to use.
if [[ -f /tmp/glance/uwsgi.pid ]] && kill -0 "$(cat /tmp/glance/uwsgi.pid)" 2>/dev/null; then
  echo "a Glance is already running (pid $(cat /tmp/glance/uwsgi.pid)); stop it first" >&2; exit 1
fi
GLANCE_STARTED=1
env -u GLANCE_FLAVOR GLANCE_FRESH=1 "$PEER/start.sh"
GLANCE_PID="$(cat /tmp/glance/uwsgi.pid)"
GLANCE_URL="http://${GLANCE_BIND:-127.0.0.1:9292}"

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
IMS_URL="http://127.0.0.1:$PORT"
export IMS_ADMIN_PASSWORD="bench-$RANDOM$RANDOM"
mkdir -p "$WORK/ims-data"
IMS_LOG="${IMS_LOG:-warn}" "$IMS_BIN" serve --data-dir "$WORK/ims-data" --listen "127.0.0.1:$PORT" \
  >"$WORK/ims.out" 2>"$WORK/ims.log" </dev/null &
IMS_PID=$!
for _ in $(seq 150); do
  kill -0 "$IMS_PID" 2>/dev/null || { echo "ims serve exited:" >&2; tail -20 "$WORK/ims.log" >&2; exit 1; }
  grep -q "ims listening on $IMS_URL" "$WORK/ims.out" 2>/dev/null && break
  sleep 0.2
done
grep -q "ims listening on $IMS_URL" "$WORK/ims.out" || { echo "ims serve not ready after 30 s" >&2; exit 1; }
echo "ims up on $IMS_URL (pid $IMS_PID, data $WORK/ims-data); $("$IMS_BIN" --version)"
echo "ims source: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates || echo ' + uncommitted changes in crates/')"

mkdir -p "$(dirname "$OUT")"
python3 "$ROOT/bench/server_bench.py" --ims-url "$IMS_URL" --ims-pid "$IMS_PID" \
  --glance-url "$GLANCE_URL" --glance-pid "$GLANCE_PID" --big-file "$WORK/payload-1g.bin" --out "$OUT" "$@"
