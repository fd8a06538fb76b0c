"""Shared pieces of the per-detector benchmarks: time one detector, time them together.

Run from the scripts beside it (``python bench/bench_X.py``), which put this folder first on
``sys.path``. Rates are best-of-``repeat`` wall-clock figures over a prepared event list.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from coi_watch.events import Event
from coi_watch.protocols import Detector
from coi_watch.runner import Runner

__all__ = ("bench_one", "bench_runner", "describe_mix", "report")


def describe_mix(events: Sequence[Event]) -> str:
    """One line: how many events of each kind."""
    kinds: dict[str, int] = {}
    for ev in events:
        kinds[ev.kind] = kinds.get(ev.kind, 0) + 1
    return f"mix: {len(events)} events " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))


def bench_one(factory: Callable[[], Detector], events: Sequence[Event], repeat: int
              ) -> tuple[float, int, int]:
    """``(events/s, events fed, events with verdicts)`` of one detector on its own kinds."""
    best, verdicts = 0.0, 0
    mine = [ev for ev in events if ev.kind in factory().consumes]
    for _ in range(repeat):
        feed = factory().feed
        verdicts = 0
        start = time.perf_counter()
        for ev in mine:
            if feed(ev, ev.ts_ns):
                verdicts += 1
        best = max(best, len(mine) / (time.perf_counter() - start))
    return best, len(mine), verdicts


def bench_runner(factories: Mapping[str, Callable[[], Detector]], events: Sequence[Event],
                 repeat: int) -> tuple[float, int]:
    """``(events/s, verdicts)`` of all ``factories`` together through the real runner."""
    best, total = 0.0, 0
    for _ in range(repeat):
        runner = Runner(factories)
        feed = runner.feed
        start = time.perf_counter()
        for ev in events:
            feed(ev)
        best = max(best, len(events) / (time.perf_counter() - start))
        total = runner.stats.verdicts
    return best, total


def report(factories: Mapping[str, Callable[[], Detector]], events: Sequence[Event],
           repeat: int, together: str) -> None:
    """Print the mix, each detector's rate, and their rate together."""
    print(describe_mix(events))
    for name, factory in factories.items():
        rate, n, verdicts = bench_one(factory, events, repeat)
        print(f"{name:14s} {rate / 1000:8.1f}k events/s  ({n} events, {verdicts} with verdicts)")
    best, total = bench_runner(factories, events, repeat)
    print(f"{together:14s} {best / 1000:8.1f}k events/s  (runner over the mix, {total} verdicts)")
