"""The response policy: ladder, overrides, monitor mode, dedup with re-arm, containment
first, durable audit before reporting."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

import orjson
import pytest

from coi_watch.audit import AuditLog
from coi_watch.policy import ResponsePolicy
from coi_watch.verdicts import Action, ActionRecord, Severity, Verdict


class FakeResponder:
    """Records calls; fails when told to."""

    name: ClassVar[str] = "fake"

    def __init__(self, action: Action, log: list[str], *, fail: bool = False,
                 delay: float = 0.0) -> None:
        self.action = action  # type: ignore[misc]
        self.log = log
        self.fail = fail
        self.delay = delay

    async def respond(self, verdict: Verdict) -> ActionRecord:
        await asyncio.sleep(self.delay)
        self.log.append(f"{self.action.value}:{verdict.container}")
        return ActionRecord(ts_ns=1, wall_ns=1, container=verdict.container, action=self.action,
                            status="failed" if self.fail else "done",
                            error="boom" if self.fail else "")


def _verdict(sev: Severity, *, container: str = "c1", key: str = "k", action: str = "",
             mode: str = "enforce", detector: str = "det") -> Verdict:
    return Verdict(ts_ns=1, wall_ns=1, container=container, detector=detector, title="t",
                   severity=sev, dedup_key=key, action=action, mode=mode)


def _policy(tmp_path: Path, log: list[str], reported: list[object], **kw: object
            ) -> tuple[ResponsePolicy, AuditLog]:
    audit = AuditLog(tmp_path, fsync=False)
    responders = {a: FakeResponder(a, log) for a in (Action.ALERT, Action.PAUSE, Action.KILL,
                                                    Action.QUARANTINE)}
    responders.update(kw.pop("responders", {}))  # type: ignore[call-overload]
    clock = kw.pop("clock", None)
    policy = ResponsePolicy(responders, audit, report=reported.append,  # type: ignore[arg-type]
                            **({"clock": clock} if clock else {}), **kw)  # type: ignore[arg-type]
    return policy, audit


def _actions(tmp_path: Path, container: str = "c1") -> list[tuple[str, str]]:
    lines = (tmp_path / f"{container}.jsonl").read_bytes().splitlines()
    recs = [orjson.loads(x) for x in lines]
    return [(r["data"]["action"], r["data"]["status"]) for r in recs if r["kind"] == "action"]


@pytest.mark.parametrize("sev, expected", [
    (Severity.INFO, []), (Severity.WARNING, ["alert:c1"]),
    (Severity.HIGH, ["pause:c1"]), (Severity.CRITICAL, ["pause:c1", "kill:c1"]),
])
async def test_default_ladder_and_containment_first(tmp_path: Path, sev: Severity,
                                                    expected: list[str]) -> None:
    log: list[str] = []
    policy, audit = _policy(tmp_path, log, [])
    policy.submit(_verdict(sev))
    await policy.drain()
    assert log == expected
    await audit.close()
    acts = _actions(tmp_path)
    assert acts == ([("log", "done")] if sev is Severity.INFO
                    else [(x.split(":")[0], "done") for x in expected])


async def test_verdict_override_and_configured_ladder(tmp_path: Path) -> None:
    log: list[str] = []
    policy, audit = _policy(tmp_path, log, [],
                            ladder={Severity.HIGH: Action.QUARANTINE,
                                    Severity.CRITICAL: Action.PAUSE})
    policy.submit(_verdict(Severity.HIGH, key="a"))
    policy.submit(_verdict(Severity.CRITICAL, key="b"))
    policy.submit(_verdict(Severity.WARNING, key="c", action="kill"))
    await policy.drain()
    assert log == ["quarantine:c1", "pause:c1", "pause:c1", "kill:c1"]
    await audit.close()


async def test_monitor_mode_never_acts_but_alerts_and_audits(tmp_path: Path) -> None:
    log: list[str] = []
    policy, audit = _policy(tmp_path, log, [], detector_modes={"quiet": "monitor"})
    policy.submit(_verdict(Severity.CRITICAL, detector="quiet"))
    policy.submit(_verdict(Severity.CRITICAL, key="x", mode="monitor"))
    await policy.drain()
    assert log == ["alert:c1", "alert:c1"]
    await audit.close()
    assert _actions(tmp_path) == [("kill", "skipped"), ("kill", "skipped")]

    log2: list[str] = []
    policy2, audit2 = _policy(tmp_path / "g", log2, [], monitor_only=True)
    policy2.submit(_verdict(Severity.HIGH))
    await policy2.drain()
    assert log2 == ["alert:c1"]
    await audit2.close()


async def test_burst_gives_one_response_and_counted_duplicates(tmp_path: Path) -> None:
    log: list[str] = []
    policy, audit = _policy(tmp_path, log, [])
    for _ in range(50):
        policy.submit(_verdict(Severity.HIGH))
    await policy.drain()
    assert log == ["pause:c1"]
    assert policy.stats.duplicates == 49
    assert policy.stats.verdicts == 50
    await audit.close()


async def test_dedup_window_expires(tmp_path: Path) -> None:
    now = [0]
    log: list[str] = []
    policy, audit = _policy(tmp_path, log, [], clock=lambda: now[0], dedup_window_s=30)
    policy.submit(_verdict(Severity.WARNING))
    now[0] = int(29e9)
    policy.submit(_verdict(Severity.WARNING))
    now[0] = int(31e9)
    policy.submit(_verdict(Severity.WARNING))
    await policy.drain()
    assert log == ["alert:c1", "alert:c1"]
    await audit.close()


async def test_pause_is_rearmed_when_incus_says_running_again(tmp_path: Path) -> None:
    state = {"c1": "Frozen"}

    async def status_of(name: str) -> str:
        return state[name]

    log: list[str] = []
    policy, audit = _policy(tmp_path, log, [], status_of=status_of)
    policy.submit(_verdict(Severity.HIGH))
    await policy.drain()
    policy.submit(_verdict(Severity.HIGH))  # still frozen: a duplicate
    await policy.drain()
    assert log == ["pause:c1"]
    state["c1"] = "Running"  # somebody resumed it; the threat comes back
    policy.submit(_verdict(Severity.HIGH))
    await policy.drain()
    assert log == ["pause:c1", "pause:c1"]
    await audit.close()


async def test_failed_freeze_does_not_stop_the_kill_and_is_audited(tmp_path: Path) -> None:
    log: list[str] = []
    policy, audit = _policy(tmp_path, log, [], responders={
        Action.PAUSE: FakeResponder(Action.PAUSE, log, fail=True)})
    policy.submit(_verdict(Severity.CRITICAL))
    await policy.drain()
    assert log == ["pause:c1", "kill:c1"]
    await audit.close()
    assert _actions(tmp_path) == [("pause", "failed"), ("kill", "done")]
    assert policy.stats.failures == 1


async def test_killed_container_is_not_acted_on_again(tmp_path: Path) -> None:
    log: list[str] = []
    policy, audit = _policy(tmp_path, log, [])
    policy.submit(_verdict(Severity.CRITICAL, key="a"))
    policy.submit(_verdict(Severity.HIGH, key="b"))
    policy.submit(_verdict(Severity.HIGH, key="c", container="c2"))
    await policy.drain()
    assert log.count("kill:c1") == 1 and "pause:c2" in log
    assert log.count("pause:c1") == 1
    await audit.close()


async def test_verdict_is_audited_before_its_actions_and_reported(tmp_path: Path) -> None:
    log: list[str] = []
    reported: list[object] = []
    policy, audit = _policy(tmp_path, log, reported)
    policy.submit(_verdict(Severity.HIGH))
    await policy.drain()
    await audit.close()
    kinds = [orjson.loads(x)["kind"] for x in (tmp_path / "c1.jsonl").read_bytes().splitlines()]
    assert kinds == ["verdict", "action"]
    assert [type(r).__name__ for r in reported] == ["Verdict", "ActionRecord"]


async def test_escalation_within_the_window_is_not_a_duplicate(tmp_path: Path) -> None:
    log: list[str] = []
    policy, audit = _policy(tmp_path, log, [])
    policy.submit(_verdict(Severity.WARNING))  # same dedup key throughout
    policy.submit(_verdict(Severity.WARNING))
    policy.submit(_verdict(Severity.HIGH))     # stronger: acted on at once
    policy.submit(_verdict(Severity.HIGH))     # a duplicate of that
    policy.submit(_verdict(Severity.WARNING))  # weaker: a duplicate too
    await policy.drain()
    assert log == ["alert:c1", "pause:c1"]
    assert policy.stats.duplicates == 3
    await audit.close()
