#!/usr/bin/env bash
# make-btrfs-fixture.sh OUT.img.zst
#
# Builds the Btrfs fixture of tests/btrfs.rs that `mkfs.btrfs --rootdir` cannot make (btrfs-progs
# 6.2 has no --subvol or --compress): the OS lives in subvolume `@`, the default subvolume is a
# snapshot `@snapshots/1` whose fstab still mounts `subvol=@` (so inspection must follow fstab),
# files are stored zlib-, zstd- and LZO-compressed (regular and inline extents). Needs root and a
# loop device; the output (zstd of a sparse 114 MiB image, ~70 KiB) is committed, so the test
# itself needs neither. Re-run only to change the fixture, then update tests/btrfs.rs.
set -euo pipefail
OUT=${1:?usage: make-btrfs-fixture.sh OUT.img.zst}
WORK=$(mktemp -d)
trap 'umount "$WORK/mnt" 2>/dev/null || true; rm -rf "$WORK"' EXIT
IMG=$WORK/btrfs.img
truncate -s 114M "$IMG"
mkfs.btrfs -q -f -U 5eed0000-0000-4000-8000-000000000001 -L fixture "$IMG"
mkdir "$WORK/mnt"
mount -o loop,compress-force=zstd "$IMG" "$WORK/mnt"
M=$WORK/mnt
btrfs -q subvolume create "$M/@"
btrfs -q subvolume create "$M/@home"
mkdir -p "$M/@/etc" "$M/@/usr/lib" "$M/@/usr/bin" "$M/@/boot" "$M/@/lib/modules/6.8.0-btrfs" \
  "$M/@/etc/cloud" "$M/@/var/lib/rpm"
# Compressible text: os-release inline + zstd, the rest of the files below.
{
  echo 'NAME="Fedora Linux"'
  echo 'VERSION="40 (Cloud Edition)"'
  echo 'ID=fedora'
  echo 'VERSION_ID=40'
  echo 'PRETTY_NAME="Fedora Linux 40 (Cloud Edition)"'
  for i in $(seq 1 20); do echo "# padding line $i so that the file compresses"; done
} >"$M/@/usr/lib/os-release"
ln -s ../usr/lib/os-release "$M/@/etc/os-release"
echo 'UUID=5eed0000-0000-4000-8000-000000000001 / btrfs subvol=@,compress=zstd:1 0 0' >"$M/@/etc/fstab"
echo 'UUID=5eed0000-0000-4000-8000-000000000001 /home btrfs subvol=@home 0 0' >>"$M/@/etc/fstab"
echo 'btrfs-guest' >"$M/@/etc/hostname"
echo 'datasource_list: [ NoCloud ]' >"$M/@/etc/cloud/cloud.cfg"
touch "$M/@/boot/vmlinuz-6.8.0-btrfs"
# A 64-bit x86 ELF header followed by 300 KiB of compressible text: regular zstd extents
# (three of them: Btrfs compresses 128 KiB at a time).
python3 - "$M/@/usr/bin/bash" <<'PY'
import struct, sys
hdr = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack("<HHI", 2, 0x3e, 1)
body = b"".join(b"line %06d of a compressible executable\n" % i for i in range(7800))
open(sys.argv[1], "wb").write(hdr + b"\0" * (64 - len(hdr)) + body)
PY
sync
mount -o remount,compress-force=zlib "$M"
python3 -c 'import sys; sys.stdout.write("".join("zlib line %06d\n" % i for i in range(20000)))' >"$M/@/usr/lib/zlib.txt"
sync
mount -o remount,compress-force=lzo "$M"
python3 -c 'import sys; sys.stdout.write("".join("lzo line %06d\n" % i for i in range(20000)))' >"$M/@/usr/lib/lzo.txt"
sync
mount -o remount,compress=no "$M"
head -c 24000 /dev/urandom >"$M/@/usr/lib/random.bin"
sha256sum "$M/@/usr/lib/random.bin" | cut -d' ' -f1 >"$M/@/usr/lib/random.sha256"
sync
# The default subvolume: a snapshot whose fstab points back at @ and whose hostname differs.
mkdir "$M/@snapshots"
btrfs -q subvolume snapshot "$M/@" "$M/@snapshots/1"
echo 'old-snapshot' >"$M/@snapshots/1/etc/hostname"
btrfs -q subvolume set-default "$M/@snapshots/1"
sync
umount "$M"
btrfs check --readonly "$IMG" >/dev/null
zstd -q -19 -f "$IMG" -o "$OUT"
ls -l "$OUT"
