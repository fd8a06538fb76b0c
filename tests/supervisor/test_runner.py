"""The runner: indexed dispatch, injected time, isolation and restart of failing detectors."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from coi_watch.bus import Bus
from coi_watch.events import Event, ProcExec, ProcFork
from coi_watch.runner import Runner
from coi_watch.verdicts import Severity, Verdict


def _exec(pid: int, ts: int, container: str = "c1") -> ProcExec:
    return ProcExec(ts_ns=ts, wall_ns=ts, container=container, pid=pid, argv=("x",))


class Recorder:
    name: ClassVar[str] = "recorder"
    consumes: ClassVar[frozenset[str]] = frozenset({"proc.exec"})

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def feed(self, ev: Event, now_ns: int) -> Iterable[Verdict]:
        self.seen.append((ev.pid, now_ns))  # type: ignore[union-attr]
        return ()


class Boom:
    """Raises on pid 13, counts what it saw since its last (re)start."""

    name: ClassVar[str] = "boom"
    consumes: ClassVar[frozenset[str]] = frozenset({"proc.exec"})
    instances: ClassVar[list[Boom]] = []

    def __init__(self) -> None:
        self.count = 0
        Boom.instances.append(self)

    def feed(self, ev: Event, now_ns: int) -> Iterable[Verdict]:
        self.count += 1
        if ev.pid == 13:  # type: ignore[union-attr]
            raise RuntimeError("unlucky")
        return [Verdict(ts_ns=now_ns, wall_ns=0, container=ev.container, detector="boom",
                        title="t", severity=Severity.INFO)]


def test_dispatch_only_to_consumers_and_time_never_goes_back() -> None:
    rec: dict[str, Any] = {}

    def factory() -> Recorder:
        rec["d"] = Recorder()
        return rec["d"]

    runner = Runner({"recorder": factory})
    runner.feed(_exec(1, 100))
    runner.feed(ProcFork(ts_ns=150, wall_ns=0, container="c1", pid=2, ppid=1))  # not consumed
    runner.feed(_exec(3, 90))  # an older stamp from another source: time holds at 150
    runner.feed(_exec(4, 200))
    assert rec["d"].seen == [(1, 100), (3, 150), (4, 200)]
    assert runner.stats.events == 4


def test_failing_detector_is_isolated_reported_and_restarted() -> None:
    Boom.instances.clear()
    errors: list[tuple[str, str, int]] = []
    recorder = Recorder()
    runner = Runner({"boom": Boom, "recorder": lambda: recorder},
                    on_error=lambda n, e, ev: errors.append((n, str(e), ev.pid)))  # type: ignore[union-attr]
    verdicts = [v for pid in (1, 13, 2) for v in runner.feed(_exec(pid, pid))]
    assert [e for e in errors] == [("boom", "unlucky", 13)]
    assert len(Boom.instances) == 2  # restarted with fresh state
    assert Boom.instances[1].count == 1
    assert len(verdicts) == 2  # pid 1 and pid 2
    assert [p for p, _ in recorder.seen] == [1, 13, 2]  # the other detector saw everything
    assert runner.stats.restarts == {"boom": 1}


def test_detector_without_kinds_gets_everything_and_is_warned() -> None:
    class All:
        name: ClassVar[str] = "all"
        consumes: ClassVar[frozenset[str]] = frozenset()

        def __init__(self) -> None:
            self.kinds: list[str] = []

        def feed(self, ev: Event, now_ns: int) -> Iterable[Verdict]:
            self.kinds.append(ev.kind)
            return ()

    det = All()
    warnings: list[str] = []
    runner = Runner({"all": lambda: det}, warn=warnings.append)
    runner.feed(_exec(1, 1))
    runner.feed(ProcFork(ts_ns=2, wall_ns=0, container="c", pid=2, ppid=1))
    assert det.kinds == ["proc.exec", "proc.fork"]
    assert warnings and "NO_EVENT_KIND" in warnings[0]


async def test_run_feeds_audit_hook_before_verdicts_and_drains_on_close() -> None:
    Boom.instances.clear()
    bus = Bus()
    runner = Runner({"boom": Boom})
    order: list[str] = []
    for pid in (1, 2, 3):
        bus.publish(_exec(pid, pid), "proc")
    bus.close()
    await runner.run(bus, lambda ev: order.append(f"event:{ev.pid}"),  # type: ignore[union-attr]
                     lambda v: order.append(f"verdict:{v.ts_ns}"))
    assert order == ["event:1", "verdict:1", "event:2", "verdict:2", "event:3", "verdict:3"]


def test_time_is_kept_per_container() -> None:
    rec = Recorder()
    runner = Runner({"recorder": lambda: rec})
    runner.feed(_exec(1, 500, container="a"))
    runner.feed(_exec(2, 100, container="b"))  # another container's clock is its own
    runner.feed(_exec(3, 400, container="a"))
    assert rec.seen == [(1, 500), (2, 100), (3, 500)]
    runner.forget("a")
    runner.feed(_exec(4, 400, container="a"))
    assert rec.seen[-1] == (4, 400)


def test_an_inactive_detector_is_not_fed() -> None:
    class Off(Recorder):
        active = False

    off = Off()
    runner = Runner({"off": lambda: off})
    runner.feed(_exec(1, 1))
    assert off.seen == []
    assert runner.detectors == ("off",)
