"""Tests for coi_watch.sources.proc: the tracker on crafted records, the source on the kernel."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coi_watch.errors import SourceError
from coi_watch.events import ProcComm, ProcExec, ProcExit, ProcFork, ProcUid
from coi_watch.protocols import Source, SourceContext
from coi_watch.sources.attribution import MISSING, Attribution, ProcessTable
from coi_watch.sources.proc import ProcSource, ProcTracker
from coi_watch.wire.proc_connector import ProcRecord

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "wire" / "proc_connector"


@dataclass
class FakeCtx:
    """Records what a source hands to its context."""

    watch: set[str] = field(default_factory=lambda: {"c"})
    events: list[Any] = field(default_factory=list)  # Events; Any keeps tests terse
    systems: list[tuple[str, str, Mapping[str, Any]]] = field(default_factory=list)
    drops: list[tuple[str, str, str, int]] = field(default_factory=list)

    def context(self) -> SourceContext:
        return SourceContext(
            publish=self.events.append,
            watched=lambda name: name in self.watch,
            system=lambda c, k, d: self.systems.append((c, k, d)),
            count_drop=lambda c, s, k, n: self.drops.append((c, s, k, n)),
        )

    def of(self, cls: type[Any], pid: int | None = None) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls) and pid in (None, e.pid)]


def rec(what: str, **kw: Any) -> ProcRecord:
    kw.setdefault("cpu", 0)
    kw.setdefault("ts_ns", 1_000)
    return ProcRecord(what=what, code=kw.pop("code", 0), **kw)


def fake_enrich(pid: int, *, container: str, ts_ns: int, attribute: Any) -> ProcExec:
    return ProcExec(ts_ns=ts_ns, wall_ns=0, container=container, pid=pid, argv=("x",))


def tracker_for(live: dict[int, Attribution], ctx: FakeCtx, **kw: Any) -> ProcTracker:
    table = ProcessTable(attribute=lambda pid: live.get(pid, MISSING))
    return ProcTracker(ctx.context(), table, enrich=fake_enrich, **kw)


# --------------------------------------------------------------------------- the tracker


def test_process_lifecycle_in_a_watched_container() -> None:
    ctx = FakeCtx()
    live: dict[int, Attribution] = {10: "c", 11: "c"}
    t = tracker_for(live, ctx)
    t.handle(rec("fork", seq=1, pid=11, tgid=11, parent_pid=10, parent_tgid=10, ts_ns=5))
    t.handle(rec("fork", seq=2, pid=12, tgid=11, parent_pid=9, parent_tgid=9))  # a thread
    t.handle(rec("exec", seq=3, pid=11, tgid=11, ts_ns=6))
    t.handle(rec("comm", seq=4, pid=11, tgid=11, comm="nc"))
    t.handle(rec("comm", seq=5, pid=12, tgid=11, comm="worker"))  # thread name: skipped
    t.handle(rec("uid", seq=6, pid=11, tgid=11, ruid=1000000, euid=0))
    t.handle(rec("exit", seq=7, pid=12, tgid=11))  # thread exit: skipped
    t.handle(rec("exit", seq=8, pid=11, tgid=11, exit_code=3 << 8, exit_signal=17, ts_ns=9))
    kinds = [type(e) for e in ctx.events]
    assert kinds == [ProcFork, ProcExec, ProcComm, ProcUid, ProcExit]
    fork, exe, comm, uid, exit_ = ctx.events
    assert (fork.pid, fork.ppid, fork.container, fork.ts_ns) == (11, 10, "c", 5)
    assert exe.pid == 11 and exe.ts_ns == 6
    assert isinstance(comm, ProcComm) and comm.comm == "nc"
    assert isinstance(uid, ProcUid) and (uid.ruid, uid.euid) == (1000000, 0)
    assert isinstance(exit_, ProcExit) and (exit_.code, exit_.signal) == (3, 0)
    assert t.stats["threads"] == 3 and t.stats["published"] == 5
    assert 11 not in t.table and ctx.drops == []


def test_unwatched_and_host_processes_are_not_published_or_enriched() -> None:
    ctx = FakeCtx()
    calls: list[int] = []

    def enrich(pid: int, **kw: Any) -> ProcExec:
        calls.append(pid)
        return fake_enrich(pid, **kw)

    hosts: dict[int, Attribution] = {1: None, 2: "other", 3: None}
    table = ProcessTable(attribute=lambda pid: hosts.get(pid, MISSING))
    t = ProcTracker(ctx.context(), table, enrich=enrich)
    t.handle(rec("fork", pid=3, tgid=3, parent_pid=1, parent_tgid=1))
    t.handle(rec("exec", pid=3, tgid=3))
    t.handle(rec("exec", pid=2, tgid=2))
    t.handle(rec("exit", pid=3, tgid=3))
    assert ctx.events == [] and calls == []


def test_exec_reads_the_cgroup_afresh() -> None:
    # incus exec: forked by a host process, moved into the container before exec.
    ctx = FakeCtx()
    live: dict[int, Attribution] = {50: None}
    t = tracker_for(live, ctx)
    t.handle(rec("fork", pid=51, tgid=51, parent_pid=50, parent_tgid=50))
    assert ctx.events == []
    live[51] = "c"
    t.handle(rec("exec", pid=51, tgid=51))
    assert [type(e) for e in ctx.events] == [ProcExec]
    # Its children inherit the container even once /proc has lost them.
    t.handle(rec("fork", pid=52, tgid=52, parent_pid=51, parent_tgid=51))
    t.handle(rec("exec", pid=52, tgid=52))
    assert [(type(e), e.pid) for e in ctx.events[1:]] == [(ProcFork, 52), (ProcExec, 52)]


def test_exec_of_an_unknown_vanished_pid_is_counted() -> None:
    ctx = FakeCtx()
    t = tracker_for({}, ctx)
    t.handle(rec("exec", pid=77, tgid=77))
    assert ctx.events == [] and t.stats["unattributed"] == 1


def test_exit_status_decoding_and_signal() -> None:
    ctx = FakeCtx()
    t = tracker_for({5: "c"}, ctx)
    t.handle(rec("exit", pid=5, tgid=5, exit_code=9, exit_signal=17))
    (ev,) = ctx.of(ProcExit)
    assert (ev.code, ev.signal) == (0, 9)


def test_uid_changes_of_threads_are_deduplicated() -> None:
    ctx = FakeCtx()
    t = tracker_for({7: "c"}, ctx)
    t.handle(rec("uid", pid=7, tgid=7, ruid=5, euid=5))
    t.handle(rec("uid", pid=8, tgid=7, ruid=5, euid=5))  # glibc: same change, other thread
    t.handle(rec("uid", pid=9, tgid=7, ruid=0, euid=0))  # a thread alone: visible
    assert [(e.pid, e.ruid) for e in ctx.of(ProcUid)] == [(7, 5), (7, 0)]


def test_comm_event_carries_argv_read_afresh() -> None:
    ctx = FakeCtx()
    code = "import sys, time; print('up', flush=True); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code, "arg1"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"  # exec'd
        t = tracker_for({proc.pid: "c"}, ctx)
        t.handle(rec("comm", pid=proc.pid, tgid=proc.pid, comm="renamed"))
        (ev,) = ctx.of(ProcComm)
        assert ev.comm == "renamed"
        assert ev.argv == (sys.executable, "-c", code, "arg1")
    finally:
        proc.kill()
        proc.wait()


def test_unknown_kinds_are_counted_and_reported_once_per_code() -> None:
    ctx = FakeCtx()
    t = tracker_for({}, ctx)
    for code in (0x400, 0x400, 0x800):
        t.handle(rec("unknown", code=code))
    assert t.stats["unknown"] == 3
    assert [(k, d["what"]) for _, k, d in ctx.systems] == [
        ("unknown_proc_event", 0x400), ("unknown_proc_event", 0x800)]


def test_wire_errors_are_dropped_reported_and_reading_goes_on() -> None:
    ctx = FakeCtx()
    now = [0]
    t = tracker_for({}, ctx, clock=lambda: now[0])
    t.feed(b"\x01\x02\x03")
    t.feed(b"\xff" * 40)
    now[0] = 2_000_000_000
    t.feed(b"\x00" * 7)
    assert t.stats["wire_errors"] == 3
    assert ctx.drops == [("", "proc", "wire_error", 1)] * 3
    # Rate limited: the second error inside the same second is folded into the next record.
    assert [(k, d["suppressed"]) for _, k, d in ctx.systems] == [
        ("wire_error", 0), ("wire_error", 1)]
    assert ctx.systems[0][2]["head"] == "010203"
    good = bytes.fromhex((FIXTURES / "exec.hex").read_text().strip())
    t.feed(good)
    assert t.stats["records"] == 1


def test_seq_gaps_count_lost_events_per_cpu() -> None:
    ctx = FakeCtx()
    t = tracker_for({}, ctx)
    for cpu, seq in [(0, 10), (1, 500), (0, 11), (0, 14), (1, 501), (1, 505), (0, 15)]:
        t.handle(rec("sid", cpu=cpu, seq=seq))
    assert t.stats["seq_lost"] == 2 + 3
    assert [d for d in ctx.drops] == [("", "proc", "seq_gap", 2), ("", "proc", "seq_gap", 3)]
    # Wrap-around is not a loss; a jump backwards (counter reset) is not either.
    t.handle(rec("sid", cpu=2, seq=0xFFFFFFFF))
    t.handle(rec("sid", cpu=2, seq=0))
    t.handle(rec("sid", cpu=2, seq=5))
    t.handle(rec("sid", cpu=2, seq=1))
    assert t.stats["seq_lost"] == 5 + 4


def test_enobufs_is_a_drop_and_a_system_record() -> None:
    ctx = FakeCtx()
    t = tracker_for({}, ctx)
    t.lost_enobufs()
    assert ctx.drops == [("", "proc", "enobufs", 1)]
    assert ctx.systems[0][1] == "enobufs" and "dropped" in ctx.systems[0][2]["detail"]


def test_golden_stream_through_the_tracker() -> None:
    frames = [bytes.fromhex(x) for x in (FIXTURES / "stream.hexl").read_text().split()]
    ctx = FakeCtx()
    t = ProcTracker(ctx.context(), ProcessTable(attribute=lambda pid: "c"), enrich=fake_enrich)
    for f in frames:
        t.feed(f)
    assert t.stats["records"] == len(frames) and t.stats["wire_errors"] == 0
    assert ctx.of(ProcExec) and ctx.of(ProcFork) and ctx.of(ProcExit)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=120), max_size=5))
def test_tracker_survives_any_datagram(bufs: list[bytes]) -> None:
    ctx = FakeCtx()
    t = ProcTracker(ctx.context(), ProcessTable(attribute=lambda pid: MISSING),
                    enrich=fake_enrich)
    good = bytes.fromhex((FIXTURES / "fork.hex").read_text().strip())
    for buf in bufs:
        t.feed(buf)
        t.feed(good[: len(buf) % (len(good) + 1)] + buf)
    assert t.stats["datagrams"] == 2 * len(bufs)
    assert t.stats["wire_errors"] == sum(1 for d in ctx.drops if d[2] == "wire_error")


async def test_socket_failures_become_source_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_socket(*args: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr("coi_watch.sources.proc.socket.socket", no_socket)
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(SourceError, match="CONFIG_PROC_EVENTS"):
        await ProcSource().run(FakeCtx().context(), ready)
    assert not ready.done()


def test_source_satisfies_the_protocol() -> None:
    src = ProcSource({"rcvbuf": 1 << 20, "table_cap": 10})
    assert isinstance(src, Source) and src.name == "proc"
    assert src.rcvbuf == 1 << 20 and src.table.cap == 10


# --------------------------------------------------------------------------- the real kernel


def descendants_of(root: int) -> Callable[[int], Attribution]:
    """Attribution for host tests: pids under ``root`` are container "c", the rest host."""

    def attribute(pid: int) -> Attribution:
        for _ in range(64):
            if pid == root:
                return "c"
            if pid <= 1:
                return None
            try:
                stat = Path(f"/proc/{pid}/stat").read_bytes()
            except OSError:
                return MISSING
            pid = int(stat[stat.rfind(b")") + 2 :].split()[1])
        return None

    return attribute


@contextlib.asynccontextmanager
async def running(src: ProcSource, ctx: FakeCtx) -> AsyncIterator[asyncio.Task[None]]:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    task = asyncio.create_task(src.run(ctx.context(), ready))
    await asyncio.wait_for(asyncio.shield(ready), 5)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out waiting for events"
        await asyncio.sleep(0.01)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.privileged
async def test_real_source_sees_a_shell_and_its_children() -> None:
    ctx = FakeCtx()
    src = ProcSource(table=ProcessTable(attribute=descendants_of(os.getpid())))
    fds = open_fds()
    async with running(src, ctx):
        before_ns = time.monotonic_ns()
        # The child sleeps, so its /proc entry is surely there when we enrich (the race with
        # short-lived processes is the next test's subject).
        proc = subprocess.Popen(["/bin/sh", "-c", "/bin/sleep 0.1 > /dev/null; exit 3"])
        await wait_for(lambda: bool(ctx.of(ProcExit, proc.pid)))
        proc.wait()
    assert open_fds() <= fds  # the socket was closed on cancellation

    (fork,) = ctx.of(ProcFork, proc.pid)
    assert fork.ppid == os.getpid() and fork.container == "c"
    execs = ctx.of(ProcExec, proc.pid)
    assert execs and execs[0].argv[-1] == "/bin/sleep 0.1 > /dev/null; exit 3"
    assert execs[0].exe == os.path.realpath("/bin/sh") or execs[0].partial
    (ex,) = ctx.of(ProcExit, proc.pid)
    assert (ex.code, ex.signal) == (3, 0)
    assert before_ns <= fork.ts_ns <= execs[0].ts_ns <= ex.ts_ns <= time.monotonic_ns()
    assert abs(ex.wall_ns - time.time_ns()) < 10_000_000_000
    (child,) = [f for f in ctx.of(ProcFork) if f.ppid == proc.pid]
    (sleep,) = ctx.of(ProcExec, child.pid)
    assert sleep.argv == ("/bin/sleep", "0.1") and not sleep.partial
    assert sleep.stdio[1].target == "/dev/null"
    assert [a.pid for a in sleep.ancestry[:2]] == [proc.pid, os.getpid()]
    assert src.tracker is not None and src.tracker.stats["seq_lost"] == 0


@pytest.mark.privileged
async def test_real_short_lived_processes_are_all_attributed() -> None:
    ctx = FakeCtx()
    src = ProcSource(table=ProcessTable(attribute=descendants_of(os.getpid())))
    async with running(src, ctx):
        proc = subprocess.Popen(["/bin/sh", "-c", "i=0; while [ $i -lt 100 ]; do /bin/true;"
                                 " i=$((i+1)); done"])
        await wait_for(lambda: bool(ctx.of(ProcExit, proc.pid)))
        proc.wait()
    children = [f.pid for f in ctx.of(ProcFork) if f.ppid == proc.pid]
    execs = {e.pid: e for e in ctx.of(ProcExec)}
    assert len(children) == 100
    # Each exec is published and attributed, whether or not /proc still had the process.
    trues = [execs.get(pid) for pid in children]
    assert all(e is not None and e.container == "c" for e in trues), (
        [pid for pid in children if pid not in execs], src.tracker and src.tracker.stats)
    assert set(children) <= {e.pid for e in ctx.of(ProcExit)}
    complete = [e for e in trues if e is not None and not e.partial]
    assert all(e.argv == ("/bin/true",) and e.ppid == proc.pid for e in complete)


@pytest.mark.privileged
async def test_a_bug_in_handling_stops_the_source_loudly() -> None:
    def broken(pid: int, **kw: Any) -> ProcExec:
        raise RuntimeError("enrichment bug")

    ctx = FakeCtx()
    src = ProcSource(table=ProcessTable(attribute=descendants_of(os.getpid())), enrich=broken)
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    task = asyncio.create_task(src.run(ctx.context(), ready))
    await asyncio.wait_for(asyncio.shield(ready), 5)
    proc = await asyncio.create_subprocess_exec("/bin/true")
    await proc.wait()
    with pytest.raises(RuntimeError, match="enrichment bug"):
        await asyncio.wait_for(task, 5)


@pytest.mark.privileged
async def test_real_overflow_is_reported_as_lost_events() -> None:
    ctx = FakeCtx(watch=set())
    src = ProcSource({"rcvbuf": 4096})
    async with running(src, ctx):
        # Block the loop while the kernel produces ~400 events: the tiny buffer overflows.
        subprocess.run(["/bin/sh", "-c", "i=0; while [ $i -lt 100 ]; do /bin/true;"
                        " i=$((i+1)); done"], check=True)
        assert src.tracker is not None
        stats = src.tracker.stats
        # A gap shows when the next event of that CPU arrives: make a few more, loop running.
        for _ in range(20):
            true = await asyncio.create_subprocess_exec("/bin/true")
            await true.wait()
            await asyncio.sleep(0.01)
            if stats["seq_lost"]:
                break
    assert stats["enobufs"] >= 1 and stats["seq_lost"] > 0
    kinds = {k for _, _, k, _ in ctx.drops}
    assert {"enobufs", "seq_gap"} <= kinds
    assert sum(n for _, _, k, n in ctx.drops if k == "seq_gap") == stats["seq_lost"]
    assert any(k == "enobufs" for _, k, _ in ctx.systems)


OUTSIDE_SCRIPT = """
import asyncio
from coi_watch.errors import SourceError
from coi_watch.protocols import SourceContext
from coi_watch.sources.proc import ProcSource
ctx = SourceContext(publish=print, watched=bool, system=print, count_drop=print)
async def main():
    try:
        await ProcSource().run(ctx, asyncio.get_running_loop().create_future())
    except SourceError as exc:
        print("SourceError:", exc)
asyncio.run(main())
"""


@pytest.mark.privileged
async def test_outside_the_initial_user_namespace_the_error_is_clear() -> None:
    # The kernel ignores LISTEN from another user or pid namespace without answering
    # (cn_proc_mcast_ctl); since 6.6 it no longer requires CAP_NET_ADMIN, so this, not a
    # missing capability, is how a subscription fails on this kernel.
    proc = await asyncio.create_subprocess_exec(
        "unshare", "--user", "--map-root-user", "--", sys.executable, "-c", OUTSIDE_SCRIPT,
        stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 15)
    text = out.decode()
    assert text.startswith("SourceError:"), text
    assert "did not acknowledge PROC_CN_MCAST_LISTEN" in text
