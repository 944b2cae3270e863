#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ one at a time, each for a set wall time, and reports the
# CPU time and executions each got and the crashes it found, as a markdown table on stdout and in
# bench/results/fuzz-<date>.md.  Not part of scripts/test.sh (minutes per target); the crashes it
# finds become named regression tests (crates/*/tests/fuzz_regressions.rs), which are.
#
# Usage: scripts/fuzz.sh [-t SECONDS] [TARGET...]      (no TARGET: every target in fuzz/Cargo.toml)
#
# Environment (all optional):
#   FUZZ_SECONDS       wall seconds per target (default 180; -t overrides)
#   FUZZ_RSS_MB        libFuzzer -rss_limit_mb and -malloc_limit_mb (default 2048): a parser that
#                      allocates more for one input is a bug we want reported, not an OOM kill
#   FUZZ_TIMEOUT       libFuzzer -timeout, seconds one input may take (default 10)
#   FUZZ_SANITIZER     cargo fuzz --sanitizer (default address, cargo-fuzz's default)
#   FUZZ_MAX_RESTARTS  after a crash the target is restarted for the rest of its time, at most this
#                      many times (default 5), so one shallow bug does not end the run
#   FUZZ_SEED_MAX      fixtures larger than this many bytes are not used as seeds (default 1 MiB)
#   FUZZ_TARGET_DIR    cargo target dir of the instrumented build (default fuzz/target: a nightly
#                      sanitizer build must not share, or lock, the workspace's target dir)
#   IMS_FIXTURES_DIR   make-fixtures.sh output whose MANIFEST.tsv names each fixture's format
#                      (default target/test-work/fixtures; missing: generated seeds only)
#   IMS_BIN            the ims binary used to write the ZVHD/ZVHD2 seeds (default: cargo build)
#
# Layout: fuzz/seeds/<target> (generated once, small: a 1 MiB disk written by qemu-img or ims in
# several sub-formats, plus the small fixtures of that format), fuzz/corpus/<target> (libFuzzer's
# growing corpus, kept between runs), fuzz/artifacts/<target> (crash-*, oom-*, timeout-* inputs).
# Needs: rustup nightly, cargo-fuzz, qemu-img, mkfs.ext4, mkfs.vfat, mkntfs, sfdisk, sgdisk,
# genisoimage.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ="$ROOT/fuzz"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-180}"
RSS_MB="${FUZZ_RSS_MB:-2048}"
TIMEOUT="${FUZZ_TIMEOUT:-10}"
SANITIZER="${FUZZ_SANITIZER:-address}"
MAX_RESTARTS="${FUZZ_MAX_RESTARTS:-5}"
SEED_MAX="${FUZZ_SEED_MAX:-1048576}"
FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-$FUZZ/target}"
FIXTURES="${IMS_FIXTURES_DIR:-$ROOT/target/test-work/fixtures}"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"

if [[ "${1:-}" == "-t" ]]; then
  SECONDS_PER_TARGET="$2"
  shift 2
fi
if (($# > 0)); then
  TARGETS=("$@")
else
  mapfile -t TARGETS < <(sed -n 's/^name = "\(.*\)"$/\1/p' "$FUZZ/Cargo.toml" | grep -v '^ims-fuzz$')
fi

# The format name MANIFEST.tsv uses for each target's fixtures, and the largest input libFuzzer
# may build (-max_len): big enough for the target's largest seed, no bigger, because every byte
# of length costs time per execution.  VHDX regions are 1 MiB aligned, so its smallest image is
# 4 MiB; a VHD block is 2 MiB.
declare -A FORMAT=(
  [disk_qcow2]=qcow2 [disk_qcow]=qcow [disk_qed]=qed [disk_vmdk]=vmdk [disk_vdi]=vdi
  [disk_vhd]=vpc [disk_vhdx]=vhdx [disk_zvhd]=zvhd [disk_zvhd2]=zvhd2
)
declare -A MAX_LEN=(
  [disk_qcow2]=1200000 [disk_qcow]=1200000 [disk_qed]=1200000 [disk_vmdk]=1200000
  [disk_vdi]=1200000 [disk_vhd]=2200000 [disk_vhdx]=5300000 [disk_zvhd]=1200000
  [disk_zvhd2]=1200000 [probe]=1100000 [guest_partitions]=1100000
  [guest_filesystems]=1100000 [guest_inspect]=2200000
)

log() { printf '%s\n' "$*" >&2; }
die() {
  log "fuzz.sh: $*"
  exit 1
}

for target in "${TARGETS[@]}"; do
  [[ -n "${MAX_LEN[$target]:-}" ]] || die "unknown target '$target' (see fuzz/Cargo.toml)"
done

# --- seeds -------------------------------------------------------------------------------------

# The 1 MiB disk every disk seed is converted from: text at 0, a random 4 KiB at 64 KiB, a
# pattern at 512 KiB, zeros elsewhere (so the images hold data, zero and unallocated blocks).
base_raw() {
  local out="$1"
  truncate -s 1M "$out"
  printf 'IMS fuzz seed: sector 0\n' | dd of="$out" conv=notrunc status=none
  head -c 4096 /dev/urandom | dd of="$out" bs=4096 seek=16 conv=notrunc status=none
  awk 'BEGIN { for (i = 0; i < 400; i++) print "pattern at 512 KiB" }' |
    dd of="$out" bs=1024 seek=512 conv=notrunc status=none
}

ims_bin() {
  if [[ -z "${IMS_BIN:-}" ]]; then
    local target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
    (cd "$ROOT" && cargo build -q -p ims-cli) >&2
    IMS_BIN="$target_dir/debug/ims"
  fi
  printf '%s' "$IMS_BIN"
}

# qemu-img convert of the base disk into DIR/NAME with options.
qemu_seed() {
  local dir="$1" name="$2" fmt="$3" opts="$4"
  qemu-img convert -q -f raw -O "$fmt" ${opts:+-o "$opts"} "$WORK_SEEDS/base.raw" "$dir/$name"
}

fixture_seeds() {
  local dir="$1" fmt="$2"
  [[ -f "$FIXTURES/MANIFEST.tsv" ]] || return 0
  local category name
  while IFS=$'\t' read -r category name; do
    local path
    # make-fixtures.sh files a fixture under its category's directory, or another one
    # (malicious ones under unsafe/).
    for path in "$FIXTURES/$category/$name" "$FIXTURES"/*/"$name"; do
      if [[ -f "$path" ]]; then
        cp "$path" "$dir/fixture-$name"
        break
      fi
    done
  done < <(awk -F'\t' -v f="$fmt" -v max="$SEED_MAX" \
    'NR > 1 && (f == "" || $3 == f) && $4 <= max { print $1 "\t" $2 }' "$FIXTURES/MANIFEST.tsv")
}

# A disk image with an MBR or GPT and a populated ext4 or FAT partition at 64 KiB.
partitioned_seed() {
  local out="$1" table="$2" fs="$3" size="$4"
  local part="$WORK_SEEDS/part.img" tree="$WORK_SEEDS/tree"
  rm -rf "$tree" "$part"
  mkdir -p "$tree/etc" "$tree/EFI/BOOT"
  printf 'NAME="Fuzz Linux"\nID=fuzz\nVERSION_ID="1.0"\nPRETTY_NAME="Fuzz Linux 1.0"\n' \
    >"$tree/etc/os-release"
  truncate -s "$size" "$out"
  local sectors=$(($(stat -c %s "$out") / 512 - 128 - 40))
  case "$table" in
    mbr) printf 'label: dos\nstart=128, size=%d, type=83\n' "$sectors" | sfdisk -q "$out" ;;
    gpt) sgdisk -q -n 1:128:+"$sectors" -t 1:ef00 "$out" >/dev/null ;;
  esac
  truncate -s $((sectors * 512)) "$part"
  case "$fs" in
    ext4) mkfs.ext4 -q -F -b 1024 -N 32 -O ^has_journal,^resize_inode -d "$tree" "$part" ;;
    fat) mkfs.vfat -n FUZZ "$part" >/dev/null && MTOOLS_SKIP_CHECK=1 mcopy -s -i "$part" "$tree"/* ::/ 2>/dev/null || true ;;
  esac
  dd if="$part" of="$out" bs=512 seek=128 conv=notrunc status=none
  rm -rf "$tree" "$part"
}

# Fills fuzz/seeds/<target> once.
make_seeds() {
  local target="$1" dir="$FUZZ/seeds/$1"
  [[ -d "$dir" ]] && return 0
  local tmp="$dir.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp" "$WORK_SEEDS"
  [[ -f "$WORK_SEEDS/base.raw" ]] || base_raw "$WORK_SEEDS/base.raw"
  case "$target" in
    disk_qcow2)
      qemu_seed "$tmp" v2.qcow2 qcow2 compat=0.10,cluster_size=4096
      qemu_seed "$tmp" v3-c512.qcow2 qcow2 cluster_size=512
      qemu_seed "$tmp" v3-extl2.qcow2 qcow2 extended_l2=on,cluster_size=16384
      qemu_seed "$tmp" v3-refcount1.qcow2 qcow2 refcount_bits=1,cluster_size=4096
      qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=4096 "$WORK_SEEDS/base.raw" "$tmp/zlib.qcow2"
      qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=4096,compression_type=zstd \
        "$WORK_SEEDS/base.raw" "$tmp/zstd.qcow2"
      ;;
    disk_qcow)
      qemu_seed "$tmp" v1.qcow qcow ""
      # (qemu-img 7.2 exits 1 without a message on `convert -c -O qcow`: no compressed seed.)
      ;;
    disk_qed)
      qemu_seed "$tmp" c4k.qed qed cluster_size=4096,table_size=4
      qemu_seed "$tmp" default.qed qed ""
      ;;
    disk_vmdk)
      qemu_seed "$tmp" monolithicSparse.vmdk vmdk subformat=monolithicSparse
      qemu_seed "$tmp" streamOptimized.vmdk vmdk subformat=streamOptimized
      qemu_seed "$tmp" compat6.vmdk vmdk compat6=on
      ;;
    disk_vdi)
      qemu_seed "$tmp" dynamic.vdi vdi ""
      qemu_seed "$tmp" static.vdi vdi static=on
      ;;
    disk_vhd)
      qemu_seed "$tmp" dynamic.vhd vpc subformat=dynamic
      qemu_seed "$tmp" fixed.vhd vpc subformat=fixed
      qemu-img create -q -f vpc "$tmp/empty.vhd" 4M
      ;;
    disk_vhdx)
      "$(ims_bin)" img convert -O vhdx -o block_size=1M "$WORK_SEEDS/base.raw" "$tmp/ims.vhdx"
      qemu-img create -q -f vhdx -o block_size=1M,log_size=1M "$tmp/empty.vhdx" 4M
      # The 1 MiB header section alone: headers, region tables, no regions.
      head -c 1M "$tmp/ims.vhdx" >"$tmp/header-section.vhdx"
      ;;
    disk_zvhd | disk_zvhd2)
      local fmt="${FORMAT[$target]}"
      "$(ims_bin)" img convert -O "$fmt" "$WORK_SEEDS/base.raw" "$tmp/base.$fmt"
      ;;
    probe)
      # The first 64 KiB of every other target's seeds: what the probe reads.
      local t f
      for t in "${!FORMAT[@]}"; do
        make_seeds "$t"
        for f in "$FUZZ/seeds/$t"/*; do
          head -c 65536 "$f" >"$tmp/$t-$(basename "$f")"
        done
      done
      fixture_seeds "$tmp" raw
      ;;
    guest_partitions)
      partitioned_seed "$tmp/mbr.img" mbr ext4 1M
      partitioned_seed "$tmp/gpt.img" gpt fat 1M
      ;;
    guest_filesystems)
      # The first byte chooses the filesystem: 0 ext4, 1 xfs, 2 fat, 3 ntfs, 4 iso9660.
      local img="$WORK_SEEDS/fs.img" tree="$WORK_SEEDS/fstree"
      rm -rf "$tree" && mkdir -p "$tree/etc" "$tree/usr/bin"
      printf 'ID=fuzz\n' >"$tree/etc/os-release"
      printf '\x7fELF\x02\x01\x01' >"$tree/usr/bin/bash"
      rm -f "$img" && truncate -s 1M "$img"
      mkfs.ext4 -q -F -b 1024 -N 32 -O ^has_journal,^resize_inode -d "$tree" "$img"
      { printf '\x00'; cat "$img"; } >"$tmp/ext4.bin"
      rm -f "$img" && truncate -s 1M "$img" && mkfs.vfat "$img" >/dev/null
      MTOOLS_SKIP_CHECK=1 mcopy -s -i "$img" "$tree"/* ::/ 2>/dev/null || true
      { printf '\x02'; cat "$img"; } >"$tmp/fat.bin"
      rm -f "$img" && truncate -s 1M "$img" && mkntfs -q -F -s 512 -c 4096 "$img" >/dev/null 2>&1 &&
        { printf '\x03'; cat "$img"; } >"$tmp/ntfs.bin"
      genisoimage -quiet -R -J -o "$img.iso" "$tree" 2>/dev/null &&
        { printf '\x04'; cat "$img.iso"; } >"$tmp/iso9660.bin"
      rm -rf "$img" "$img.iso" "$tree"
      ;;
    guest_inspect)
      partitioned_seed "$tmp/mbr-ext4.img" mbr ext4 2M
      partitioned_seed "$tmp/gpt-fat.img" gpt fat 1M
      fixture_seeds "$tmp" raw
      ;;
  esac
  if [[ -n "${FORMAT[$target]:-}" ]]; then
    fixture_seeds "$tmp" "${FORMAT[$target]}"
  fi
  # Nothing bigger than the target's -max_len: libFuzzer would only read its head.
  find "$tmp" -type f -size +"${MAX_LEN[$target]}"c -delete
  mv "$tmp" "$dir"
}

# --- build -------------------------------------------------------------------------------------

log "building the fuzz targets (nightly, sanitizer $SANITIZER) into $FUZZ_TARGET_DIR"
(cd "$FUZZ" && cargo +nightly fuzz build --sanitizer "$SANITIZER" --target-dir "$FUZZ_TARGET_DIR") >&2
BIN_DIR="$FUZZ_TARGET_DIR/$TRIPLE/release"

WORK_SEEDS="$FUZZ/seeds/.work"
for target in "${TARGETS[@]}"; do
  make_seeds "$target"
done
rm -rf "$WORK_SEEDS"

# --- run ---------------------------------------------------------------------------------------

STAMP="$(date -u +%Y%m%d-%H%M)"
LOG_DIR="$FUZZ/logs/$STAMP"
mkdir -p "$LOG_DIR"
declare -A CPU_S=() EXECS=() CRASHES=() FOUND=()

for target in "${TARGETS[@]}"; do
  corpus="$FUZZ/corpus/$target"
  artifacts="$FUZZ/artifacts/$target"
  mkdir -p "$corpus" "$artifacts"
  before="$(ls "$artifacts")"
  cpu=0 execs=0 runs=0
  deadline=$(($(date +%s) + SECONDS_PER_TARGET))
  log "== $target: ${SECONDS_PER_TARGET}s, max_len ${MAX_LEN[$target]}, $(ls "$FUZZ/seeds/$target" | wc -l) seeds"
  while :; do
    left=$((deadline - $(date +%s)))
    ((left >= 5 && runs <= MAX_RESTARTS)) || break
    runs=$((runs + 1))
    run_log="$LOG_DIR/$target.$runs.log"
    set +e
    /usr/bin/time -f '%U %S' -o "$LOG_DIR/$target.$runs.time" \
      "$BIN_DIR/$target" -max_total_time="$left" -rss_limit_mb="$RSS_MB" \
      -malloc_limit_mb="$RSS_MB" -timeout="$TIMEOUT" -max_len="${MAX_LEN[$target]}" \
      -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus" "$FUZZ/seeds/$target" \
      >"$run_log" 2>&1
    rc=$?
    set -e
    # time(1) puts "Command exited with non-zero status N" before the numbers after a crash.
    read -r user sys < <(tail -n 1 "$LOG_DIR/$target.$runs.time") || user=0 sys=0
    cpu="$(awk -v a="$cpu" -v u="${user:-0}" -v s="${sys:-0}" 'BEGIN { print a + u + s }')"
    n="$(sed -n 's/^stat::number_of_executed_units: *//p' "$run_log" | tail -1)"
    execs=$((execs + ${n:-0}))
    ((rc == 0)) && break
    log "   run $runs ended with status $rc: $(grep -m1 -E '^==[0-9]+== ?ERROR|^SUMMARY|panicked at' "$run_log" || echo 'see log')"
  done
  new="$(comm -13 <(printf '%s\n' "$before") <(ls "$artifacts") | sed '/^$/d')"
  CPU_S[$target]="$cpu"
  EXECS[$target]="$execs"
  CRASHES[$target]="$(printf '%s' "$new" | grep -c . || true)"
  FOUND[$target]="$(printf '%s' "$new" | sed "s|^|fuzz/artifacts/$target/|" | paste -sd' ' -)"
  log "   $target: cpu ${cpu}s, $execs executions, ${CRASHES[$target]} new artifacts"
done

# --- report ------------------------------------------------------------------------------------

REPORT="$ROOT/bench/results/fuzz-$STAMP.md"
mkdir -p "$(dirname "$REPORT")"
{
  printf '# Fuzzing run %s\n\n' "$STAMP"
  printf 'Command: `scripts/fuzz.sh -t %s %s`; commit %s; %s cores (`nproc`); sanitizer %s;\n' \
    "$SECONDS_PER_TARGET" "${*:-}" "$(git -C "$ROOT" rev-parse --short HEAD)" "$(nproc)" "$SANITIZER"
  printf -- '-rss_limit_mb=%s, -malloc_limit_mb=%s, -timeout=%s s; one target at a time.\n\n' \
    "$RSS_MB" "$RSS_MB" "$TIMEOUT"
  printf '| target | CPU-minutes | executions | exec/s (CPU) | max_len | crashes | artifacts |\n'
  printf '|---|---:|---:|---:|---:|---:|---|\n'
  for target in "${TARGETS[@]}"; do
    awk -v t="$target" -v c="${CPU_S[$target]}" -v e="${EXECS[$target]}" \
      -v m="${MAX_LEN[$target]}" -v k="${CRASHES[$target]}" -v a="${FOUND[$target]:--}" \
      'BEGIN { printf "| %s | %.2f | %d | %d | %d | %d | %s |\n", t, c / 60, e, (c > 0 ? e / c : 0), m, k, a }'
  done
} | tee "$REPORT"
log "report: $REPORT; libFuzzer logs: $LOG_DIR"
