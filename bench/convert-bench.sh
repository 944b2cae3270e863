#!/usr/bin/env bash
# convert-bench.sh [WORKDIR] -- `ims img convert` vs `qemu-img convert` on the same input,
# interleaved (ims, qemu, qemu, ims, ims, qemu ... per pair: who goes first alternates), every source x target pair.
# Not a timed test: prints the median wall time of RUNS runs per tool, the ratio qemu/ims
# (> 1 = ims faster), CPU seconds (user+sys, median) and peak RSS (/usr/bin/time), and the
# 1-minute load average when the pair started; then peak RSS on a 10 GiB input.
#
# Disk space: the input, one source and one output at a time (~3 GiB); the 10 GiB step needs
# ~6 GiB (2.3 GiB allocated input + its qcow2 copy + an output).
# Input (bench/make-bench-input.py): SIZE_MIB raw, per 64 MiB 32 MiB of real /usr files,
# 16 MiB random, 16 MiB hole. Sources are made from it by qemu-img.
# ZVHD/ZVHD2 have no qemu-img writer: their reference is qemu-img's qcow2 -c zlib (ZVHD) or
# qcow2 -c zstd (ZVHD2) time measured for the same source in the same repetition.
#
# Env: IMS_BIN (default target/release/ims), RUNS (3), SIZE_MIB (1024), BIG_GIB (10),
#      SOURCES / TARGETS (space-separated subsets of the labels below), SKIP_BIG=1.
# Raw per-run lines go to $W/runs.tsv; the table to stdout.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/tmp/ims-convert-bench}
IMS=${IMS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/ims}
RUNS=${RUNS:-3}
SIZE_MIB=${SIZE_MIB:-1024}
BIG_GIB=${BIG_GIB:-10}
mkdir -p "$W"
trap 'rm -f "$W"/conv.* "$W"/src.* "$W"/big.*' EXIT
SRC=$W/src.raw
python3 "$ROOT/bench/make-bench-input.py" "$SRC" "$SIZE_MIB"
sync

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores; $(qemu-img --version | head -1)"
echo "# ims: $IMS ($("$IMS" --version 2>/dev/null || echo '?')); input ${SIZE_MIB} MiB, $(du -k "$SRC" | cut -f1) KiB allocated"
echo "# load at start: $(cut -d' ' -f1-3 /proc/loadavg)"

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# run OUT CMD... -> prints "wall cpu peak_kib" (cpu = user + sys); "nan nan 0" on failure.
run() {
  local out=$1; shift
  rm -f "$out"; sync
  if ! /usr/bin/time -f '%e %U %S %M' -o "$W/time.txt" "$@" >/dev/null 2>"$W/err.txt"; then
    echo "FAILED: $* ($(tail -c 300 "$W/err.txt"))" >&2; echo "nan nan 0"; rm -f "$out"; return
  fi
  rm -f "$out"
  awk '{printf "%s %.2f %s\n", $1, $2 + $3, $4}' "$W/time.txt"
}

# Sources: label -> qemu-img convert arguments that make it from the raw input.
declare -A MAKE=(
  [raw]=""
  [qcow2]="-O qcow2"
  [qcow2-zlib]="-c -O qcow2"
  [vmdk]="-O vmdk"
  [vmdk-stream]="-O vmdk -o subformat=streamOptimized"
  [vhd]="-O vpc"
  [vhdx]="-O vhdx"
  [vdi]="-O vdi"
  [qed]="-O qed"
)
SOURCE_ORDER=(${SOURCES:-raw qcow2 qcow2-zlib vmdk vmdk-stream vhd vhdx vdi qed})

# Targets: label | ims args | qemu args ("=label" = reuse that label's qemu time) | goal.
ALL_TARGETS=(
  "raw|-O raw|-O raw|1.0"
  "qcow2|-O qcow2|-O qcow2|1.0"
  "qcow2-zlib|-O qcow2 -c|-O qcow2 -c|3.0"
  "qcow2-zstd|-O qcow2 -c -o compression_type=zstd|-O qcow2 -c -o compression_type=zstd|1.5"
  "vmdk|-O vmdk|-O vmdk|1.0"
  "vmdk-stream|-O vmdk -o subformat=streamOptimized|-O vmdk -o subformat=streamOptimized|3.0"
  "vhd|-O vhd|-O vpc|1.0"
  "vhdx|-O vhdx|-O vhdx|1.0"
  "vdi|-O vdi|-O vdi|1.0"
  "qed|-O qed|-O qed|1.0"
  "zvhd|-O zvhd|=qcow2-zlib|3.0"
  "zvhd2|-O zvhd2 -o compression_type=zstd|=qcow2-zstd|1.5"
)
want() { [[ -z ${TARGETS:-} ]] || [[ " $TARGETS " == *" $1 "* ]]; }

RUNS_TSV=$W/runs.tsv
printf 'source\ttarget\ttool\trep\twall_s\tcpu_s\trss_kib\tload1\n' >"$RUNS_TSV"
printf '%-12s %-12s %8s %8s %7s %5s %7s %7s %8s %8s %5s  %s\n' source target ims_s qemu_s ratio goal \
  ims_cpu qemu_cpu ims_RSS qemu_RSS load verdict
declare -A QT   # qemu times per "source target rep" for the reused references
for s in "${SOURCE_ORDER[@]}"; do
  # One source on disk at a time (disk space): made by qemu-img, deleted after its row.
  file=$SRC
  if [[ $s != raw ]]; then file=$W/src.$s; qemu-img convert ${MAKE[$s]} "$SRC" "$file"; sync; fi
  for t in "${ALL_TARGETS[@]}"; do
    IFS='|' read -r label iargs qargs goal <<<"$t"
    want "$label" || continue
    load=$(cut -d' ' -f1 /proc/loadavg)
    it=(); ic=(); ir=0; qt=(); qc=(); qr=0
    for rep in $(seq "$RUNS"); do
      # The tool that runs second finds the first one's output just deleted (page-cache
      # reclaim, the VM's free-page reporting): alternate who goes first.
      order="ims qemu"; ((rep % 2 == 0)) && order="qemu ims"
      for tool in $order; do
        if [[ $tool == ims ]]; then
          read -r a c r < <(run "$W/conv.ims" "$IMS" img convert $iargs "$file" "$W/conv.ims")
          it+=("$a"); ic+=("$c"); ((r > ir)) && ir=$r
          printf '%s\t%s\tims\t%s\t%s\t%s\t%s\t%s\n' "$s" "$label" "$rep" "$a" "$c" "$r" "$load" >>"$RUNS_TSV"
          continue
        fi
        if [[ $qargs == =* ]]; then
          read -r a c r <<<"${QT[$s ${qargs#=} $rep]:-nan nan 0}"
        else
          read -r a c r < <(run "$W/conv.qemu" qemu-img convert $qargs "$file" "$W/conv.qemu")
          QT[$s $label $rep]="$a $c $r"
          printf '%s\t%s\tqemu\t%s\t%s\t%s\t%s\t%s\n' "$s" "$label" "$rep" "$a" "$c" "$r" "$load" >>"$RUNS_TSV"
        fi
        qt+=("$a"); qc+=("$c"); ((r > qr)) && qr=$r
      done
    done
    ti=$(printf '%s\n' "${it[@]}" | median); tq=$(printf '%s\n' "${qt[@]}" | median)
    ci=$(printf '%s\n' "${ic[@]}" | median); cq=$(printf '%s\n' "${qc[@]}" | median)
    ref=""; [[ $qargs == =* ]] && ref=" (ref: qemu ${qargs#=})"
    awk -v s="$s" -v l="$label" -v ti="$ti" -v tq="$tq" -v ci="$ci" -v cq="$cq" -v ri="$ir" \
        -v rq="$qr" -v g="$goal" -v ld="$load" -v ref="$ref" 'BEGIN {
      if (ti == "nan" || tq == "nan") { printf "%-12s %-12s %8s %8s   fail\n", s, l, ti, tq; exit }
      r = (ti > 0 ? tq / ti : 0)
      printf "%-12s %-12s %8.2f %8.2f %6.2fx %4.1fx %7.2f %7.2f %7dK %7dK %5.2f  %s%s\n", s, l, ti, tq,
        r, g, ci, cq, ri, rq, ld, (r >= g ? "met" : "MISSED"), ref }'
  done
  if [[ $s != raw ]]; then rm -f "$file"; fi
done

[[ -n ${SKIP_BIG:-} ]] && exit 0
# Peak RSS on a BIG_GIB input: three copies of the 1 GiB input (at 0, at the middle and at
# the end; > 2 GiB of data), holes elsewhere.
BIG=$W/big.raw
truncate -s "${BIG_GIB}G" "$BIG"
for at in 0 $((BIG_GIB * 512)) $((BIG_GIB * 1024 - SIZE_MIB)); do
  dd if="$SRC" of="$BIG" bs=1M seek="$at" conv=notrunc status=none
done
sync
echo "# ${BIG_GIB} GiB input: $(du -k "$BIG" | cut -f1) KiB allocated; load $(cut -d' ' -f1 /proc/loadavg)"
printf '%-44s %8s %8s %9s %9s\n' pair ims_s qemu_s ims_RSS qemu_RSS
big() {   # big LABEL FILE IMS_ARGS QEMU_ARGS
  local a r b q
  read -r a _ r < <(run "$W/conv.ims" "$IMS" img convert $3 "$2" "$W/conv.ims")
  if [[ -n $4 ]]; then read -r b _ q < <(run "$W/conv.qemu" qemu-img convert $4 "$2" "$W/conv.qemu")
  else b=-; q=0; fi
  printf '%-44s %8s %8s %8dK %8dK\n' "$1" "$a" "$b" "$r" "$q"
  printf '%s\tbig\tims\t1\t%s\t-\t%s\t-\n%s\tbig\tqemu\t1\t%s\t-\t%s\t-\n' "$1" "$a" "$r" "$1" "$b" "$q" >>"$RUNS_TSV"
}
big "raw -> qcow2" "$BIG" "-O qcow2" "-O qcow2"
big "raw -> qcow2 -c zstd" "$BIG" "-O qcow2 -c -o compression_type=zstd" "-O qcow2 -c -o compression_type=zstd"
big "raw -> vmdk streamOptimized" "$BIG" "-O vmdk -o subformat=streamOptimized" "-O vmdk -o subformat=streamOptimized"
big "raw -> zvhd2 zstd (no qemu writer)" "$BIG" "-O zvhd2 -o compression_type=zstd" ""
qemu-img convert -O qcow2 "$BIG" "$W/big.qcow2"
rm -f "$BIG"
big "qcow2 -> raw" "$W/big.qcow2" "-O raw" "-O raw"
big "qcow2 -> vhdx" "$W/big.qcow2" "-O vhdx" "-O vhdx"
