#!/usr/bin/env bash
# guest-inspect-bench.sh [IMAGES_DIR]
#
# `ims img inspect` vs libguestfs' `virt-inspector` on the same images, same machine: per-image
# wall-clock times (ims: median of $RUNS process runs, plus the in-process time it reports;
# virt-inspector: one run, it boots an appliance under TCG here), the ratio, and both answers
# (distro / version / arch) side by side. Writes a TSV under bench/results/.
#
# IMAGES_DIR defaults to $IMS_OS_IMAGES_DIR, else /tmp/osimg (make-os-images.sh's OUTDIR).
# Environment: IMS_BIN (default target/release/ims, built if missing), RUNS (default 5),
# VIRT=0 to skip virt-inspector (install: apt-get install libguestfs-tools, plus a host kernel
# in /boot; see ../shared/fixtures/os-images.md §2).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR=${1:-${IMS_OS_IMAGES_DIR:-/tmp/osimg}}
IMS_BIN=${IMS_BIN:-$ROOT/target/release/ims}
RUNS=${RUNS:-5}
VIRT=${VIRT:-1}
# /dev/kvm here is nested PVM and stock kernels hang under it: libguestfs must use TCG.
export LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct}
export LIBGUESTFS_BACKEND_SETTINGS=${LIBGUESTFS_BACKEND_SETTINGS:-force_tcg}
export LIBGUESTFS_CACHEDIR=${LIBGUESTFS_CACHEDIR:-/tmp/guestfs-cache}
mkdir -p "$LIBGUESTFS_CACHEDIR"   # without it libguestfs logged a realpath error and the run hung here

[[ -x $IMS_BIN ]] || (cd "$ROOT" && cargo build --release -p ims-cli)
if [[ $VIRT == 1 ]] && ! command -v virt-inspector >/dev/null; then
  echo "virt-inspector not installed: running ims only (VIRT=0)" >&2
  VIRT=0
fi
mkdir -p "$ROOT/bench/results"
OUT="$ROOT/bench/results/guest-inspect-$(date -u +%Y%m%d-%H%M).tsv"
now_ns() { date +%s%N; }

# distro/version/arch from virt-inspector XML, or ims JSON.
virt_facts() {
  python3 -c '
import sys, xml.etree.ElementTree as ET
try:
    os_ = ET.parse(sys.argv[1]).getroot().find("operatingsystem")
except Exception:
    os_ = None
if os_ is None:
    print("-"); sys.exit()
g = lambda k: (os_.findtext(k) or "").strip()
v = g("major_version") + "." + g("minor_version")
print("%s/%s/%s" % (g("distro") or "?", v, g("arch")))' "$1"
}
ims_facts() {
  python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print("%s/%s/%s/%s" % (d.get("distro") or "?", d.get("version") or "?", d.get("arch") or "?", d.get("firmware")))
print(d.get("elapsed_ms"))' "$1"
}

printf 'image\tims_ms\tims_inproc_ms\tvirt_inspector_s\tratio\tims_answer\tvirt_inspector_answer\n' | tee "$OUT"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for img in "$DIR"/*.raw; do
  name=$(basename "$img")
  times=()
  for _ in $(seq "$RUNS"); do
    t0=$(now_ns)
    "$IMS_BIN" img inspect --format json "$img" >"$tmp/ims.json"
    times+=($(( ($(now_ns) - t0) / 1000 )))
  done
  ims_us=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p")
  mapfile -t f < <(ims_facts "$tmp/ims.json")
  ims_ms=$(awk -v u="$ims_us" 'BEGIN{printf "%.1f", u/1000}')
  virt_s=- ratio=- vans=-
  if [[ $VIRT == 1 ]]; then
    t0=$(now_ns)
    virt-inspector --format=raw --no-applications --no-icon -a "$img" >"$tmp/virt.xml" 2>"$tmp/virt.err" || true
    virt_us=$(( ($(now_ns) - t0) / 1000 ))
    virt_s=$(awk -v u="$virt_us" 'BEGIN{printf "%.1f", u/1e6}')
    ratio=$(awk -v v="$virt_us" -v i="$ims_us" 'BEGIN{printf "%.0f", v/i}')
    vans=$(virt_facts "$tmp/virt.xml")
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$ims_ms" "${f[1]}" "$virt_s" "$ratio" "${f[0]}" "$vans" | tee -a "$OUT"
done
echo "results: $OUT" >&2
