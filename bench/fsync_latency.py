#!/usr/bin/env python3
"""How long an fsync of a small write takes on the disk under a path: the floor under any
acknowledgement that waits for its commit to be on disk.

    python3 bench/fsync_latency.py [path]   # default: ./fsync-probe.bin, removed after

Writes 16 KB (four SQLite pages) at one of 256 places, fsyncs, sleeps 1 ms; 3,000 times.
"""
import os
import sys
import time

path = sys.argv[1] if len(sys.argv) > 1 else "fsync-probe.bin"
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
buf = os.urandom(4096 * 4)
lat = []
try:
    for i in range(3000):
        os.pwrite(fd, buf, (i % 256) * len(buf))
        t = time.perf_counter()
        os.fsync(fd)
        lat.append((time.perf_counter() - t) * 1000)
        time.sleep(0.001)
finally:
    os.close(fd)
    os.unlink(path)
lat.sort()


def q(p):
    return lat[min(len(lat) - 1, int(p * len(lat)))]


print(f"fsync of 16 KB on {path}: n={len(lat)} p50={q(0.5):.2f} ms p90={q(0.9):.2f} ms "
      f"p99={q(0.99):.2f} ms max={lat[-1]:.2f} ms")
