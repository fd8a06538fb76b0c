"""Parse rate of the proc connector decoder over a real captured datagram mix.

Run: ``python bench/bench_proc_connector.py [seconds]``. The input is
``tests/fixtures/wire/proc_connector/stream.hexl`` (every datagram of a capture session,
host noise included: mostly fork/exec/exit). Two numbers are printed:

- ``parse``: :func:`coi_watch.wire.proc_connector.parse` alone, events/s;
- ``tracker``: parse plus :class:`coi_watch.sources.proc.ProcTracker` dispatch with an
  in-memory attribution and nothing watched (the cost every host event pays), events/s.

The measured probe in ``notes/kernel-sources.md`` parsed about 0.9M events/s with an
unchecked parser; the kernel produced at most ~14k events/s in the stress tests.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from coi_watch.protocols import SourceContext
from coi_watch.sources.attribution import ProcessTable
from coi_watch.sources.proc import ProcTracker
from coi_watch.wire.proc_connector import parse

__all__ = ("bench_parse", "bench_tracker", "load_frames", "main")

STREAM = (
    Path(__file__).resolve().parents[1]
    / "tests" / "fixtures" / "wire" / "proc_connector" / "stream.hexl"
)


def load_frames(path: Path = STREAM) -> list[bytes]:
    """The captured datagrams, one per line of hex."""
    return [bytes.fromhex(line) for line in path.read_text().split()]


def bench_parse(frames: list[bytes], seconds: float) -> float:
    """Events per second through ``parse`` alone."""
    events = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for buf in frames:
            events += len(parse(buf))
    return events / (time.perf_counter() - start)


def bench_tracker(frames: list[bytes], seconds: float) -> float:
    """Events per second through parse + tracker dispatch (host processes, none watched)."""
    ctx = SourceContext(publish=lambda ev: None, watched=lambda name: False,
                        system=lambda c, k, d: None, count_drop=lambda c, s, k, n: None)
    tracker = ProcTracker(ctx, ProcessTable(attribute=lambda pid: None))
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for buf in frames:
            tracker.feed(buf)
    return tracker.stats["records"] / (time.perf_counter() - start)


def main(argv: list[str]) -> None:
    seconds = float(argv[1]) if len(argv) > 1 else 2.0
    frames = load_frames()
    print(f"input: {len(frames)} datagrams from {STREAM.name}")
    print(f"parse:   {bench_parse(frames, seconds):,.0f} events/s")
    print(f"tracker: {bench_tracker(frames, seconds):,.0f} events/s")


if __name__ == "__main__":
    main(sys.argv)
