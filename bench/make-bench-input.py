#!/usr/bin/env python3
"""make-bench-input.py OUT SIZE_MIB -- the convert benchmark's input: a raw disk image that
looks like a used OS disk. Per 64 MiB: 32 MiB of real files (the regular files of /usr/bin,
/usr/lib and /usr/share, sorted by path and concatenated: ELF binaries, libraries, text,
compressed docs), 16 MiB of random bytes (incompressible, like media or encrypted data) and a
16 MiB hole (sparse zeros). The /usr corpus wraps around when exhausted, so the content
depends on the machine's installed packages; sizes and the data/random/zero mix do not."""
import hashlib, os, sys

MiB = 1 << 20
CHUNK = 64 * MiB
REAL, RANDOM = 32 * MiB, 16 * MiB


def corpus():
    """Yields the bytes of /usr's regular files in sorted path order, forever."""
    paths = []
    for top in ("/usr/bin", "/usr/lib", "/usr/share"):
        for d, dirs, files in os.walk(top):
            dirs.sort()
            for f in sorted(files):
                p = os.path.join(d, f)
                if os.path.isfile(p) and not os.path.islink(p):
                    paths.append(p)
    while True:
        for p in paths:
            try:
                with open(p, "rb") as f:
                    while True:
                        b = f.read(4 * MiB)
                        if not b:
                            break
                        yield b
            except OSError:
                continue


def main():
    out, size = sys.argv[1], int(sys.argv[2]) * MiB
    feed, pending = corpus(), b""
    with open(out, "wb") as f:
        f.truncate(size)
        for c in range(size // CHUNK):
            base = c * CHUNK
            while len(pending) < REAL:
                pending += next(feed)
            os.pwrite(f.fileno(), pending[:REAL], base)
            pending = pending[REAL:]
            os.pwrite(f.fileno(), hashlib.shake_256(b"bench%d" % c).digest(RANDOM), base + REAL)


main()
