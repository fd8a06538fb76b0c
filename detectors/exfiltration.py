"""Exfiltration by volume: bytes leaving a container, and bulk workspace reads and writes.

Strategy, network (``net.flow``, conntrack): counters are cumulative per flow, so the detector
keeps the last ``bytes_out`` of each flow (keyed by ``flow_id``, or by the 5-tuple when it is
0) and adds the *difference* between successive readings (``new``, ``update``, ``counter``,
``destroy``) to per-container sliding windows: a long-lived flow counts while it lasts and
nothing is counted twice. A reading smaller than the last is a new flow reusing the key
(counter reset): its own value is counted, never a negative delta (the Go original's
``io.stat`` delta underflowed and froze healthy containers, research section 8); so is a
``new`` event on a known key. A reading of 0 on a known flow carries no counters (conntrack
sends state updates without them when accounting is off) and changes nothing. A flow first
seen on a ``new`` event, or whose conntrack start stamp (``start_ns``, wall clock) is within
``window_s`` of the event, is counted from zero; a flow first seen later (it predates the
detector: a restart, or the table evicted it) is taken as a baseline and only its growth
counts, so no old transfer is mistaken for a burst. ``destroy`` forgets the flow. Loopback
flows never count; private destinations (RFC 1918, CGNAT, link-local, ULA) only with
``include_private`` (Elastic's egress hunt counts non-private destinations only).

Thresholds (research section 5, "Exfiltration"): ``net_bytes_threshold_mb`` (100 MiB) per
``window_s`` (60 s) -> ``severity`` (high); it is four times RITA's 25 MB "large transfer"
mark within one minute, far above an agent's API calls, ``git push`` of source and package
metadata, and it still catches a bulk upload from 14 Mbit/s up. Slow exfiltration under
that rate is caught by ``net_long_threshold_mb`` (1024 MiB) per ``long_window_s`` (28800 s):
Elastic's hunt, 1 GiB of egress in 8 h (per container here: per process is not visible in
conntrack). While a window stays over its threshold there is one verdict per window length
(a sustained transfer is not a verdict per counter reading).

Strategy, files (``file.access``, fanotify, paths in the container's view): only paths under
``paths`` (``/workspace``, ``/root``, ``/home``) count, except those with a component in
``exclude_dirs`` (dependency and build trees: ``npm install`` writes hundreds of MB into
``node_modules`` in seconds, and the network side still sees an upload of them). ``size`` at
``close_write`` is the written volume: the growth since the last close_write of that path
(an append to a log counts the appended bytes, not the whole log again), the whole size for a
new or truncated file. ``size`` at ``close_nowrite`` is an upper bound of the volume read
(the file may not have been read to the end); a file read again unchanged within
``window_s`` is not counted again (as the Go original's block I/O counters did not count
page-cache hits).

The Go original's keys keep their meaning: it compared each 2 s poll's ``io.stat`` delta
with ``file_read_threshold_mb`` (50) and the delta per second with
``file_read_rate_mb_per_sec`` (10). Here the volume within ``file_window_s`` (2 s, Go's
``poll_interval_sec``) is compared with ``file_read_threshold_mb``, and the rate averaged
over ``window_s`` (60 s) with ``file_read_rate_mb_per_sec``, so a burst is judged by the
first and sustained reading by the second. ``file_write_threshold_mb`` and
``file_write_rate_mb_per_sec`` (Go's CHANGELOG named them, its code wired writes to the read
thresholds) default to the read values. Either -> ``file_severity`` (high), at most once per
``window_s`` each. MiB throughout.

MITRE: network T1041 and T1048 (exfiltration over the C2 channel or another protocol: a
volume signal cannot tell which; tagged both); files T1005 (data from local system) and
T1074.001 (local data staging) for writes.

Bounded: ``max_flows`` (65536) flows and ``max_files`` (65536) paths, least recently used
evicted first (counted in ``stats``); per container two byte windows and four file windows.

Config keys (``[detectors.exfiltration]``), defaults in brackets: ``window_s`` [60],
``net_bytes_threshold_mb`` [100], ``long_window_s`` [28800], ``net_long_threshold_mb``
[1024], ``include_private`` [false], ``severity`` ["high"], ``paths`` [/workspace, /root,
/home], ``exclude_dirs`` [see :data:`DEFAULT_EXCLUDE_DIRS`], ``file_window_s`` [2],
``file_read_threshold_mb`` [50], ``file_read_rate_mb_per_sec`` [10],
``file_write_threshold_mb`` [= read], ``file_write_rate_mb_per_sec`` [= read],
``file_severity`` ["high"], ``max_flows`` [65536], ``max_files`` [65536].

Dedup keys: ``exfiltration:<container>:<net|net_long|file_read|file_write>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from coi_watch.detectors._config import (
    cfg_bool,
    cfg_int,
    cfg_number,
    cfg_severity,
    cfg_strings,
    check_keys,
)
from coi_watch.detectors._net import classify
from coi_watch.detectors._windows import LruMap, SlidingSum
from coi_watch.events import Event, FileAccess, NetFlow
from coi_watch.verdicts import Severity, Verdict

__all__ = ("DEFAULT_EXCLUDE_DIRS", "DEFAULT_PATHS", "Exfiltration")

_NAME = "exfiltration"
_SEC = 1_000_000_000
_MIB = 1 << 20
DEFAULT_PATHS: tuple[str, ...] = ("/workspace", "/root", "/home")
DEFAULT_EXCLUDE_DIRS: tuple[str, ...] = (
    "node_modules", ".git", ".venv", "venv", "__pycache__", ".cache", ".npm", ".pnpm-store",
    ".yarn", ".cargo", ".rustup", "target", ".tox", "site-packages", ".m2", ".gradle",
    ".mypy_cache", ".pytest_cache", ".ruff_cache",
)
_PRIVATE = frozenset({"private", "cgnat", "link-local", "ula"})
_FLOW_EVENTS = frozenset({"new", "update", "counter", "dump", "destroy"})  # dump: a counter
_TOP = 5


@dataclass(slots=True)
class _Box:
    """Per-container windows and arming flags."""

    net: SlidingSum
    net_long: SlidingSum
    read: SlidingSum
    read_rate: SlidingSum
    write: SlidingSum
    write_rate: SlidingSum
    fired: dict[str, int] = field(default_factory=dict)  # what -> now_ns of the last verdict
    dsts: dict[str, list[int]] = field(default_factory=dict)  # dst -> [bytes, last_ns]


@dataclass(slots=True)
class ExfiltrationStats:
    """Counters of the detector."""

    flow_events: int = 0
    baselined: int = 0
    resets: int = 0
    flows_evicted: int = 0
    file_events: int = 0
    files_evicted: int = 0
    verdicts: int = 0


class Exfiltration:
    """Volume-based exfiltration; the strategy is in the module docstring."""

    name: ClassVar[str] = _NAME
    consumes: ClassVar[frozenset[str]] = frozenset({"net.flow", "file.access"})

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        cfg = dict(config or {})
        check_keys(_NAME, cfg, (
            "window_s", "net_bytes_threshold_mb", "long_window_s", "net_long_threshold_mb",
            "include_private", "severity", "paths", "exclude_dirs", "file_window_s",
            "file_read_threshold_mb", "file_read_rate_mb_per_sec", "file_write_threshold_mb",
            "file_write_rate_mb_per_sec", "file_severity", "max_flows", "max_files",
        ))
        self._window_ns = int(cfg_number(_NAME, cfg, "window_s", 60) * _SEC)
        self._net_max = int(cfg_number(_NAME, cfg, "net_bytes_threshold_mb", 100) * _MIB)
        self._long_ns = int(cfg_number(_NAME, cfg, "long_window_s", 28800) * _SEC)
        self._long_max = int(cfg_number(_NAME, cfg, "net_long_threshold_mb", 1024) * _MIB)
        self._private = cfg_bool(_NAME, cfg, "include_private", False)
        self._severity = cfg_severity(_NAME, cfg, "severity", "high")
        self._paths = tuple(p.rstrip("/") or "/" for p in
                            cfg_strings(_NAME, cfg, "paths", DEFAULT_PATHS))
        self._prefixes = tuple(p if p == "/" else p + "/" for p in self._paths)
        self._excl = tuple(f"/{d.strip('/')}/" for d in
                           cfg_strings(_NAME, cfg, "exclude_dirs", DEFAULT_EXCLUDE_DIRS))
        self._file_ns = int(cfg_number(_NAME, cfg, "file_window_s", 2) * _SEC)
        read_mb = cfg_number(_NAME, cfg, "file_read_threshold_mb", 50)
        read_rate = cfg_number(_NAME, cfg, "file_read_rate_mb_per_sec", 10)
        self._read_max = int(read_mb * _MIB)
        self._read_rate = read_rate
        self._write_max = int(cfg_number(_NAME, cfg, "file_write_threshold_mb", read_mb) * _MIB)
        self._write_rate = cfg_number(_NAME, cfg, "file_write_rate_mb_per_sec", read_rate)
        self._file_sev = cfg_severity(_NAME, cfg, "file_severity", "high")
        self._flows: LruMap[tuple[Any, ...], int] = LruMap(
            cfg_int(_NAME, cfg, "max_flows", 65536))
        files = cfg_int(_NAME, cfg, "max_files", 65536)
        self._written: LruMap[tuple[str, str], int] = LruMap(files)
        self._read: LruMap[tuple[str, str], tuple[int, int]] = LruMap(files)
        self._boxes: LruMap[str, _Box] = LruMap(4096)
        self.stats = ExfiltrationStats()

    def _box(self, container: str) -> _Box:
        box = self._boxes.touch(container)
        if box is None:
            w, f = self._window_ns, self._file_ns
            box = _Box(SlidingSum(w), SlidingSum(self._long_ns, 96), SlidingSum(f, 20),
                       SlidingSum(w), SlidingSum(f, 20), SlidingSum(w))
            self._boxes.put(container, box)
        return box

    # -- events

    def feed(self, ev: Event, now_ns: int) -> Iterable[Verdict]:
        """Take a flow reading or a file event; return at most two verdicts."""
        if isinstance(ev, NetFlow):
            return self._flow(ev, now_ns)
        if isinstance(ev, FileAccess):
            return self._file(ev, now_ns)
        return ()

    def _flow(self, ev: NetFlow, now_ns: int) -> list[Verdict]:
        self.stats.flow_events += 1
        if ev.event not in _FLOW_EVENTS:
            return []
        cls = classify(ev.dst)
        if cls == "loopback" or (cls in _PRIVATE and not self._private):
            return []
        key: tuple[Any, ...] = (
            (ev.container, ev.flow_id) if ev.flow_id
            else (ev.container, ev.proto, ev.src, ev.sport, ev.dst, ev.dport)
        )
        value = max(0, ev.bytes_out)
        flows = self._flows
        last = flows.touch(key)
        if last is None:
            fresh = ev.event == "new" or (
                ev.start_ns > 0 and 0 <= ev.wall_ns - ev.start_ns <= self._window_ns)
            delta = value if fresh else 0
            if not fresh:
                self.stats.baselined += 1
        elif ev.event == "new":
            delta = value  # a new flow under a reused id
        elif value == 0:
            delta, value = 0, last  # a reading without counters (no accounting): keep last
        elif value >= last:
            delta = value - last
        else:
            delta = value  # a new flow reusing the key: counter reset, never negative
            self.stats.resets += 1
        if ev.event == "destroy":
            flows.pop(key, None)
        else:
            before = flows.evicted
            flows.put(key, value)
            self.stats.flows_evicted += flows.evicted - before
        if delta <= 0:
            return []
        box = self._box(ev.container)
        short = box.net.add(now_ns, delta)
        long = box.net_long.add(now_ns, delta)
        entry = box.dsts.get(ev.dst)
        if entry is None or now_ns - entry[1] > self._window_ns:
            if entry is None and len(box.dsts) >= 64:
                oldest = min(box.dsts, key=lambda d: box.dsts[d][1])
                del box.dsts[oldest]
            entry = box.dsts[ev.dst] = [0, now_ns]
        entry[0] += delta
        entry[1] = now_ns
        out: list[Verdict] = []
        for what, total, limit, window_ns in (
            ("net", short, self._net_max, self._window_ns),
            ("net_long", long, self._long_max, self._long_ns),
        ):
            if not self._crossed(box, what, total, limit, now_ns, window_ns):
                continue
            top = sorted(((b, d) for d, (b, t) in box.dsts.items()
                          if now_ns - t <= window_ns), reverse=True)[:_TOP]
            evidence = {
                "bytes_out": total, "threshold_bytes": limit, "window_s": window_ns / _SEC,
                "mib_out": round(total / _MIB, 1),
                "flow": {"proto": ev.proto, "src": ev.src, "sport": ev.sport, "dst": ev.dst,
                         "dport": ev.dport, "flow_id": ev.flow_id, "bytes_out": ev.bytes_out,
                         "event": ev.event},
                "top_destinations": [{"dst": d, "bytes_out": b} for b, d in top],
                "include_private": self._private,
            }
            title = (f"{total / _MIB:.0f} MiB left the container in "
                     f"{window_ns / _SEC:.0f} s (threshold {limit / _MIB:.0f} MiB)")
            out.append(self._verdict(ev, what, self._severity, title, evidence,
                                     ("T1041", "T1048")))
        return out

    def _crossed(self, box: _Box, what: str, total: int, limit: int, now_ns: int,
                 window_ns: int) -> bool:
        """Over the limit, and not reported within the last window (a sustained transfer is
        one verdict a window, not one per reading)."""
        if total <= limit:
            return False
        last = box.fired.get(what)
        if last is not None and now_ns - last < window_ns:
            return False
        box.fired[what] = now_ns
        return True

    def _file(self, ev: FileAccess, now_ns: int) -> list[Verdict]:
        op = ev.op
        if op != "close_write" and op != "close_nowrite":
            return []
        path = ev.path
        if ev.size <= 0 or (not path.startswith(self._prefixes) and path not in self._paths):
            return []
        if self._excl and any(d in path for d in self._excl):
            return []
        self.stats.file_events += 1
        key = (ev.container, path)
        size = ev.size
        if op == "close_write":
            last_w = self._written.touch(key)
            volume = size - last_w if last_w is not None and size >= last_w else size
            before = self._written.evicted
            self._written.put(key, size)
            self.stats.files_evicted += self._written.evicted - before
            self._read.pop(key, None)  # changed content: a later read is new data
        else:
            seen = self._read.touch(key)
            if seen is not None and seen[0] == size and now_ns - seen[1] < self._window_ns:
                return []
            volume = size
            before = self._read.evicted
            self._read.put(key, (size, now_ns))
            self.stats.files_evicted += self._read.evicted - before
        if volume <= 0:
            return []
        box = self._box(ev.container)
        if op == "close_write":
            what, burst_w, rate_w = "file_write", box.write, box.write_rate
            burst_max, rate = self._write_max, self._write_rate
        else:
            what, burst_w, rate_w = "file_read", box.read, box.read_rate
            burst_max, rate = self._read_max, self._read_rate
        burst = burst_w.add(now_ns, volume)
        sustained = rate_w.add(now_ns, volume)
        rate_max = int(rate * _MIB * self._window_ns / _SEC)
        over_burst = burst > burst_max
        if not self._crossed(box, what, burst if over_burst else sustained,
                             burst_max if over_burst else rate_max, now_ns, self._window_ns):
            return []
        verb = "written" if what == "file_write" else "read"
        evidence: dict[str, Any] = {
            "bytes": burst if over_burst else sustained,
            "burst_bytes": burst, "burst_window_s": self._file_ns / _SEC,
            "burst_threshold_bytes": burst_max,
            "sustained_bytes": sustained, "sustained_window_s": self._window_ns / _SEC,
            "rate_mib_per_s": round(sustained / _MIB / (self._window_ns / _SEC), 2),
            "rate_threshold_mib_per_s": rate,
            "trigger": "volume" if over_burst else "rate",
            "path": path[:512], "size": size, "pid": ev.pid, "comm": ev.comm,
            "paths": list(self._paths),
            "volume_is": "growth at close_write" if verb == "written"
            else "file size at close_nowrite (upper bound)",
        }
        if over_burst:
            title = (f"{burst / _MIB:.0f} MiB of workspace files {verb} in "
                     f"{self._file_ns / _SEC:g} s (threshold {burst_max / _MIB:.0f} MiB)")
        else:
            title = (f"Workspace files {verb} at {evidence['rate_mib_per_s']} MiB/s over "
                     f"{self._window_ns / _SEC:g} s (threshold {rate:g} MiB/s)")
        mitre = ("T1005", "T1074.001") if verb == "written" else ("T1005",)
        return [self._verdict(ev, what, self._file_sev, title, evidence, mitre)]

    def _verdict(self, ev: NetFlow | FileAccess, what: str, severity: Severity, title: str,
                 evidence: dict[str, Any], mitre: tuple[str, ...]) -> Verdict:
        self.stats.verdicts += 1
        return Verdict(
            ts_ns=ev.ts_ns,
            wall_ns=ev.wall_ns,
            container=ev.container,
            detector=_NAME,
            title=title,
            severity=severity,
            evidence=evidence,
            mitre=mitre,
            dedup_key=f"{_NAME}:{ev.container}:{what}",
            event_kind=ev.kind,
            pid=ev.pid if isinstance(ev, FileAccess) else 0,
        )
