#!/usr/bin/env bash
# convert-bench.sh [WORKDIR] -- `ims img convert` vs `qemu-img convert`, interleaved, same input.
# Not a timed test: prints MiB/s (virtual size / wall time), medians of RUNS runs, the ratio
# ims/qemu, and peak RSS (/usr/bin/time -v). Input like formats.md §10: 1 GiB raw, per 64 MiB
# 40 MiB random + 16 MiB text + 8 MiB hole. Then a 10 GiB sparse-ish input for the RSS check.
# Needs: a release `ims` (IMS_BIN, default target/release/ims), qemu-img, python3, GNU time.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/tmp/ims-convert-bench}
IMS=${IMS_BIN:-$ROOT/target/release/ims}
RUNS=${RUNS:-3}
SIZE_MIB=${SIZE_MIB:-1024}
mkdir -p "$W"
trap 'rm -f "$W"/out.* "$W"/src.*' EXIT
SRC=$W/src.raw
python3 - "$SRC" "$SIZE_MIB" <<'PY'
import hashlib, os, sys
MiB = 1 << 20
size = int(sys.argv[2])
line = b"".join(b"%08d quick brown fox jumps over the lazy dog; disk image benchmark text\n" % i
                for i in range(250000))
with open(sys.argv[1], "wb") as f:
    f.truncate(size * MiB)
    for c in range(size // 64):
        base = c * 64 * MiB
        os.pwrite(f.fileno(), hashlib.shake_256(b"bench%d" % c).digest(40 * MiB), base)
        os.pwrite(f.fileno(), line[:16 * MiB], base + 40 * MiB)
PY
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# run TOOL OUT CMD... -> prints "seconds peak_kib"
run() {
  local out=$1; shift
  rm -f "$out"; sync
  /usr/bin/time -f '%e %M' -o "$W/time.txt" "$@" >/dev/null 2>&1 || { echo "FAILED: $*" >&2; echo "nan 0"; return; }
  rm -f "$out"
  cat "$W/time.txt"
}
# Sources in every format both tools read, made once by qemu-img.
declare -A SOURCES=([raw]=$SRC)
for f in qcow2 vmdk vpc vhdx vdi; do
  qemu-img convert -O "$f" "$SRC" "$W/src.$f" && SOURCES[$f]=$W/src.$f
done
qemu-img convert -c -O qcow2 "$SRC" "$W/src.qcow2z" && SOURCES[qcow2-zlib]=$W/src.qcow2z
# Targets: label | ims args | qemu args (empty = no qemu equivalent).
TARGETS=(
  "raw|-O raw|-O raw"
  "qcow2|-O qcow2|-O qcow2"
  "qcow2 -c zlib|-O qcow2 -c|-O qcow2 -c"
  "qcow2 -c zstd|-O qcow2 -c -o compression_type=zstd|-O qcow2 -c -o compression_type=zstd"
  "vmdk|-O vmdk|-O vmdk"
  "vmdk streamOptimized|-O vmdk -o subformat=streamOptimized|-O vmdk -o subformat=streamOptimized"
  "vhd|-O vhd|-O vpc"
  "vhdx|-O vhdx|-O vhdx"
  "vdi|-O vdi|-O vdi"
  # ZVHD (one zlib stream) vs qemu's nearest zlib output, qcow2 -c; ZVHD2 zstd vs qcow2 zstd.
  "zvhd (vs qcow2 -c)|-O zvhd|-O qcow2 -c"
  "zvhd2 zstd (vs qcow2 zstd)|-O zvhd2 -o compression_type=zstd|-O qcow2 -c -o compression_type=zstd"
)
printf '%-14s %-28s %10s %10s %7s %10s %10s\n' source target ims_MiB/s qemu_MiB/s ratio ims_RSS qemu_RSS
for s in raw qcow2 qcow2-zlib vmdk vpc vhdx vdi; do
  [[ -n ${SOURCES[$s]:-} ]] || continue
  for t in "${TARGETS[@]}"; do
    IFS='|' read -r label iargs qargs <<<"$t"
    it=(); qt=(); ir=(); qr=()
    for _ in $(seq "$RUNS"); do
      read -r a b < <(run "$W/out.i" "$IMS" img convert $iargs "${SOURCES[$s]}" "$W/out.i")
      it+=("$a"); ir+=("$b")
      read -r a b < <(run "$W/out.q" qemu-img convert $qargs "${SOURCES[$s]}" "$W/out.q")
      qt+=("$a"); qr+=("$b")
    done
    ti=$(printf '%s\n' "${it[@]}" | median); tq=$(printf '%s\n' "${qt[@]}" | median)
    ri=$(printf '%s\n' "${ir[@]}" | sort -n | tail -1); rq=$(printf '%s\n' "${qr[@]}" | sort -n | tail -1)
    awk -v s="$s" -v l="$label" -v ti="$ti" -v tq="$tq" -v ri="$ri" -v rq="$rq" -v m="$SIZE_MIB" 'BEGIN {
      if (ti == "nan" || ti + 0 == 0) { printf "%-14s %-28s %10s %10.0f %7s %9dK %9dK\n", s, l, "fail", m/tq, "-", ri, rq; exit }
      printf "%-14s %-28s %10.0f %10.0f %6.2fx %9dK %9dK\n", s, l, m/ti, m/tq, tq/ti, ri, rq }'
  done
done
# Flat RSS on a 10 GiB input (sparse: 1 GiB of data repeated by holes is enough to stream).
BIG=$W/src.big
truncate -s 10G "$BIG"
dd if="$SRC" of="$BIG" bs=4M conv=notrunc status=none
dd if="$SRC" of="$BIG" bs=4M seek=2048 conv=notrunc status=none
read -r t rss < <(run "$W/out.big" "$IMS" img convert -O qcow2 "$BIG" "$W/out.big")
echo "10 GiB raw -> qcow2: ${t}s, peak RSS ${rss} KiB"
rm -f "$BIG"
