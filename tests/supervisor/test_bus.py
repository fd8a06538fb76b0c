"""The bus: order kept, bounded, every drop counted by (container, source, kind)."""

from __future__ import annotations

import asyncio

import pytest

from coi_watch.bus import Bus
from coi_watch.events import ProcExit, ProcFork


def _fork(pid: int, container: str = "c1") -> ProcFork:
    return ProcFork(ts_ns=pid, wall_ns=pid, container=container, pid=pid, ppid=1)


async def test_events_come_out_in_order_in_batches() -> None:
    bus = Bus(capacity=100)
    for pid in range(10):
        assert bus.publish(_fork(pid), "proc")
    assert [e.pid for e in await bus.get_batch(4)] == [0, 1, 2, 3]
    assert [e.pid for e in await bus.get_batch(100)] == list(range(4, 10))
    assert bus.stats.published == bus.stats.delivered == 10


async def test_overflow_drops_newest_and_counts_per_source_and_kind() -> None:
    bus = Bus(capacity=3)
    for pid in range(5):
        bus.publish(_fork(pid), "proc")
    bus.publish(ProcExit(ts_ns=9, wall_ns=9, container="c2", pid=9), "proc")
    assert [e.pid for e in bus.drain(10)] == [0, 1, 2]  # the evidence already in is kept
    assert bus.stats.dropped[("c1", "proc", "proc.fork")] == 2
    assert bus.stats.dropped[("c2", "proc", "proc.exit")] == 1
    assert bus.stats.dropped_total == 3
    assert bus.take_drops() == {("c1", "proc", "proc.fork"): 2, ("c2", "proc", "proc.exit"): 1}
    assert bus.take_drops() == {}  # reported once
    bus.count_drop("", "proc", "enobufs", 7)
    assert bus.take_drops() == {("", "proc", "enobufs"): 7}


async def test_get_batch_waits_and_close_ends_it() -> None:
    bus = Bus(capacity=10)
    waiter = asyncio.ensure_future(bus.get_batch())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    bus.publish(_fork(1), "proc")
    assert [e.pid for e in await waiter] == [1]
    bus.publish(_fork(2), "proc")
    bus.close()
    assert not bus.publish(_fork(3), "proc")  # refused after close, and counted
    assert [e.pid for e in await bus.get_batch()] == [2]
    assert await bus.get_batch() == []
    assert bus.stats.dropped_total == 1


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Bus(capacity=0)
