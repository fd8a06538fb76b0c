"""Forensic snapshots between freeze and kill, against the real incusd."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import orjson
import pytest

from coi_watch.audit import AuditLog
from coi_watch.incus import IncusClient
from coi_watch.policy import ResponsePolicy
from coi_watch.responders.forensics import PREFIX, SnapshotResponder
from coi_watch.responders.incus import KillResponder, PauseResponder
from coi_watch.verdicts import Action, Severity, Verdict

pytestmark = [pytest.mark.incus, pytest.mark.privileged]


def _snapshots(name: str) -> list[str]:
    out = subprocess.run(["incus", "snapshot", "list", name, "-f", "json"], check=True,
                         capture_output=True, text=True).stdout
    return [s["name"] for s in orjson.loads(out)]


async def test_kill_takes_a_snapshot_of_the_frozen_container_first(tmp_path: Path) -> None:
    name = f"coi-t-snap-{secrets.token_hex(3)}"
    subprocess.run(["incus", "launch", "coi-bb", name], check=True, capture_output=True)
    try:
        client = IncusClient.connect()
        audit = AuditLog(tmp_path, fsync=False)
        policy = ResponsePolicy(
            {Action.PAUSE: PauseResponder(client=client), Action.KILL: KillResponder(client=client),
             Action.SNAPSHOT: SnapshotResponder({"snapshot_retention": 2}, client=client)},
            audit, snapshot_before_kill=True)
        policy.submit(Verdict(ts_ns=1, wall_ns=1, container=name, detector="t", title="t",
                              severity=Severity.CRITICAL, dedup_key="a"))
        await policy.drain()
        assert await client.status(name) == "Stopped"
        snaps = _snapshots(name)
        assert len(snaps) == 1 and snaps[0].startswith(PREFIX)
        await audit.close()
        recs = [orjson.loads(x) for x in (tmp_path / f"{name}.jsonl").read_bytes().splitlines()]
        steps = [(r["data"]["action"], r["data"]["status"]) for r in recs if r["kind"] == "action"]
        assert steps == [("pause", "done"), ("snapshot", "done"), ("kill", "done")]

        # Retention: with a cap of 2, a third snapshot prunes the oldest one of ours only.
        subprocess.run(["incus", "snapshot", "create", name, "keep-me"], check=True)
        snap = SnapshotResponder({"snapshot_retention": 2}, client=client)
        v = Verdict(ts_ns=1, wall_ns=1, container=name, detector="t", title="t",
                    severity=Severity.CRITICAL)
        for _ in range(2):
            rec = await snap.respond(v)
            assert rec.status == "done", rec
        names = _snapshots(name)
        assert "keep-me" in names
        assert len([s for s in names if s.startswith(PREFIX)]) == 2
        await client.close()
    finally:
        subprocess.run(["incus", "delete", "--force", name], capture_output=True)
