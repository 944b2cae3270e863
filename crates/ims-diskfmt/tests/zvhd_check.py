#!/usr/bin/env python3
"""Independent ZVHD / ZVHD2 checker (formats.md 8.3-8.4), used by tests/vhd_family.rs.

Reads IMAGE with nothing but the standard library (zlib) and the `zstd` command line tool,
checks the layout, and prints the SHA-256 of the first orig_size bytes of the virtual disk,
then orig_size and curr_size. ZVHD records are fed to ONE zlib decompressor, so a stream that
does not continue across records fails here.
"""
import hashlib
import struct
import subprocess
import sys
import zlib

BLOCK = 2 << 20


def footer(buf, cookie):
    assert buf[:8] == cookie, "bad cookie %r" % buf[:8]
    f = bytearray(buf[:512])
    stored = struct.unpack_from("<I", f, 64)[0]
    f[64:68] = b"\0\0\0\0"
    assert stored == (~sum(f)) & 0xFFFFFFFF, "footer checksum"
    orig, curr = struct.unpack_from("<QQ", buf, 40)
    assert curr % (1 << 30) == 0 and orig <= curr < orig + (1 << 30), "sizes"
    return orig, curr


def record(data, off):
    assert data[off:off + 12] == b"hwstream bg\0", "record prefix at %d" % off
    size, blk = struct.unpack_from("<II", data, off + 12)
    n = (48 + size + 4 + 4095) // 4096 * 4096
    assert data[off + n - 4:off + n] == b"end\0", "record end at %d" % off
    return blk, data[off + 48:off + 48 + size], n


def zvhd(data):
    orig, curr = footer(data[:4096], b"stream\0\0")
    out = bytearray(orig + BLOCK)
    d = zlib.decompressobj()
    off, last = 4096, -1
    while data[off:off + 8] != b"stream\0\0":
        blk, payload, n = record(data, off)
        assert blk > last, "blocks out of order"
        block = d.decompress(payload)
        assert len(block) == BLOCK, "record at %d inflates to %d bytes" % (off, len(block))
        out[blk * BLOCK:(blk + 1) * BLOCK] = block
        off, last = off + n, blk
    footer(data[off:off + 4096], b"stream\0\0")
    assert off + 4096 == len(data), "bytes after the trailing header"
    return orig, curr, bytes(out[:orig])


def zvhd2(data):
    orig, curr = footer(data[-4096:], b"z2strm\0\0")
    f = data[-4096:]
    bs, maxblk, index_lba, bitmap_lba = struct.unpack_from("<IIQQ", f, 88)
    nonzero, method = struct.unpack_from("<I", f, 136)[0], f[141]
    assert bs == BLOCK and maxblk == (orig + bs - 1) // bs
    out = bytearray(maxblk * bs)
    k = 0
    for blk in range(maxblk):
        seg, bit = divmod(blk, 32768)
        if not data[bitmap_lba + seg * 4096 + bit // 8] & (1 << (bit % 8)):
            continue
        off, num, size = struct.unpack_from("<QII", data, index_lba + 16 * k)
        assert num == blk, "index entry %d names block %d, bitmap says %d" % (k, num, blk)
        rblk, payload, n = record(data, off)
        assert rblk == blk and n == size
        if method == 0:
            block = zlib.decompressobj().decompress(payload)
        else:
            block = subprocess.run(["zstd", "-d", "-c", "-q"], input=payload,
                                   stdout=subprocess.PIPE, check=True).stdout
        assert len(block) == bs, "block %d inflates to %d bytes" % (blk, len(block))
        out[blk * bs:(blk + 1) * bs] = block
        k += 1
    assert k == nonzero, "bitmap has %d blocks, footer says %d" % (k, nonzero)
    return orig, curr, bytes(out[:orig])


def main():
    with open(sys.argv[1], "rb") as fh:
        data = fh.read()
    orig, curr, content = zvhd(data) if data[:8] == b"stream\0\0" else zvhd2(data)
    print(hashlib.sha256(content).hexdigest(), orig, curr)


if __name__ == "__main__":
    main()
