"""The file source's hot path on a real fanotify group: events/s and open -> event latency.

Run as root: ``python bench/bench_fanotify_source.py [seconds]``. No container needed: the
benchmark makes itself a private mount namespace (``unshare(CLONE_NEWNS)``; the host's
mounts are untouched), mounts a tmpfs there, and puts the same mount mark on it that the
source puts on a container's mounts. Two numbers:

- ``throughput``: a child process opens, reads and closes files in that mount as fast as it
  can for ``seconds`` (bounded: at most 400k opens) while this process reads the group and
  runs :class:`coi_watch.sources.fanotify.FanotifyTracker` on every buffer: kernel records
  per second and ``FileAccess`` events published per second, each with ``readlink`` path
  resolution, ``fstat`` size on close and attribution (cached per pid), and its fd closed;
- ``latency``: 300 opens of a fresh file, 2 ms apart, each timed from just before
  ``open()`` to the moment the tracker publishes its ``open`` event (p50/p99/max).

``notes/kernel-sources.md`` section 4 measured a bare reader at ~100k records/s with
readlink and an open -> event p50 of 0.10 ms, p99 0.22 ms.
"""

from __future__ import annotations

import ctypes
import os
import select
import subprocess
import sys
import tempfile
import time

from coi_watch.events import Event
from coi_watch.protocols import SourceContext
from coi_watch.sources.fanotify import (
    FAN_MARK_ADD,
    FAN_MARK_MOUNT,
    FanotifyTracker,
    fanotify_mark,
    open_group,
)
from coi_watch.wire.fanotify import mask_of

__all__ = ("bench_latency", "bench_throughput", "main", "private_tmpfs")

CLONE_NEWNS = 0x00020000  # linux/sched.h
MS_REC, MS_PRIVATE = 0x4000, 0x40000  # linux/mount.h
MASK = mask_of(("open", "open_exec", "close_write", "close_nowrite"))
FILES = 2000
MAX_OPENS = 400_000
READ_SIZE = 8192

_GENERATOR = """
import os, sys, time
root, seconds, cap = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
names = [os.path.join(root, n) for n in sorted(os.listdir(root))]
end = time.monotonic() + seconds
n = 0
while n < cap and time.monotonic() < end:
    for p in names:
        fd = os.open(p, os.O_RDONLY); os.read(fd, 64); os.close(fd)
    n += len(names)
print(n)
"""


def private_tmpfs() -> str:
    """Enter a private mount namespace and mount a tmpfs there; returns its path."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS): run as root")
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
    path = tempfile.mkdtemp(prefix="coi-bench-fan-")
    if libc.mount(b"coi-bench", path.encode(), b"tmpfs", 0, b"size=64m") != 0:
        raise OSError(ctypes.get_errno(), "mount tmpfs")
    for i in range(FILES):
        with open(os.path.join(path, f"f{i:05d}"), "wb") as f:
            f.write(b"x" * 512)
    return path


def _tracker(publish: object, self_pid: int) -> FanotifyTracker:
    ctx = SourceContext(publish=publish,  # type: ignore[arg-type]
                        watched=lambda name: True, system=lambda c, k, d: None,
                        count_drop=lambda c, s, k, n: None)
    return FanotifyTracker(ctx, self_pid=self_pid, attribute=lambda pid: "bench",
                           read_comm=lambda pid: "bench")


def bench_throughput(root: str, seconds: float) -> tuple[float, float, int]:
    """(records/s, events/s, overflows) while a child hammers the mount."""
    group, _ = open_group()
    published = 0

    def count(_ev: Event) -> None:
        nonlocal published
        published += 1

    tracker = _tracker(count, os.getpid())
    try:
        fanotify_mark(group, FAN_MARK_ADD | FAN_MARK_MOUNT, MASK, root.encode())
        child = subprocess.Popen([sys.executable, "-c", _GENERATOR, root, str(seconds),
                                  str(MAX_OPENS)], stdout=subprocess.PIPE, text=True)
        poll = select.poll()
        poll.register(group, select.POLLIN)
        start = time.perf_counter()
        while True:
            if not poll.poll(100):
                if child.poll() is not None:
                    break
                continue
            while True:
                try:
                    buf = os.read(group, READ_SIZE)
                except BlockingIOError:
                    break
                tracker.feed(buf)
        elapsed = time.perf_counter() - start
        child.wait(timeout=30)
    finally:
        os.close(group)
    return tracker.stats["events"] / elapsed, published / elapsed, tracker.stats["overflows"]


def bench_latency(root: str, samples: int = 300) -> list[float]:
    """Milliseconds from just before ``open()`` to the published ``open`` event."""
    group, _ = open_group()
    got: list[int] = []

    def stamp(ev: Event) -> None:
        if getattr(ev, "op", "") == "open":
            got.append(time.monotonic_ns())

    tracker = _tracker(stamp, -1)  # the opens are ours: do not skip our own pid here
    out: list[float] = []
    try:
        fanotify_mark(group, FAN_MARK_ADD | FAN_MARK_MOUNT, MASK, root.encode())
        poll = select.poll()
        poll.register(group, select.POLLIN)
        for i in range(samples):
            path = os.path.join(root, f"lat{i}")
            with open(path, "wb"):
                pass
            while poll.poll(0):  # drain the create's events first
                tracker.feed(os.read(group, READ_SIZE))
            got.clear()
            t0 = time.monotonic_ns()
            os.close(os.open(path, os.O_RDONLY))
            while not got and poll.poll(1000):
                tracker.feed(os.read(group, READ_SIZE))
            if got:
                out.append((got[0] - t0) / 1e6)
            time.sleep(0.002)
    finally:
        os.close(group)
    return out


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str]) -> None:
    seconds = float(argv[1]) if len(argv) > 1 else 2.0
    root = private_tmpfs()
    try:
        records, events, overflows = bench_throughput(root, seconds)
        print(f"throughput: {records:,.0f} records/s, {events:,.0f} FileAccess events/s "
              f"(path + size + attribution), overflows {overflows}")
        lat = bench_latency(root)
        print(f"latency open->event: p50 {_pct(lat, 0.5):.3f} ms, "
              f"p99 {_pct(lat, 0.99):.3f} ms, max {max(lat):.3f} ms ({len(lat)} samples)")
    finally:
        # The tmpfs lives in our private namespace; the empty directory under it is the
        # host's: detach the mount (MNT_DETACH = 2), then remove the directory.
        ctypes.CDLL(None, use_errno=True).umount2(root.encode(), 2)
        os.rmdir(root)


if __name__ == "__main__":
    main(sys.argv)
