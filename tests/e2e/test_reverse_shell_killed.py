"""End to end, for real: a reverse shell in a real container is detected and the container
killed (frozen first), with the event, verdict and action records in an intact audit chain."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.incus, pytest.mark.privileged]

# busybox nc -e replaces itself with the shell, whose stdin/stdout are then the connected
# socket: the structural signal. The listener runs on the container's own loopback.
REVERSE_SHELL = ("ip link set lo up; (nc -l -p 4444 >/dev/null 2>&1 &); sleep 0.3; "
                 "nc 127.0.0.1 4444 -e /bin/sh; sleep 30")


def test_reverse_shell_is_killed_within_two_seconds(e2e: Any, tmp_path: Path) -> None:
    with e2e.container() as name:
        watcher = e2e.Watcher(name, "--no-follow", audit_dir=tmp_path)
        try:
            watcher.wait_ready()
            t0 = time.monotonic()
            shell = subprocess.Popen(["incus", "exec", name, "--", "sh", "-c", REVERSE_SHELL],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            stopped = e2e.wait_for(lambda: e2e.status(name) == "Stopped", timeout=10)
            elapsed = time.monotonic() - t0
            shell.wait(timeout=30)
        finally:
            rc, _out, err = watcher.stop()
        assert stopped, f"container not stopped; coi-watch said: {watcher.lines} {err}"
        assert rc == 0, err
        # The shell itself needs ~0.3 s to start and connect; the rest is ours.
        assert elapsed < 2.5, f"killed only after {elapsed:.2f}s"

        records = e2e.audit_records(tmp_path / f"{name}.jsonl")
        kinds = [r["kind"] for r in records]
        verdicts = [r for r in records if r["kind"] == "verdict"]
        actions = [r["data"] for r in records if r["kind"] == "action"]
        assert verdicts, kinds
        v = verdicts[0]["data"]
        assert v["detector"] == "reverse_shell" and v["severity"] == "critical"
        # The exec event that caused it is recorded before the verdict.
        first_verdict = kinds.index("verdict")
        shells = [r for r in records[:first_verdict] if r["kind"] == "event"
                  and r["data"]["kind"] == "proc.exec" and r["data"]["pid"] == v["pid"]]
        assert shells, "the triggering exec event is not in the audit log before the verdict"
        by_action = {(a["action"], a["status"]) for a in actions}
        assert ("pause", "done") in by_action and ("kill", "done") in by_action, actions
        kill = next(a for a in actions if a["action"] == "kill")
        assert kill["latency_ms"] < 2000, kill
        pause = next(a for a in actions if a["action"] == "pause")
        assert pause["latency_ms"] < kill["latency_ms"]

        audit_file = str(tmp_path / f"{name}.jsonl")
        verify = subprocess.run([*e2e.COI_WATCH, "audit", "verify", audit_file],
                                capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0, verify.stdout + verify.stderr
