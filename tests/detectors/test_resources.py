"""The resource-abuse detector: off by default, live process count, spawn rate (growth per
window), re-arming, bounds and config."""

from __future__ import annotations

import time
from collections.abc import Iterable

import pytest

from coi_watch.detectors import resources as mod
from coi_watch.detectors.resources import ResourceAbuse
from coi_watch.errors import ConfigError
from coi_watch.events import Event, ProcExec, ProcExit, ProcFork
from coi_watch.protocols import Detector
from coi_watch.verdicts import Severity, Verdict

C = "coi-test-1"
MS = 1_000_000


def fork(pid: int, t_ms: float, ppid: int = 2, container: str = C) -> ProcFork:
    ts = int(t_ms * MS)
    return ProcFork(ts_ns=ts, wall_ns=ts, container=container, pid=pid, ppid=ppid)


def exit_(pid: int, t_ms: float, container: str = C) -> ProcExit:
    ts = int(t_ms * MS)
    return ProcExit(ts_ns=ts, wall_ns=ts, container=container, pid=pid)


def exec_(pid: int, t_ms: float) -> ProcExec:
    ts = int(t_ms * MS)
    return ProcExec(ts_ns=ts, wall_ns=ts, container=C, pid=pid, argv=("x",))


def run(det: ResourceAbuse, events: Iterable[Event]) -> list[Verdict]:
    out: list[Verdict] = []
    for ev in events:
        out.extend(det.feed(ev, ev.ts_ns))
    return out


def checks(verdicts: list[Verdict]) -> list[str]:
    return [v.evidence["check"] for v in verdicts]


def bomb(n: int, start_ms: float = 0, step_ms: float = 1) -> list[Event]:
    """A fork bomb: every process forks and none exits."""
    return [fork(1001 + i, start_ms + i * step_ms, ppid=1000 + i // 2) for i in range(n)]


def churn(n: int, start_ms: float = 0, step_ms: float = 1) -> list[Event]:
    """``make -j``: short-lived children, each exits soon after it is forked."""
    out: list[Event] = []
    for i in range(n):
        out.append(fork(5000 + i, start_ms + i * step_ms))
        out.append(exit_(5000 + i, start_ms + i * step_ms + 0.5))
    return out


def test_is_a_detector() -> None:
    det = ResourceAbuse()
    assert isinstance(det, Detector)
    assert det.name == "resources"
    assert det.consumes == frozenset({"proc.fork", "proc.exit", "proc.exec"})


def test_off_by_default_and_keeps_nothing() -> None:
    det = ResourceAbuse()
    assert not det.enabled
    assert run(det, bomb(5000)) == []
    assert det.live_count(C) == 0 and not det._boxes


def test_process_count_over_threshold_is_critical_once() -> None:
    det = ResourceAbuse({"process_count_threshold": 100})
    verdicts = run(det, bomb(500))
    assert checks(verdicts) == ["process_count"]
    [v] = verdicts
    assert v.severity is Severity.CRITICAL
    # The parent of the first fork predates coi-watch: counted, so 101 is reached one fork
    # early (100 children + their first parent).
    assert v.evidence["count"] == 101 and v.evidence["threshold"] == 100
    assert v.dedup_key == f"resources:{C}:process_count"
    assert v.mitre == ("T1496", "T1499")
    assert det.live_count(C) == 501


def test_count_rearms_after_falling_back() -> None:
    det = ResourceAbuse({"process_count_threshold": 10})
    assert checks(run(det, bomb(20))) == ["process_count"]
    run(det, [exit_(1000 + i, 100 + i) for i in range(15)])
    assert det.live_count(C) == 6  # at or under the threshold: re-armed
    assert checks(run(det, [fork(9000 + i, 300 + i, ppid=1020) for i in range(4)])) == []
    assert checks(run(det, [fork(9100, 400, ppid=1020)])) == ["process_count"]


def test_spawn_rate_catches_a_bomb_not_a_build() -> None:
    config = {"process_spawn_rate_threshold": 50}
    assert run(ResourceAbuse(config), churn(3000, step_ms=0.5)) == []  # 2000 forks/s, no growth
    det = ResourceAbuse(config)
    verdicts = run(det, bomb(200, step_ms=5))  # 200 new processes per second
    assert checks(verdicts) == ["spawn_rate"]
    [v] = verdicts
    assert v.severity is Severity.CRITICAL
    assert v.evidence["growth"] == 51 and v.evidence["window_s"] == 2.0
    assert v.evidence["forks"] >= 51 and v.evidence["exits"] == 0
    assert v.dedup_key == f"resources:{C}:spawn_rate"


def test_slow_growth_is_not_a_spawn_rate() -> None:
    # 60 processes over a minute, one a second: never more than 2-3 per 2 s window.
    det = ResourceAbuse({"process_spawn_rate_threshold": 5})
    assert run(det, bomb(60, step_ms=1000)) == []


def test_growth_straddling_slice_borders_is_caught() -> None:
    det = ResourceAbuse({"process_spawn_rate_threshold": 10, "window_s": 1.0})
    # 11 forks across the border between two slices of 125 ms, within 1 s.
    events = [fork(100 + i, 120 + i) for i in range(6)] + [fork(200 + i, 130 + i)
                                                           for i in range(5)]
    assert checks(run(det, events)) == ["spawn_rate"]


def test_spawn_rate_rearms_when_growth_leaves_the_window() -> None:
    det = ResourceAbuse({"process_spawn_rate_threshold": 10})
    assert checks(run(det, bomb(30, step_ms=10))) == ["spawn_rate"]
    assert checks(run(det, bomb(5, start_ms=1000))) == []  # same episode
    late = [fork(7000 + i, 10_000 + i) for i in range(11)]
    assert checks(run(det, late)) == ["spawn_rate"]


def test_processes_seen_first_at_exec_are_baseline_not_growth() -> None:
    det = ResourceAbuse({"process_spawn_rate_threshold": 5, "process_count_threshold": 50})
    assert run(det, [exec_(300 + i, 1 + i) for i in range(40)]) == []
    assert det.live_count(C) == 40
    assert checks(run(det, [exec_(400 + i, 100 + i) for i in range(11)])) == ["process_count"]


def test_never_negative_and_repeats_ignored() -> None:
    det = ResourceAbuse({"process_count_threshold": 5})
    run(det, [exit_(i, 1) for i in range(100)])
    assert det.live_count(C) == 0
    run(det, [fork(7, 2, ppid=0), fork(7, 3, ppid=0)])
    assert det.live_count(C) == 1


def test_containers_are_separate_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    det = ResourceAbuse({"process_count_threshold": 10})
    events = [fork(100 + i, i, ppid=0, container=f"c{i % 2}") for i in range(20)]
    assert run(det, events) == []
    assert det.live_count("c0") == 10 and det.live_count("c1") == 10
    monkeypatch.setattr(mod, "MAX_CONTAINERS", 4)
    det = ResourceAbuse({"process_count_threshold": 10})
    run(det, [fork(1, 1, ppid=0, container=f"c{i}") for i in range(50)])
    assert len(det._boxes) == 4


def test_max_tracked_counts_without_storing() -> None:
    det = ResourceAbuse({"process_count_threshold": 1000, "max_tracked": 100})
    verdicts = run(det, [fork(10 + i, i * 0.01, ppid=0) for i in range(2000)])
    assert checks(verdicts) == ["process_count"]
    box = det._boxes[C]
    assert len(box.pids) == 100 and det.live_count(C) == 2000
    run(det, [exit_(10 + i, 100) for i in range(3000)])
    assert det.live_count(C) == 0


@pytest.mark.parametrize(("config", "key"), [
    ({"process_count": 5}, "process_count"),
    ({"process_count_threshold": -1}, "process_count_threshold"),
    ({"process_count_threshold": 1.5}, "process_count_threshold"),
    ({"process_count_threshold": True}, "process_count_threshold"),
    ({"process_spawn_rate_threshold": "10"}, "process_spawn_rate_threshold"),
    ({"window_s": 0}, "window_s"),
    ({"window_s": float("inf")}, "window_s"),
    ({"severity": "off"}, "severity"),
    ({"max_tracked": 0}, "max_tracked"),
])
def test_config_errors_name_the_key(config: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        ResourceAbuse(config)


def test_severity_and_mode() -> None:
    det = ResourceAbuse({"process_count_threshold": 3, "severity": "high", "mode": "monitor"})
    [v] = run(det, bomb(10))
    assert v.severity is Severity.HIGH


def test_a_burst_of_a_million_events_is_linear() -> None:
    det = ResourceAbuse({"process_count_threshold": 100_000,
                         "process_spawn_rate_threshold": 1000})
    events = churn(100_000, step_ms=0.01)
    start = time.process_time()
    run(det, events)
    assert time.process_time() - start < 5.0
    assert det.live_count(C) == 1  # the parent, counted once
