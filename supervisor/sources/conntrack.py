"""The conntrack source: every flow of a container, with live byte counters and tamper checks.

Strategy, per attached container (``ContainerInfo.init_pid`` -> ``/proc/PID/ns/net``, held
open as an fd so a recycled pid cannot redirect us):

- **Sockets in the container's netns** (:mod:`coi_watch.netns`, one thread hop at attach):
  an event socket bound to the conntrack ``NEW``/``DESTROY`` groups (``UPDATE`` only with
  ``updates: true``; it fires five times per TCP connection and carries no counters), with
  an 8 MiB ``SO_RCVBUFFORCE`` buffer; an nftables event socket (``NFNLGRP_NFTABLES``); and
  an unsubscribed query socket for dumps. Datagrams are decoded by :func:`parse_flows`,
  the wire parser's own attribute tables (:mod:`coi_watch.wire.conntrack`) projected onto
  what a :class:`NetFlow` carries (pyroute2 is several times slower and its socket dies for
  good on ``ENOBUFS``: ``notes/kernel-sources.md`` section 2).
- **Conntrack switched on there.** A ctnetlink listener alone does not start tracking; a
  ``ct`` expression does (``nft_ct_init`` -> ``nf_ct_netns_get`` registers the conntrack
  hooks of the family on every hook, so one rule tracks flows in every direction). coi-watch
  installs its own table, :data:`RULESET`, *after* subscribing (with
  ``nf_conntrack_events=2`` a flow created before any listener carries no event extension),
  and sets ``nf_conntrack_acct=1`` and ``nf_conntrack_timestamp=1`` in that netns (per-netns
  sysctls; the host's stay untouched).
- **Events.** ``new`` and ``destroy`` conntrack events become :class:`NetFlow` records of the
  container (``destroy`` with the flow's byte/packet counters and its wall-clock start/stop
  stamps). ``src``/``sport`` is the side that opened the flow; ``bytes_out`` counts the
  original direction (from the opener).
- **Long flows are counted while they last.** Counters exist only in ``destroy`` events and
  dumps, and ``destroy`` arrives seconds after a flow ends (GC-driven). So every
  ``interval`` seconds (default 2) a conntrack dump in the netns publishes an
  ``event="counter"`` record with the cumulative counters of each flow whose counters
  changed since the last dump (idle flows cost nothing); at most ``max_flows`` per dump.
  A flow's ``counter`` never overtakes its ``new``: queued events are read before each dump,
  and a flow not yet announced by a ``new`` waits for the next dump (or a resync).
- **Loss is never silent.** ``ENOBUFS`` on the event socket is counted
  (``ctx.count_drop(container, "conntrack", "enobufs", n)``: 1 at once), written as a system
  record, and answered by an immediate *resync* dump that publishes every live flow. The
  resync then tops the count up to an estimate: live flows we never had a ``new`` event for
  (flows alive at attach excepted) plus flows we knew that are gone without a ``destroy``.
  Failures of the periodic work are system records too, and the next tick tries again.
- **Tamper** (container root owns its netns and may undo all of the above):

  * our table changed or removed: the nftables event socket sees every change in the netns;
    each transaction ends with ``NFT_MSG_NEWGEN``, which names the process that made it
    (``NFTA_GEN_PROC_PID``, a host pid: ``nf_tables_fill_gen_info`` uses
    ``task_pid_nr``). A transaction touching ``inet coi_watch_ct`` made by anyone but our
    own ``nft`` is a :class:`Tamper` ``ct_table_removed`` (or ``ct_table_modified``), and
    the table is put back. A rule-list query on each periodic tick is the backstop for
    nftables events we lost to ``ENOBUFS``.
  * ``nf_conntrack_acct``, ``nf_conntrack_timestamp`` or ``nf_conntrack_events`` switched
    off: sysctls have no change events, so the three files (opened once inside the netns:
    the fd stays bound to that netns) are re-read on every periodic tick and, at most every
    250 ms, when events arrive; a ``0`` is ``acct_disabled`` / ``timestamp_disabled`` /
    ``events_disabled``, and the value is written back.

  Every repair is written as a ``tamper_repaired`` system record. A container fighting us
  gets at most one :class:`Tamper` per kind per second (the next one counts those held)
  and one ``nft`` run per second.
- **Release**: readers removed, sockets closed, our table deleted and the sysctls restored
  to what we found (when the netns still exists), the netns fd closed.

The sans-I/O parts live in private modules and are re-exported here:
:mod:`coi_watch.sources._ct_flows` (conntrack datagrams -> :class:`NetFlow`) and
:mod:`coi_watch.sources._ct_nft` (our table, nftables change events, the rule query).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from coi_watch import netns
from coi_watch.containers import ContainerInfo
from coi_watch.errors import SourceError, WireError
from coi_watch.events import Tamper, wall_from_mono
from coi_watch.protocols import SourceContext
from coi_watch.sources._ct_flows import FlowReader, _Counters, flow_event, parse_flows
from coi_watch.sources._ct_nft import (
    CHAIN,
    NFNLGRP_NFTABLES,
    RULESET,
    TABLE,
    NftChange,
    NftWatch,
    rule_query,
    rules_with_ct,
)
from coi_watch.wire import conntrack
from coi_watch.wire.netlink import NLMSG_DONE, NLMSG_ERROR, iter_messages
from coi_watch.wire.nfnetlink import NETLINK_NETFILTER, group_mask, parse_acks

__all__ = (
    "CHAIN",
    "DEFAULT_INTERVAL",
    "DEFAULT_MAX_FLOWS",
    "DEFAULT_RCVBUF",
    "RULESET",
    "TABLE",
    "ConntrackSource",
    "FlowReader",
    "NftChange",
    "NftWatch",
    "flow_event",
    "parse_flows",
    "rule_query",
    "rules_with_ct",
)

# "add" is a no-op for an existing table; with "delete" in the same transaction the result
# is exactly RULESET whatever was there before (nft 1.0.6 has no "destroy").
_INSTALL = f"add table inet {TABLE}\ndelete table inet {TABLE}\n{RULESET}"
_REMOVE = f"delete table inet {TABLE}\n"

DEFAULT_RCVBUF = 8 << 20  # 8 MiB (the kernel doubles it): a 14k-flow burst fit (the notes)
DEFAULT_INTERVAL = 2.0
DEFAULT_MAX_FLOWS = 4096
_NFT_RCVBUF = 1 << 20
_QUERY_RCVBUF = 4 << 20
_RECV_SIZE = 1 << 16  # one event is ~200-400 bytes; dump datagrams are at most 32 KiB
_BATCH = 256  # datagrams per wake-up before yielding to the loop
_QUERY_TIMEOUT = 5.0
_SYSCTL_RECHECK_NS = 250_000_000
_REPORT_EVERY_NS = 1_000_000_000
_REPAIR_EVERY = 1.0
_RESYNC_CAP_FACTOR = 4
_DRAIN_LIMIT = 1 << 16  # datagrams read at once before estimating a loss
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # asm-generic/socket.h

# The sysctls we need on, what switching each off is called, and what it costs us.
_SYSCTLS: Mapping[str, tuple[str, str]] = {
    "nf_conntrack_acct": ("acct_disabled", "flows created meanwhile carry no byte counters"),
    "nf_conntrack_timestamp": ("timestamp_disabled",
                               "flows created meanwhile carry no start/stop stamps"),
    "nf_conntrack_events": ("events_disabled",
                            "flows created meanwhile send no new/destroy events"),
}


# --------------------------------------------------------------------------- one container


def _open_sockets(rcvbuf: int, updates: bool) -> tuple[list[socket.socket], list[int]]:
    """Runs inside the container's netns (on a throwaway thread): sockets and sysctl fds."""
    socks: list[socket.socket] = []
    fds: list[int] = []
    try:
        groups = conntrack.EVENT_GROUPS if updates else group_mask(1, 3)  # NEW, DESTROY
        for bind_groups, buf in ((groups, rcvbuf), (group_mask(NFNLGRP_NFTABLES), _NFT_RCVBUF),
                                 (0, _QUERY_RCVBUF)):
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, buf)
            s.bind((0, bind_groups))
            s.setblocking(False)
        for name in _SYSCTLS:
            fds.append(os.open(f"/proc/sys/net/netfilter/{name}", os.O_RDWR | os.O_CLOEXEC))
    except BaseException:
        for s in socks:
            s.close()
        for fd in fds:
            os.close(fd)
        raise
    return socks, fds


class _Watch:
    """Everything kept for one attached container."""

    def __init__(self, src: ConntrackSource, ctx: SourceContext, info: ContainerInfo,
                 ns_fd: int) -> None:
        self.src = src
        self.ctx = ctx
        self.name = info.name
        self.ns_fd = ns_fd
        self.ns_inode = os.fstat(ns_fd).st_ino
        self.loop = asyncio.get_running_loop()
        self.reader = FlowReader(self.name, ctx.publish, on_wire_error=self._wire_error)
        self.nft = NftWatch()
        self.counters = _Counters()
        self.socks: list[socket.socket] = []
        self.sysctl_fds: dict[str, int] = {}
        self.found: dict[str, bytes] = {}  # sysctl values at attach, restored at release
        self.lock = asyncio.Lock()  # the query socket and nft runs
        self.wake = asyncio.Event()
        self.resync = True  # the first dump publishes every live flow
        self.lost_since_resync = 0
        self.baseline: set[int] = set()  # flows alive at attach (no new event for them)
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        self.repair: asyncio.Task[None] | None = None
        self.seq = 0
        self.last_sysctl_check = 0
        self.last_repair = -_REPAIR_EVERY
        self._reported: dict[str, int] = {}
        self._suppressed: dict[str, int] = {}
        self._last_tamper: dict[str, int] = {}
        self._held: dict[str, int] = {}
        self.stats = self.reader.stats
        self.stats.update(dict.fromkeys(
            ("dumps", "counter_events", "capped", "tamper", "repairs"), 0))

    # ------------------------------------------------------------------ setup / teardown

    async def open(self) -> None:
        socks, fds = await netns.acall_in_netns(
            self.ns_fd, lambda: _open_sockets(self.src.rcvbuf, self.src.updates))
        if self.closed:  # released while we were away
            for s in socks:
                s.close()
            for fd in fds:
                os.close(fd)
            return
        self.socks = socks
        self.sysctl_fds = dict(zip(_SYSCTLS, fds, strict=True))
        self.loop.add_reader(self.ev_sock.fileno(), self._on_events)
        self.loop.add_reader(self.nft_sock.fileno(), self._on_nft)
        for name, fd in self.sysctl_fds.items():
            value = os.pread(fd, 16, 0).strip()
            self.found[name] = value
            if value == b"0":
                os.pwrite(fd, b"1\n", 0)
        await self.install()
        if not self.closed:
            await self.dump()  # the baseline: flows alive before we came, published once
        if not self.closed:
            self.task = asyncio.create_task(self._tick_loop(), name=f"conntrack:{self.name}")

    @property
    def ev_sock(self) -> socket.socket:
        return self.socks[0]

    @property
    def nft_sock(self) -> socket.socket:
        return self.socks[1]

    @property
    def query_sock(self) -> socket.socket:
        return self.socks[2]

    async def install(self) -> None:
        """Put our table in place (exactly :data:`RULESET`, whatever was there).

        Raises:
            SourceError: ``nft`` failed.
        """
        ran = await netns.run_in_netns(
            self.ns_fd, ["nft", "-f", "-"], stdin=_INSTALL.encode(), on_start=self.nft.own.append)
        if ran.returncode != 0:
            raise SourceError(f"nft could not install table inet {TABLE} in the netns of "
                              f"{self.name}: {ran.error}")

    def close_sockets(self) -> None:
        for s in self.socks:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(s.fileno())
            s.close()
        self.socks = []

    async def close(self) -> None:
        """Stop everything; put the netns back as we found it if it still exists.
        Idempotent."""
        self.closed = True
        fd, self.ns_fd = self.ns_fd, -1
        if fd < 0:
            return
        try:
            for task in (self.task, self.repair):
                if task is not None and task is not asyncio.current_task():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            self.close_sockets()  # first: our own removal is no tamper
            for name, sysctl_fd in self.sysctl_fds.items():
                with contextlib.suppress(OSError):  # the netns is gone (ENOENT)
                    if self.found.get(name) == b"0":
                        os.pwrite(sysctl_fd, b"0\n", 0)
                os.close(sysctl_fd)
            self.sysctl_fds = {}
            with contextlib.suppress(OSError, TimeoutError):
                await netns.run_in_netns(fd, ["nft", "-f", "-"], stdin=_REMOVE.encode(),
                                         timeout=5.0)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ reader callbacks

    def _on_events(self, limit: int = _BATCH) -> bool:
        """Read up to ``limit`` datagrams; True when the socket was left empty."""
        sock, feed = self.ev_sock, self.reader.feed
        empty = False
        for _ in range(limit):
            try:
                data = sock.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                empty = True
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self._lost()
                    continue
                self._report("recv_error", {"error": str(exc)})
                break
            feed(data)
        if time.monotonic_ns() - self.last_sysctl_check >= _SYSCTL_RECHECK_NS:
            self.check_sysctls()
        return empty

    def _lost(self) -> None:
        self.stats["enobufs"] += 1
        self.lost_since_resync += 1
        self.ctx.count_drop(self.name, "conntrack", "enobufs", 1)
        self._report("enobufs", {"detail": "the conntrack event socket overflowed; the "
                                           "kernel dropped events; resyncing with a dump"})
        self.resync = True
        self.wake.set()

    def _on_nft(self) -> None:
        for _ in range(_BATCH):
            try:
                data = self.nft_sock.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    # A transaction may have been lost: the next tick's rule query decides.
                    self.nft.reset()
                    self.ctx.count_drop(self.name, "conntrack", "nft_enobufs", 1)
                    self._report("nft_enobufs", {"detail": "nftables events lost; "
                                                           "checking our table now"})
                    self.wake.set()
                    continue
                self._report("recv_error", {"error": str(exc), "socket": "nftables"})
                return
            try:
                changes = self.nft.feed(data)
            except WireError as exc:
                self._wire_error(exc, data)
                continue
            for change in changes:
                what = "ct_table_removed" if change.removed else "ct_table_modified"
                self.tamper(what, change.describe())
                self.schedule_repair(what)

    def _wire_error(self, exc: WireError, data: bytes) -> None:
        self.ctx.count_drop(self.name, "conntrack", "wire_error", 1)
        self._report("wire_error", {"error": str(exc), "len": len(data),
                                    "head": bytes(data[:128]).hex()})

    # ------------------------------------------------------------------ tamper

    def tamper(self, what: str, detail: str) -> None:
        """Publish a :class:`Tamper` event, at most one per ``what`` per second (a container
        fighting us could otherwise flood the bus); the next one says how many were held."""
        self.stats["tamper"] += 1
        ts = time.monotonic_ns()
        last = self._last_tamper.get(what)
        if last is not None and ts - last < _REPORT_EVERY_NS:
            self._held[what] = self._held.get(what, 0) + 1
            return
        self._last_tamper[what] = ts
        held = self._held.pop(what, 0)
        if held:
            detail += f" ({held} more since the last report)"
        self.ctx.publish(Tamper(ts_ns=ts, wall_ns=wall_from_mono(ts), container=self.name,
                                source="conntrack", what=what, detail=detail))

    def schedule_repair(self, what: str) -> None:
        if self.closed or (self.repair is not None and not self.repair.done()):
            return
        self.repair = asyncio.create_task(self._repair_table(what))

    async def _repair_table(self, what: str) -> None:
        # At most one nft run per second: a container deleting our table in a loop must not
        # make us fork nft in a loop.
        wait = self.last_repair + _REPAIR_EVERY - self.loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        self.last_repair = self.loop.time()
        async with self.lock:
            if self.closed:
                return
            try:
                await self.install()
            except (SourceError, OSError, TimeoutError) as exc:
                self.ctx.system(self.name, "tamper_repair_failed",
                                {"source": "conntrack", "what": what, "error": str(exc)})
                return
        self.stats["repairs"] += 1
        self.ctx.system(self.name, "tamper_repaired",
                        {"source": "conntrack", "what": what,
                         "action": f"re-installed table inet {TABLE}"})

    def check_sysctls(self) -> None:
        """Re-read our three sysctls; a ``0`` is tamper, written back at once."""
        self.last_sysctl_check = time.monotonic_ns()
        for name, fd in self.sysctl_fds.items():
            try:
                value = os.pread(fd, 16, 0).strip()
            except OSError as exc:  # ENOENT: the netns is gone (the container stopped)
                self._report("sysctl_error", {"sysctl": name, "error": str(exc)})
                continue
            if value != b"0":
                continue
            what, cost = _SYSCTLS[name]
            self.tamper(what, f"net.netfilter.{name} was 0 in the container's netns: {cost}")
            if name == "nf_conntrack_events":  # flows made meanwhile had no new event
                self.resync = True
                self.wake.set()
            try:
                os.pwrite(fd, self._wanted(name) + b"\n", 0)
            except OSError as exc:
                self.ctx.system(self.name, "tamper_repair_failed",
                                {"source": "conntrack", "what": what, "error": str(exc)})
                continue
            self.stats["repairs"] += 1
            self.ctx.system(self.name, "tamper_repaired",
                            {"source": "conntrack", "what": what,
                             "action": f"net.netfilter.{name} switched back on"})

    def _wanted(self, name: str) -> bytes:
        # What we found at attach unless that was off (nf_conntrack_events may be 1 or 2).
        value = self.found.get(name, b"1")
        return value if value not in (b"", b"0") else b"1"

    # ------------------------------------------------------------------ periodic work

    async def _tick_loop(self) -> None:
        while not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.src.interval)
            self.wake.clear()
            try:
                self.check_sysctls()
                await self.check_table()
                await self.dump()
            except Exception as exc:  # reported, and tried again next tick
                self._report("tick_failed", {"error": f"{type(exc).__name__}: {exc}"})

    async def _query(self, request: bytes, seq: int, on_data: Callable[[bytes], None]) -> None:
        """Send one dump request on the query socket and feed every reply datagram to
        ``on_data`` until ``NLMSG_DONE``.

        Raises:
            OSError: the kernel answered with an error.
            TimeoutError: no complete answer in time (the socket is reopened).
        """
        sock = self.query_sock
        sock.send(request)
        try:
            async with asyncio.timeout(_QUERY_TIMEOUT):
                while True:
                    data = await self.loop.sock_recv(sock, _RECV_SIZE)
                    for ack in parse_acks(data):
                        if ack.seq == seq and ack.errno:
                            raise OSError(ack.errno, os.strerror(ack.errno))
                    done = any(m.seq == seq and m.type in (NLMSG_DONE, NLMSG_ERROR)
                               for m in iter_messages(data))
                    on_data(data)
                    if done:
                        return
        except TimeoutError:
            await self._reopen_query()
            raise

    async def _reopen_query(self) -> None:
        # A half-read dump leaves the socket busy (EBUSY): start over with a fresh one.
        fresh = await netns.acall_in_netns(self.ns_fd, lambda: socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER))
        fresh.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, _QUERY_RCVBUF)
        fresh.bind((0, 0))
        fresh.setblocking(False)
        old, self.socks[2] = self.socks[2], fresh
        old.close()

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0x7FFFFFFF or 1
        return self.seq

    async def check_table(self) -> None:
        """Backstop for lost nftables events: is our ``ct`` rule still there?"""
        if self.repair is not None and not self.repair.done():
            return
        found = 0

        def count(data: bytes) -> None:
            nonlocal found
            found += rules_with_ct(data)

        async with self.lock:
            seq = self._next_seq()
            try:
                await self._query(rule_query(seq), seq, count)
            except FileNotFoundError:  # ENOENT: the table or chain is gone
                found = 0
        if found or self.closed:
            return
        # The removal's own nftables events are queued before our answer (nf_tables notifies
        # at commit): read them first, so one act is reported once, with its pid.
        self._on_nft()
        if self.repair is None or self.repair.done():
            self.tamper("ct_table_removed",
                        f"the ct rule of table inet {TABLE} was missing at the periodic check")
            self.schedule_repair("ct_table_removed")

    async def dump(self) -> None:
        """Publish ``counter`` records (all live flows on a resync, else those that moved).

        Work is bounded: at most ``max_flows`` entries are decoded per dump (four times as
        many for the resync after ``ENOBUFS``, which also estimates what was lost:
        :meth:`_estimate_loss`); the rest of the dump is only drained (message headers
        counted) and reported as capped.
        """
        resync, self.resync = self.resync, False
        lost, self.lost_since_resync = self.lost_since_resync, 0
        cap = self.src.max_flows * (_RESYNC_CAP_FACTOR if lost else 1)
        seen: set[int] = set()
        unknown: set[int] = set()
        published = total = 0
        ts = time.monotonic_ns()
        publish, counters, known = self.ctx.publish, self.counters, self.reader.known
        baseline = self.baseline
        known_before = set(known) if lost else set()

        def on_data(data: bytes) -> None:
            nonlocal published, total
            if total >= cap:
                total += sum(1 for m in iter_messages(data) if m.type >> 8 == 1)
                return
            try:
                entries = parse_flows(data)
            except WireError as exc:
                self._wire_error(exc, data)
                return
            total += len(entries)
            for _, ev in entries:
                seen.add(ev.id)
                if ev.id not in known and ev.id not in baseline:
                    unknown.add(ev.id)
                    if not resync:  # its new event is still queued: counters after it
                        continue
                if ev.bytes_orig is None:  # created while accounting was off
                    continue
                if counters.changed(ev) or resync:
                    publish(flow_event(ev, self.name, "counter", ts))
                    published += 1

        # Publish queued new events first: a counter must not overtake its flow's new.
        self._on_events(limit=_DRAIN_LIMIT)
        async with self.lock:
            seq = self._next_seq()
            await self._query(conntrack.dump_request(seq=seq), seq, on_data)
        complete = total <= len(seen)
        if self.stats["dumps"] == 0:  # flows from before we attached: no new event to expect
            baseline.update(seen - known)
        if complete:  # forget the flows that are gone
            counters.keep_only(seen)
            baseline.intersection_update(seen)
        else:
            self.stats["capped"] += 1
            self._report("counter_capped", {"max_flows": cap, "live_flows": total,
                                            "decoded": len(seen)})
        self.stats["dumps"] += 1
        self.stats["counter_events"] += published
        if lost:
            self._estimate_loss(lost, known_before, seen, unknown, complete, total, published)
        elif resync:
            known |= unknown  # published now; later dumps treat them as any other flow

    def _estimate_loss(self, lost: int, known_before: set[int], seen: set[int],
                       unknown: set[int], complete: bool, total: int, published: int) -> None:
        """After ``ENOBUFS``: count the ``new`` events we never got (live flows we had not
        heard of) and the ``destroy`` events we never got (flows we knew that are gone), on
        top of the ``lost`` drops already counted, and bring ``known`` up to date."""
        # Events queued before the dump answered are late, not lost: read them first.
        self._on_events(limit=_DRAIN_LIMIT)
        known = self.reader.known
        missed_new = unknown - known
        missed_destroy = (known_before - seen) & known if complete else set()
        known -= missed_destroy
        known |= missed_new
        extra = len(missed_new) + len(missed_destroy) - lost
        if extra > 0:
            self.ctx.count_drop(self.name, "conntrack", "enobufs", extra)
        self.ctx.system(self.name, "resynced",
                        {"source": "conntrack", "live_flows": total, "published": published,
                         "missed_new": len(missed_new), "missed_destroy": len(missed_destroy),
                         "lower_bound": not complete})

    # ------------------------------------------------------------------ helpers

    def _report(self, kind: str, detail: dict[str, Any]) -> None:
        """A ``system`` record, at most one per kind per second (the rest are counted)."""
        now = time.monotonic_ns()
        last = self._reported.get(kind)
        if last is not None and now - last < _REPORT_EVERY_NS:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._reported[kind] = now
        self.ctx.system(self.name, kind, {"source": "conntrack", **detail,
                                          "suppressed": self._suppressed.pop(kind, 0)})


# --------------------------------------------------------------------------- the source


class ConntrackSource:
    """The ``conntrack`` source (:class:`~coi_watch.protocols.Source`,
    :class:`~coi_watch.protocols.ContainerAware`).

    Config keys: ``interval`` (seconds between counter dumps and checks, default 2),
    ``max_flows`` (counter records per dump, default 4096), ``rcvbuf`` (event socket
    buffer, bytes, default 8 MiB), ``updates`` (publish ``update`` events, default false).
    """

    name: ClassVar[str] = "conntrack"

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        cfg = dict(config or {})
        self.interval = float(cfg.get("interval", DEFAULT_INTERVAL))
        self.max_flows = int(cfg.get("max_flows", DEFAULT_MAX_FLOWS))
        self.rcvbuf = int(cfg.get("rcvbuf", DEFAULT_RCVBUF))
        self.updates = bool(cfg.get("updates", False))
        if self.interval <= 0 or self.max_flows <= 0 or self.rcvbuf <= 0:
            raise SourceError("conntrack: interval, max_flows and rcvbuf must be positive")
        self.watches: dict[str, _Watch] = {}
        self._pending: dict[str, ContainerInfo] = {}
        self._ctx: SourceContext | None = None

    def netns_path(self, info: ContainerInfo) -> str:
        """Where the container's network namespace is (its init's)."""
        return netns.proc_netns_path(info.init_pid)

    async def attach(self, info: ContainerInfo) -> None:
        """Watch ``info.name``'s netns (see the module docstring). Idempotent.

        Raises:
            SourceError: the netns exists but conntrack cannot be set up there.
        """
        ctx = self._ctx
        if ctx is None:
            self._pending[info.name] = info
            return
        try:
            ns_fd = netns.open_netns(self.netns_path(info))
        except OSError as exc:  # the container is gone already
            ctx.system(info.name, "attach_skipped",
                       {"source": "conntrack", "error": str(exc)})
            return
        old = self.watches.get(info.name)
        if old is not None:
            if old.ns_inode == os.fstat(ns_fd).st_ino:
                os.close(ns_fd)
                return
            await self.release(info.name)  # restarted: a new netns
        watch = self.watches[info.name] = _Watch(self, ctx, info, ns_fd)
        try:
            await watch.open()
        except BaseException as exc:
            released = watch.closed
            if self.watches.get(info.name) is watch:
                del self.watches[info.name]
            await watch.close()
            if released and isinstance(exc, OSError | SourceError):
                return  # release() came first: nothing to report
            if isinstance(exc, OSError):
                raise SourceError(f"conntrack cannot watch {info.name}: {exc}") from exc
            raise
        if not watch.closed:
            ctx.system(info.name, "conntrack_attached",
                       {"source": "conntrack", "netns": watch.ns_inode, "table": TABLE,
                        "sysctls_found": {k: v.decode() for k, v in watch.found.items()}})

    async def release(self, name: str) -> None:
        """Stop watching ``name``; remove our table from its netns if it still exists."""
        self._pending.pop(name, None)
        watch = self.watches.pop(name, None)
        if watch is not None and not watch.closed:
            await watch.close()

    async def run(self, ctx: SourceContext, ready: asyncio.Future[None]) -> None:
        """Attach what was announced before, set ``ready``, then serve until cancelled.

        Raises:
            SourceError: not root, or ``nft`` / ``nsenter`` missing.
        """
        if os.geteuid() != 0:
            raise SourceError("the conntrack source needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)")
        for tool in ("nft", "nsenter"):
            if shutil.which(tool) is None:
                raise SourceError(f"the conntrack source needs {tool!r} on PATH")
        self._ctx = ctx
        try:
            pending, self._pending = self._pending, {}
            for info in pending.values():
                try:
                    await self.attach(info)
                except SourceError as exc:
                    ctx.system(info.name, "source_attach_failed",
                               {"source": "conntrack", "error": str(exc)})
            if not ready.done():
                ready.set_result(None)
            await asyncio.Event().wait()
        finally:
            for name in list(self.watches):
                await asyncio.shield(self.release(name))
            self._ctx = None
