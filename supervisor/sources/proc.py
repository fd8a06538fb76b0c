"""The process source: fork/exec/exit/comm/uid events of container processes, from the kernel.

Strategy: one ``NETLINK_CONNECTOR`` socket subscribed to the proc connector
(``CN_IDX_PROC``) sees every task event on the machine, with host pids and the kernel's
``CLOCK_MONOTONIC`` stamp. The socket is read with ``loop.add_reader``; each wake-up drains
it (bounded, to stay fair to the loop), :func:`coi_watch.wire.proc_connector.parse` decodes,
and :class:`ProcTracker` turns records into events:

- attribution first (:class:`~coi_watch.sources.attribution.ProcessTable`): exec reads
  ``/proc/PID/cgroup`` afresh (``incus exec`` moves its child into the container between fork
  and exec), fork inherits the parent's container, exit forgets;
- only pids of containers where ``ctx.watched(name)`` is true are published, and only they
  are enriched (host processes cost one cgroup read per exec and nothing else);
- exec is enriched *synchronously, in the reader callback*: a short-lived process is gone
  from ``/proc`` within a millisecond, and any hop through a queue loses that race;
- comm events re-read argv: busybox applets that exec re-exec ``/proc/self/exe`` (exec shows
  comm ``exe``) and then set comm to the applet name; NOEXEC applets (``ls``, ``dd``) show up
  only as fork + comm (``notes/kernel-sources.md`` section 3);
- threads are not processes: fork/exit/comm with ``pid != tgid`` are skipped.

Loss is reported, never hidden: ``ENOBUFS`` on ``recv`` (the kernel dropped events because
the socket buffer was full) and gaps in the per-CPU ``cn_msg.seq`` counter are counted with
``ctx.count_drop`` and written as ``system`` audit records; a datagram that does not parse is
a ``wire_error`` drop, and reading continues.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeGuard

from coi_watch.containers import ContainerInfo
from coi_watch.errors import SourceError, WireError
from coi_watch.events import ProcComm, ProcExec, ProcExit, ProcFork, ProcUid, wall_from_mono
from coi_watch.protocols import SourceContext
from coi_watch.sources.attribution import DEFAULT_CAP, Attribution, ProcessTable
from coi_watch.sources.procfs import enrich_exec, read_argv
from coi_watch.wire.proc_connector import (
    CN_IDX_PROC,
    NETLINK_CONNECTOR,
    PROC_CN_MCAST_IGNORE,
    PROC_CN_MCAST_LISTEN,
    ProcRecord,
    decode_exit_status,
    parse,
    subscribe_message,
)

__all__ = ("DEFAULT_RCVBUF", "ProcSource", "ProcTracker", "open_connector")

DEFAULT_RCVBUF = 8 << 20  # 8 MiB: no ENOBUFS at 14k events/s in the measurements
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # asm-generic/socket.h
_RECV_SIZE = 8192  # one proc event datagram is 76 bytes
_BATCH = 512  # datagrams per wake-up before yielding to the loop
_ACK_TIMEOUT = 2.0
_REPORT_EVERY_NS = 1_000_000_000  # at most one system record per kind per second
_SEQ_WINDOW = 1 << 20  # a forward jump larger than this is a counter reset, not a loss

Enrich = Callable[..., ProcExec]


def open_connector(rcvbuf: int = DEFAULT_RCVBUF) -> socket.socket:
    """A non-blocking ``NETLINK_CONNECTOR`` socket bound to the proc events group.

    ``SO_RCVBUFFORCE`` (root) lifts the buffer above ``net.core.rmem_max``; without
    ``CAP_NET_ADMIN`` it falls back to ``SO_RCVBUF``. Not yet subscribed: send
    :func:`~coi_watch.wire.proc_connector.subscribe_message` next.

    Raises:
        SourceError: the socket cannot be created or bound (not root, no ``CONFIG_CONNECTOR``).
    """
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    except OSError as exc:
        raise SourceError(
            f"proc connector unavailable (socket(AF_NETLINK, NETLINK_CONNECTOR): {exc}); "
            "the kernel needs CONFIG_CONNECTOR and CONFIG_PROC_EVENTS"
        ) from exc
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, CN_IDX_PROC))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise SourceError(
            f"cannot join the proc connector group ({exc}): coi-watch must run as root "
            "(CAP_NET_ADMIN) in the initial user and pid namespace"
        ) from exc
    return sock


class ProcTracker:
    """Records in, events out: attribution, filtering, enrichment and loss accounting.

    Synchronous and socket-free, so tests and benchmarks can feed it datagrams directly.
    ``stats`` counts what happened (``records``, ``published``, ``threads``, ``unknown``,
    ``unattributed``, ``wire_errors``, ``enobufs``, ``seq_lost``).
    """

    def __init__(
        self,
        ctx: SourceContext,
        table: ProcessTable,
        *,
        enrich: Enrich = enrich_exec,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.ctx = ctx
        self.table = table
        self.enrich = enrich
        self.stats: dict[str, int] = dict.fromkeys(
            ("datagrams", "records", "published", "threads", "unknown", "unattributed",
             "wire_errors", "enobufs", "seq_lost"), 0)
        self.on_ack: Callable[[ProcRecord], None] | None = None
        self._clock = clock
        self._last_seq: dict[int, int] = {}
        self._last_uid: dict[int, tuple[int, int]] = {}
        self._unknown_codes: set[int] = set()
        self._reported: dict[str, int] = {}
        self._suppressed: dict[str, int] = {}

    # ------------------------------------------------------------------ input

    def feed(self, data: bytes) -> None:
        """Handle one datagram from the connector socket."""
        self.stats["datagrams"] += 1
        try:
            records = parse(data)
        except WireError as exc:
            self.stats["wire_errors"] += 1
            self.ctx.count_drop("", "proc", "wire_error", 1)
            self._report("wire_error", {"error": str(exc), "len": len(data),
                                        "head": bytes(data[:128]).hex()})
            return
        for rec in records:
            self.handle(rec)

    def lost_enobufs(self) -> None:
        """``recv`` failed with ``ENOBUFS``: the kernel dropped events for this socket."""
        self.stats["enobufs"] += 1
        self.ctx.count_drop("", "proc", "enobufs", 1)
        self._report("enobufs", {"detail": "socket receive buffer overflowed; the kernel "
                                           "dropped proc events (the seq_gap count says how many)"})

    def handle(self, rec: ProcRecord) -> None:
        """Handle one decoded record."""
        self.stats["records"] += 1
        self._check_seq(rec)
        handler = self._HANDLERS.get(rec.what)
        if handler is not None:
            handler(self, rec)

    # ------------------------------------------------------------------ per kind

    def _fork(self, rec: ProcRecord) -> None:
        if rec.pid != rec.tgid:
            self.stats["threads"] += 1
            return
        got = self.table.on_fork(rec.parent_tgid, rec.tgid)
        if self._watched(got):
            self._publish(ProcFork(ts_ns=rec.ts_ns, wall_ns=wall_from_mono(rec.ts_ns),
                                   container=got, pid=rec.tgid, ppid=rec.parent_tgid))

    def _exec(self, rec: ProcRecord) -> None:
        got = self.table.resolve(rec.tgid, fresh=True)
        if not isinstance(got, str):
            if got is not None:
                self.stats["unattributed"] += 1
            return
        if self.ctx.watched(got):
            self._publish(self.enrich(rec.tgid, container=got, ts_ns=rec.ts_ns,
                                      attribute=self.table.resolve))

    def _exit(self, rec: ProcRecord) -> None:
        if rec.pid != rec.tgid:
            self.stats["threads"] += 1
            return
        got = self.table.on_exit(rec.tgid)
        self._last_uid.pop(rec.tgid, None)
        if self._watched(got):
            code, sig = decode_exit_status(rec.exit_code)
            self._publish(ProcExit(ts_ns=rec.ts_ns, wall_ns=wall_from_mono(rec.ts_ns),
                                   container=got, pid=rec.tgid, code=code, signal=sig))

    def _comm(self, rec: ProcRecord) -> None:
        if rec.pid != rec.tgid:  # a thread naming itself (prctl on a non-leader thread)
            self.stats["threads"] += 1
            return
        got = self.table.resolve(rec.tgid)
        if self._watched(got):
            self._publish(ProcComm(ts_ns=rec.ts_ns, wall_ns=wall_from_mono(rec.ts_ns),
                                   container=got, pid=rec.tgid, comm=rec.comm,
                                   argv=read_argv(rec.tgid).argv))

    def _uid(self, rec: ProcRecord) -> None:
        # Credentials are per thread: glibc's setuid changes every thread (one event each),
        # a raw syscall only one. Publish the leader's change, and a thread's only when it
        # differs from the last one published for the process.
        ids = (rec.ruid, rec.euid)
        if rec.pid != rec.tgid and self._last_uid.get(rec.tgid) == ids:
            return
        got = self.table.resolve(rec.tgid)
        if self._watched(got):
            if len(self._last_uid) >= self.table.cap:
                self._last_uid.clear()
            self._last_uid[rec.tgid] = ids
            self._publish(ProcUid(ts_ns=rec.ts_ns, wall_ns=wall_from_mono(rec.ts_ns),
                                  container=got, pid=rec.tgid, ruid=rec.ruid, euid=rec.euid))

    def _ack(self, rec: ProcRecord) -> None:
        if self.on_ack is not None:
            self.on_ack(rec)

    def _unknown(self, rec: ProcRecord) -> None:
        self.stats["unknown"] += 1
        if rec.code not in self._unknown_codes:
            self._unknown_codes.add(rec.code)
            self.ctx.system("", "unknown_proc_event", {"source": "proc", "what": rec.code})

    _HANDLERS: ClassVar[Mapping[str, Callable[[ProcTracker, ProcRecord], None]]] = {
        "fork": _fork,
        "exec": _exec,
        "exit": _exit,
        "comm": _comm,
        "uid": _uid,
        "ack": _ack,
        "unknown": _unknown,
        # gid, sid, ptrace, coredump: decoded, counted in "records", no event type yet.
    }

    # ------------------------------------------------------------------ helpers

    def _watched(self, got: Attribution) -> TypeGuard[str]:
        return isinstance(got, str) and self.ctx.watched(got)

    def _publish(self, ev: Any) -> None:
        self.stats["published"] += 1
        self.ctx.publish(ev)

    def _check_seq(self, rec: ProcRecord) -> None:
        # cn_msg.seq counts proc events per CPU (send_msg in drivers/connector/cn_proc.c,
        # under a per-CPU lock, so in order per CPU); a forward jump means events were lost.
        last = self._last_seq.get(rec.cpu)
        self._last_seq[rec.cpu] = rec.seq
        if last is None:
            return
        gap = (rec.seq - last - 1) & 0xFFFFFFFF
        if 0 < gap < _SEQ_WINDOW:
            self.stats["seq_lost"] += gap
            self.ctx.count_drop("", "proc", "seq_gap", gap)
            self._report("seq_gap", {"cpu": rec.cpu, "lost": gap, "seq": rec.seq})

    def _report(self, kind: str, detail: dict[str, Any]) -> None:
        """A ``system`` record, at most one per kind per second (the rest are counted)."""
        now = self._clock()
        last = self._reported.get(kind)
        if last is not None and now - last < _REPORT_EVERY_NS:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._reported[kind] = now
        detail = {"source": "proc", **detail, "suppressed": self._suppressed.pop(kind, 0)}
        self.ctx.system("", kind, detail)


class ProcSource:
    """The ``proc`` source (:class:`coi_watch.protocols.Source`).

    Config keys: ``rcvbuf`` (bytes, default 8 MiB) and ``table_cap`` (pids remembered,
    default 65536). ``table`` and ``enrich`` may be injected (tests). :attr:`table` is
    public so the supervisor can ``forget_container`` when an instance is deleted.
    """

    name: ClassVar[str] = "proc"

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        table: ProcessTable | None = None,
        enrich: Enrich = enrich_exec,
    ) -> None:
        cfg = dict(config or {})
        self.rcvbuf = int(cfg.get("rcvbuf", DEFAULT_RCVBUF))
        # "is None", not "or": an empty ProcessTable is falsy (it has __len__).
        self.table = table if table is not None else ProcessTable(
            int(cfg.get("table_cap", DEFAULT_CAP))
        )
        self.enrich = enrich
        self.tracker: ProcTracker | None = None

    async def attach(self, info: ContainerInfo) -> None:
        """Nothing to set up: the proc connector sees every process on the host."""

    async def release(self, name: str) -> None:
        """Forget every pid of ``name`` (it stopped or was deleted)."""
        self.table.forget_container(name)

    async def run(self, ctx: SourceContext, ready: asyncio.Future[None]) -> None:
        """Subscribe, set ``ready`` once the kernel acknowledged, then read until cancelled.

        Raises:
            SourceError: the socket cannot be opened, the kernel refused the subscription or
                never answered it, or the socket failed while reading.
        """
        loop = asyncio.get_running_loop()
        tracker = self.tracker = ProcTracker(ctx, self.table, enrich=self.enrich)
        sock = open_connector(self.rcvbuf)
        failed: asyncio.Future[None] = loop.create_future()
        acked: asyncio.Future[int] = loop.create_future()
        nonce = secrets.randbelow(1 << 31)

        def on_ack(rec: ProcRecord) -> None:
            # The kernel answers with ack = ours + 1 (cn_proc_ack); other listeners' acks
            # reach us too and are ignored.
            if rec.ack == nonce + 1 and not acked.done():
                acked.set_result(rec.err)

        def fail(exc: BaseException) -> None:
            # Surface it through run(): the supervisor's task group stops rather than keep
            # running half-blind (a bug here must not turn into silently lost events).
            loop.remove_reader(sock.fileno())
            if not failed.done():
                failed.set_exception(exc)

        def on_readable() -> None:
            for _ in range(_BATCH):
                try:
                    data = sock.recv(_RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        tracker.lost_enobufs()
                        continue
                    fail(SourceError(f"proc connector recv failed: {exc}"))
                    return
                try:
                    tracker.feed(data)
                except Exception as exc:  # re-raised from run()
                    fail(exc)
                    return

        tracker.on_ack = on_ack
        loop.add_reader(sock.fileno(), on_readable)
        try:
            sock.send(subscribe_message(PROC_CN_MCAST_LISTEN, ack=nonce))
            either: set[asyncio.Future[Any]] = {acked, failed}
            await asyncio.wait(either, timeout=_ACK_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
            if failed.done():
                failed.result()  # raises what broke the reader before the ack came
            if not acked.done():
                raise SourceError(
                    "the kernel did not acknowledge PROC_CN_MCAST_LISTEN within "
                    f"{_ACK_TIMEOUT:g} s: coi-watch must run as root in the initial user "
                    "and pid namespace"
                )
            err = acked.result()
            if err:
                raise SourceError(
                    f"the kernel refused the proc connector subscription: {os.strerror(err)}"
                )
            if not ready.done():
                ready.set_result(None)
            await failed
        finally:
            tracker.on_ack = None
            loop.remove_reader(sock.fileno())
            # Best effort: a missed IGNORE only leaves the kernel sending to nobody.
            with contextlib.suppress(OSError):
                sock.send(subscribe_message(PROC_CN_MCAST_IGNORE))
            sock.close()
