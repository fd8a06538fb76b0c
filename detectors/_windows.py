"""Sliding windows in event time, bounded: sums, multi-field counts, distinct keys, LRU maps.

Strategy: a detector must answer "how much in the last W seconds" per event in O(1) memory
and amortised O(1) time whatever the event rate, and never read a clock (``now_ns`` comes from
the runner, non-decreasing per container).

- :class:`SlidingSum` / :class:`SlidingCounts` keep a ring of ``buckets`` time slices of
  ``W / buckets`` each plus running totals. Moving to a new slice clears the slices that fell
  out, so the totals cover between ``W - W/buckets`` and ``W`` of history: exact to one slice.
  A stamp older than the newest slice (out of order) is added to the newest slice.
- :class:`DistinctWindow` counts distinct keys seen in the last W seconds, keeping at most
  ``cap`` of them (oldest dropped first: once ``cap`` is reached the count saturates, which is
  all a threshold of ``cap - 1`` needs). Expiry pops from the old end: amortised O(1).
- :class:`LruMap` is an ``OrderedDict`` with a size cap: ``touch`` moves a key to the young
  end, inserting past the cap evicts the oldest and counts it in ``evicted``. (A plain dict
  evicted with ``next(iter(d))`` degrades to quadratic time after many front deletions.)
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ("DistinctWindow", "LruMap", "SlidingCounts", "SlidingSum")

K = TypeVar("K")
V = TypeVar("V")


class SlidingSum:
    """The sum of values added in the last ``window_ns`` (see the module docstring)."""

    __slots__ = ("_head", "_n", "_ring", "_width", "total", "window_ns")

    def __init__(self, window_ns: int, buckets: int = 60) -> None:
        if window_ns <= 0 or buckets <= 0:
            raise ValueError("window and buckets must be positive")
        self.window_ns = window_ns
        self._n = buckets
        self._width = max(1, window_ns // buckets)
        self._ring = [0] * buckets
        self._head = -1  # slice id of the newest slice; -1 = nothing yet
        self.total = 0

    def _advance(self, now_ns: int) -> int:
        bid = now_ns // self._width
        head = self._head
        if bid <= head:
            return head % self._n
        ring, n = self._ring, self._n
        if head < 0:
            pass  # a fresh ring is already empty
        elif bid - head >= n:
            for i in range(n):
                ring[i] = 0
            self.total = 0
        else:
            for b in range(head + 1, bid + 1):
                i = b % n
                self.total -= ring[i]
                ring[i] = 0
        self._head = bid
        return bid % n

    def add(self, now_ns: int, value: int = 1) -> int:
        """Add ``value`` at ``now_ns``; return the window's total."""
        i = self._advance(now_ns)
        self._ring[i] += value
        self.total += value
        return self.total

    def value(self, now_ns: int) -> int:
        """The window's total at ``now_ns``."""
        self._advance(now_ns)
        return self.total


class SlidingCounts:
    """Several counters over one window and one ring (``fields`` of them, by index)."""

    __slots__ = ("_head", "_n", "_ring", "_width", "fields", "totals", "window_ns")

    def __init__(self, window_ns: int, fields: int, buckets: int = 60) -> None:
        if window_ns <= 0 or buckets <= 0 or fields <= 0:
            raise ValueError("window, fields and buckets must be positive")
        self.window_ns = window_ns
        self.fields = fields
        self._n = buckets
        self._width = max(1, window_ns // buckets)
        self._ring: list[list[int] | None] = [None] * buckets  # None: an empty slice
        self._head = -1
        self.totals = [0] * fields

    def _advance(self, now_ns: int) -> list[int]:
        bid = now_ns // self._width
        head, ring, n = self._head, self._ring, self._n
        if bid > head:
            totals = self.totals
            if head < 0:
                pass  # a fresh ring is already empty
            elif bid - head >= n:
                for i in range(n):
                    ring[i] = None
                for f in range(self.fields):
                    totals[f] = 0
            else:
                for b in range(head + 1, bid + 1):
                    i = b % n
                    old = ring[i]
                    if old is not None:
                        for f, v in enumerate(old):
                            totals[f] -= v
                        ring[i] = None
            self._head = head = bid
        i = head % n
        cur = ring[i]
        if cur is None:
            cur = ring[i] = [0] * self.fields
        return cur

    def add(self, now_ns: int, field: int, value: int = 1) -> None:
        """Add ``value`` to counter ``field`` at ``now_ns``."""
        self._advance(now_ns)[field] += value
        self.totals[field] += value

    def add_many(self, now_ns: int, values: tuple[int, ...]) -> list[int]:
        """Add one value per field at ``now_ns``; return the totals (do not mutate)."""
        cur = self._advance(now_ns)
        totals = self.totals
        for f, v in enumerate(values):
            if v:
                cur[f] += v
                totals[f] += v
        return totals

    def value(self, now_ns: int) -> list[int]:
        """The totals at ``now_ns`` (do not mutate)."""
        self._advance(now_ns)
        return self.totals


class DistinctWindow(Generic[K]):
    """Distinct keys seen in the last ``window_ns``, at most ``cap`` kept."""

    __slots__ = ("_keys", "cap", "dropped", "window_ns")

    def __init__(self, window_ns: int, cap: int) -> None:
        if window_ns <= 0 or cap <= 0:
            raise ValueError("window and cap must be positive")
        self.window_ns = window_ns
        self.cap = cap
        self.dropped = 0
        self._keys: OrderedDict[K, int] = OrderedDict()

    def _expire(self, now_ns: int) -> None:
        keys, horizon = self._keys, now_ns - self.window_ns
        while keys:
            first = next(iter(keys))
            if keys[first] > horizon:
                break
            keys.popitem(last=False)

    def add(self, now_ns: int, key: K) -> tuple[int, bool]:
        """Record ``key`` at ``now_ns``; return ``(distinct count, key was new)``."""
        self._expire(now_ns)
        keys = self._keys
        new = key not in keys
        if new:
            if len(keys) >= self.cap:
                keys.popitem(last=False)
                self.dropped += 1
        else:
            keys.move_to_end(key)
        keys[key] = now_ns
        return len(keys), new

    def count(self, now_ns: int) -> int:
        """Distinct keys in the window at ``now_ns`` (at most ``cap``)."""
        self._expire(now_ns)
        return len(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class LruMap(OrderedDict[K, V]):
    """An ``OrderedDict`` bounded to ``cap`` entries, oldest evicted first and counted."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        if cap <= 0:
            raise ValueError("cap must be positive")
        self.cap = cap
        self.evicted = 0

    def touch(self, key: K) -> V | None:
        """The value for ``key`` (moved to the young end), or ``None``."""
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Insert or replace ``key`` at the young end, evicting the oldest past the cap."""
        if key in self:
            self.move_to_end(key)
        elif len(self) >= self.cap:
            self.popitem(last=False)
            self.evicted += 1
        self[key] = value
