"""Replay: an audit log fed back through the detectors gives the verdicts recorded live."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from typer.testing import CliRunner

from coi_watch.audit import AuditLog
from coi_watch.bus import Bus
from coi_watch.events import Event, ProcExec
from coi_watch.replay import replay_file
from coi_watch.runner import Runner
from coi_watch.verdicts import Severity, Verdict


class Burst:
    """A windowed detector: three execs of one program within 1 s -> a verdict. Its result
    depends on ``now_ns``, so replay must reproduce time exactly."""

    name: ClassVar[str] = "burst"
    consumes: ClassVar[frozenset[str]] = frozenset({"proc.exec"})

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], list[int]] = {}

    def feed(self, ev: Event, now_ns: int) -> Iterable[Verdict]:
        assert isinstance(ev, ProcExec)
        key = (ev.container, ev.comm)  # state per container, like every real detector
        times = [t for t in self.seen.get(key, []) if now_ns - t < 1_000_000_000]
        times.append(now_ns)
        self.seen[key] = times
        if len(times) == 3:
            return [Verdict(ts_ns=now_ns, wall_ns=ev.wall_ns, container=ev.container,
                            detector="burst", title=f"burst of {ev.comm}",
                            severity=Severity.WARNING, dedup_key=ev.comm, pid=ev.pid)]
        return []


def _exec(pid: int, ts: int, comm: str, container: str) -> ProcExec:
    return ProcExec(ts_ns=ts, wall_ns=ts, container=container, pid=pid, comm=comm,
                    argv=(comm, "--password=hunter2"))


async def _live(tmp_path: Path, events: list[ProcExec]) -> None:
    audit = AuditLog(tmp_path, fsync=False)
    bus = Bus()
    runner = Runner({"burst": Burst})
    for ev in events:
        bus.publish(ev, "test")
    bus.close()
    await runner.run(bus, audit.event, audit.verdict)
    await audit.close()


def _stream() -> list[ProcExec]:
    # Two containers interleaved; an out-of-order stamp in b; bursts in a and b.
    ms = 1_000_000
    return [_exec(1, 100 * ms, "x", "a"), _exec(2, 150 * ms, "x", "b"),
            _exec(3, 300 * ms, "x", "a"), _exec(4, 90 * ms, "x", "b"),
            _exec(5, 900 * ms, "x", "a"), _exec(6, 2000 * ms, "x", "b"),
            _exec(7, 2100 * ms, "x", "b"), _exec(8, 2500 * ms, "y", "a")]


async def test_replay_reproduces_live_verdicts_per_container(tmp_path: Path) -> None:
    await _live(tmp_path, _stream())
    for container, expected in (("a", 1), ("b", 0)):
        res = replay_file(tmp_path / f"{container}.jsonl", {"burst": Burst})
        assert len(res.recorded) == expected
        assert res.same, (res.missing, res.extra)
        assert res.events == 4
        assert not res.bad_lines


async def test_replay_detects_a_tampered_log(tmp_path: Path) -> None:
    await _live(tmp_path, _stream())
    path = tmp_path / "a.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    # Drop the third event of container a: the live verdict can no longer be reproduced.
    idx = next(i for i, line in enumerate(lines) if b'"pid":5' in line)
    path.write_bytes(b"".join(lines[:idx] + lines[idx + 1:]))
    res = replay_file(path, {"burst": Burst})
    assert not res.same and len(res.missing) == 1


async def test_replay_cli_check(tmp_path: Path) -> None:
    from coi_watch.cli.main import app

    await asyncio.sleep(0)
    audit = AuditLog(tmp_path, fsync=False)
    audit.event(_exec(1, 1, "sh", "a"))
    await audit.close()
    result = CliRunner().invoke(app, ["replay", str(tmp_path / "a.jsonl"), "--check",
                                      "-d", "reverse_shell"])
    assert result.exit_code == 0, result.output
    assert "1 events -> 0 verdicts" in result.output
