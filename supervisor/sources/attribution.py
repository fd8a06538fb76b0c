"""Which Incus container a host pid belongs to.

Strategy: the truth is the process's cgroup. Incus (through liblxc) puts every process of
instance ``NAME`` under a cgroup whose first path component is ``lxc.payload.NAME``, on every
hierarchy line of ``/proc/PID/cgroup`` (``0::/lxc.payload.t1``, ``6:freezer:/lxc.payload.t1``;
measured in ``notes/kernel-sources.md``); host processes, including Incus's own
``lxc.monitor.NAME``, have none. :func:`container_from_cgroup` reads that text,
:func:`container_of` reads the file.

``/proc`` loses races: 10.7 % of short ``cat`` processes had exited before their cgroup was
read. :class:`ProcessTable` therefore keeps a pid -> container map fed by fork events (a child
starts in its parent's cgroup), so the source can still attribute a process that is gone.
The map is a bounded LRU that forgets pids on exit and whole containers on request, so its
memory stays flat under churn.

The map is a fallback, never a cache that hides the truth: a process can change cgroup after
fork (``incus exec`` forks on the host, then liblxc moves the child into ``lxc.payload.NAME``
before it execs), so exec events ask with ``fresh=True`` and the map is corrected.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable

__all__ = (
    "DEFAULT_CAP",
    "MISSING",
    "Attribution",
    "Missing",
    "ProcessTable",
    "container_from_cgroup",
    "container_of",
)

_PAYLOAD = "lxc.payload."
DEFAULT_CAP = 65536


class Missing(enum.Enum):
    """The process is gone (its ``/proc`` entry could not be read)."""

    MISSING = "missing"


MISSING = Missing.MISSING
Attribution = str | None | Missing
"""A container name, ``None`` for a host process, or :data:`MISSING`."""


def _from_path(path: str) -> str | None:
    # The first component that starts with lxc.payload. wins: the host placed it there. A
    # container root can create sub-cgroups in its own delegated tree (so a deeper
    # "lxc.payload.other" component is forgeable); it cannot create or leave the outer one.
    for part in path.strip().split("/"):
        if part.startswith(_PAYLOAD) and len(part) > len(_PAYLOAD):
            return part[len(_PAYLOAD) :]
    return None


def container_from_cgroup(text: str) -> str | None:
    """The Incus instance named in a ``/proc/PID/cgroup`` text, or ``None`` for the host.

    Lines are ``hierarchy-ID:controllers:path`` (``cgroups(7)``); the path may itself hold
    ``:``. The unified ``0::`` line is preferred when it names a container, then the first
    line that does; malformed lines are skipped.
    """
    first: str | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        name = _from_path(parts[2])
        if name is None:
            continue
        if parts[0] == "0" and parts[1] == "":
            return name
        if first is None:
            first = name
    return first


def container_of(pid: int, proc: str = "/proc") -> Attribution:
    """Read ``/proc/PID/cgroup``: a container name, ``None`` (host) or :data:`MISSING`."""
    try:
        with open(f"{proc}/{pid}/cgroup", "rb") as f:
            raw = f.read(65536)
    except OSError:
        return MISSING
    if not raw:
        # A reaped or exiting task can leave an empty file behind; that is not "host".
        return MISSING
    return container_from_cgroup(raw.decode("utf-8", "replace"))


class ProcessTable:
    """A bounded pid -> container map maintained from fork/exec/exit events.

    Keys are process ids (``tgid``); values are container names or ``None`` for host
    processes (remembered too, so host forks cost no ``/proc`` read). Least recently used
    entries are evicted beyond ``cap``; :attr:`evictions` counts them.
    """

    def __init__(
        self,
        cap: int = DEFAULT_CAP,
        *,
        attribute: Callable[[int], Attribution] = container_of,
    ) -> None:
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self.cap = cap
        self.evictions = 0
        self._attribute = attribute
        self._map: OrderedDict[int, str | None] = OrderedDict()
        self._by_container: dict[str, set[int]] = {}

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, pid: object) -> bool:
        return pid in self._map

    def pids_of(self, name: str) -> frozenset[int]:
        """The pids currently attributed to container ``name``."""
        return frozenset(self._by_container.get(name, ()))

    def get(self, pid: int) -> Attribution:
        """The remembered attribution of ``pid`` (no ``/proc`` read), or :data:`MISSING`."""
        if pid in self._map:
            return self._map[pid]
        return MISSING

    def remember(self, pid: int, container: str | None) -> None:
        """Remember ``pid`` as belonging to ``container`` (``None``: host)."""
        old = self._map.get(pid, MISSING)
        if isinstance(old, str) and old != container:
            self._unindex(pid, old)
        self._map[pid] = container
        self._map.move_to_end(pid)
        if container is not None:
            self._by_container.setdefault(container, set()).add(pid)
        while len(self._map) > self.cap:
            victim, name = self._map.popitem(last=False)
            if name is not None:
                self._unindex(victim, name)
            self.evictions += 1

    def resolve(self, pid: int, *, fresh: bool = False) -> Attribution:
        """Attribute ``pid``: from memory, else (or with ``fresh``) from ``/proc``.

        A ``/proc`` answer is remembered; when ``/proc`` has lost the process the remembered
        value is returned (that is what the map is for), else :data:`MISSING`.
        """
        if not fresh and pid in self._map:
            self._map.move_to_end(pid)
            return self._map[pid]
        got = self._attribute(pid)
        if got is MISSING:
            return self.get(pid)
        self.remember(pid, got)
        return got

    def on_fork(self, parent: int, child: int) -> Attribution:
        """A process ``child`` was forked by process ``parent``: it starts in the parent's
        cgroup, so it inherits the parent's container (asking ``/proc`` about the parent if
        it is not known, and about the child if the parent is gone too)."""
        got = self.resolve(parent)
        if got is MISSING:
            got = self._attribute(child)
            if got is MISSING:
                return MISSING
        self.remember(child, got)
        return got

    def on_exit(self, pid: int) -> Attribution:
        """Process ``pid`` ended: forget it and return where it was (``/proc`` if unknown)."""
        if pid in self._map:
            name = self._map.pop(pid)
            if name is not None:
                self._unindex(pid, name)
            return name
        return self._attribute(pid)

    def forget_container(self, name: str) -> int:
        """Forget every pid of container ``name`` (it was deleted); returns how many."""
        pids = self._by_container.pop(name, set())
        for pid in pids:
            self._map.pop(pid, None)
        return len(pids)

    def _unindex(self, pid: int, name: str) -> None:
        pids = self._by_container.get(name)
        if pids is not None:
            pids.discard(pid)
            if not pids:
                del self._by_container[name]
