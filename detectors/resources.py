"""Resource abuse: a fork bomb or runaway spawner, from process fork and exit events.

Strategy: per container, the set of live processes is kept from the proc connector: a fork
adds the child, an exec adds a process not seen before (one that predates coi-watch), an
exit removes it. Two checks, both **off by default** as in the Go original (its
``process_count_threshold`` and ``process_spawn_rate_threshold`` are 0 = off, and so are
these keys, with the same meaning):

- **Process count**: more than ``process_count_threshold`` live processes. Processes that
  were running before coi-watch started and have not exec'd since are not counted, so the
  count is a lower bound; a fork bomb is all new processes.
- **Spawn rate**: the live count grew by more than ``process_spawn_rate_threshold`` within
  ``window_s`` seconds. This is the Go original's "delta between polls" (it compared the
  process count of two consecutive polls, ``poll_interval_sec`` = 2 s apart), so the window
  defaults to 2 s and the same threshold number means the same thing. Net growth rather
  than forks counted: ``make -j`` forks thousands of short-lived compilers a minute without
  growing, while a fork bomb grows without bound; a poll-based count could only ever see
  growth, so Go users' thresholds were tuned to it. The verdict's evidence carries the
  forks and exits of the window as well.

Growth is measured with a ring of 8 slices per window: each slice keeps the smallest count
seen in it, and growth is the current count minus the smallest in the window, so a rise is
caught however it straddles slice borders (to one slice of accuracy) with constant memory.

Both verdicts are ``critical`` by default, as in the Go original (a fork bomb takes the host
down with the container). Each fires once when its threshold is crossed and re-arms only
after the value falls back to the threshold (count) or the growth leaves the window (rate),
so a bomb that hovers at the limit is one verdict, not thousands. Dedup keys:
``resources:<container>:process_count`` and ``resources:<container>:spawn_rate``.

Bounded memory: at most ``max_tracked`` pids per container (beyond that, processes are only
counted, and an exit of an unknown pid is taken off that overflow count, never below 0) and
:data:`MAX_CONTAINERS` containers (the least recently active is forgotten first). With both
thresholds 0 the detector keeps nothing at all.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from coi_watch.detectors._config import SEVERITIES, cfg_int, cfg_level, cfg_number, check_keys
from coi_watch.detectors._windows import LruMap
from coi_watch.events import Event, ProcExec, ProcExit, ProcFork
from coi_watch.verdicts import Verdict

__all__ = ("MAX_CONTAINERS", "SLICES", "ResourceAbuse")

SLICES = 8
"""Slices per spawn-rate window."""
MAX_CONTAINERS = 4096
"""Containers whose state is kept at once."""

_NAME = "resources"
_KEYS = ("process_count_threshold", "process_spawn_rate_threshold", "window_s", "severity",
         "max_tracked")


@dataclass(slots=True)
class _Slice:
    index: int
    low: int  # the smallest live count seen in the slice
    forks: int = 0
    exits: int = 0


@dataclass(slots=True)
class _Box:
    """One container's processes and windows."""

    pids: set[int] = field(default_factory=set)
    overflow: int = 0  # live processes beyond max_tracked: counted, not stored
    ring: deque[_Slice] = field(default_factory=deque)
    count_armed: bool = True
    rate_armed: bool = True

    @property
    def live(self) -> int:
        return len(self.pids) + self.overflow


class ResourceAbuse:
    """Process count and spawn rate per container; the strategy is in the module docstring.

    Config keys (``[detectors.resources]``), with defaults:

    ``process_count_threshold = 0``
        Live processes above which a container is reported; 0 = off (the Go original's key
        and default).
    ``process_spawn_rate_threshold = 0``
        Growth of the live count within ``window_s`` above which a container is reported;
        0 = off (the Go original's key and default: processes gained per 2 s poll).
    ``window_s = 2.0``
        The spawn-rate window in seconds (the Go original's ``poll_interval_sec``).
    ``severity = "critical"``
        Level of both verdicts (``critical``, ``high``, ``warning``, ``info``).
    ``max_tracked = 65536``
        Pids remembered per container (beyond that, processes are only counted).

    Raises:
        ConfigError: an unknown key, or a value of the wrong type or out of range.
    """

    name: ClassVar[str] = _NAME
    consumes: ClassVar[frozenset[str]] = frozenset({"proc.fork", "proc.exit", "proc.exec"})

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        cfg = dict(config or {})
        check_keys(_NAME, cfg, _KEYS)
        self._count_max = cfg_int(_NAME, cfg, "process_count_threshold", 0, minimum=0)
        self._rate_max = cfg_int(_NAME, cfg, "process_spawn_rate_threshold", 0, minimum=0)
        self._max_tracked = cfg_int(_NAME, cfg, "max_tracked", 65536)
        self._window_ns = int(cfg_number(_NAME, cfg, "window_s", 2.0) * 1e9)
        self._slice_ns = max(1, self._window_ns // SLICES)
        self._severity = cfg_level(_NAME, cfg, "severity", "critical", SEVERITIES)
        self._enabled = bool(self._count_max or self._rate_max)
        self._boxes: LruMap[str, _Box] = LruMap(MAX_CONTAINERS)

    @property
    def enabled(self) -> bool:
        """False when both thresholds are 0 (the default): every event is ignored."""
        return self._enabled

    @property
    def active(self) -> bool:
        """The runner's view of :attr:`enabled`: an inactive detector is not fed at all."""
        return self._enabled

    def live_count(self, container: str) -> int:
        """Live processes of ``container`` as tracked (0 for an unknown container)."""
        box = self._boxes.get(container)
        return box.live if box is not None else 0

    # -- events

    def feed(self, ev: Event, now_ns: int) -> Iterable[Verdict]:
        """Take one process event; return the verdicts of thresholds it crossed."""
        if not self._enabled:
            return ()
        box = self._box(ev.container)
        ring = box.ring
        while ring and ring[0].index <= now_ns // self._slice_ns - SLICES:
            ring.popleft()
        before = box.live
        if isinstance(ev, ProcFork):
            # A parent seen for the first time predates coi-watch: live, but not growth.
            if ev.ppid > 0 and ev.ppid not in box.pids:
                self._baseline(box, ev.ppid)
            grew = self._add(box, ev.pid)
            self._slice(box, now_ns, box.live - int(grew)).forks += 1
            if not grew:
                return ()
        elif isinstance(ev, ProcExit):
            if ev.pid in box.pids:
                box.pids.discard(ev.pid)
            elif box.overflow:
                box.overflow -= 1
            else:
                return ()
            cur = self._slice(box, now_ns, before)
            cur.exits += 1
            cur.low = min(cur.low, box.live)
            if not box.count_armed and box.live <= self._count_max:
                box.count_armed = True
            return ()
        elif isinstance(ev, ProcExec):
            # A process seen for the first time at its exec predates coi-watch (or its fork
            # was lost): it is live, but it did not just appear.
            if ev.pid in box.pids or not self._baseline(box, ev.pid):
                return ()
        else:
            return ()
        return self._check(ev, box)

    # -- state

    def _box(self, container: str) -> _Box:
        box = self._boxes.touch(container)
        if box is None:
            box = _Box()
            self._boxes.put(container, box)
        return box

    def _add(self, box: _Box, pid: int) -> bool:
        """Count ``pid`` as live; False when it already was (a repeated or missed event)."""
        if pid in box.pids:
            return False
        if len(box.pids) >= self._max_tracked:
            box.overflow += 1
        else:
            box.pids.add(pid)
        return True

    def _baseline(self, box: _Box, pid: int) -> bool:
        """Count ``pid`` as live without calling it growth: the window's baseline moves.
        Not once ``max_tracked`` is reached: an untracked pid cannot be told from a new one."""
        if len(box.pids) >= self._max_tracked or not self._add(box, pid):
            return False
        for s in box.ring:
            s.low += 1
        return True

    def _slice(self, box: _Box, now_ns: int, before: int) -> _Slice:
        """The current slice (expired ones were dropped by ``feed``), opened with the count
        as it was before this event's growth."""
        index = now_ns // self._slice_ns
        ring = box.ring
        if ring and ring[-1].index == index:
            return ring[-1]
        # The count before this event held since the previous event, so it also held at
        # the start of this slice and across any empty slices in between.
        s = _Slice(index, before)
        ring.append(s)
        return s

    # -- verdicts

    def _check(self, ev: ProcFork | ProcExec, box: _Box) -> list[Verdict]:
        out: list[Verdict] = []
        live = box.live
        if self._count_max:
            if box.count_armed and live > self._count_max:
                box.count_armed = False
                out.append(self._verdict(
                    ev, "process_count",
                    f"Process count {live} above {self._count_max}: fork bomb or runaway "
                    "spawner",
                    {"count": live, "threshold": self._count_max,
                     "untracked": box.overflow}))
            elif not box.count_armed and live <= self._count_max:
                box.count_armed = True
        if self._rate_max and box.ring:
            low = min(s.low for s in box.ring)
            growth = live - low
            if box.rate_armed and growth > self._rate_max:
                box.rate_armed = False
                out.append(self._verdict(
                    ev, "spawn_rate",
                    f"Process count grew by {growth} within {self._window_ns / 1e9:g} s "
                    f"(threshold {self._rate_max})",
                    {"growth": growth, "threshold": self._rate_max,
                     "window_s": self._window_ns / 1e9, "count": live,
                     "forks": sum(s.forks for s in box.ring),
                     "exits": sum(s.exits for s in box.ring)}))
            elif not box.rate_armed and growth <= self._rate_max:
                box.rate_armed = True
        return out

    def _verdict(self, ev: ProcFork | ProcExec, check: str, title: str,
                 evidence: dict[str, Any]) -> Verdict:
        evidence = {"check": check, **evidence, "pid": ev.pid}
        return Verdict(
            ts_ns=ev.ts_ns,
            wall_ns=ev.wall_ns,
            container=ev.container,
            detector=self.name,
            title=title,
            severity=self._severity,
            evidence=evidence,
            mitre=("T1496", "T1499"),
            dedup_key=f"resources:{ev.container}:{check}",
            event_kind=ev.kind,
            pid=ev.pid,
        )
