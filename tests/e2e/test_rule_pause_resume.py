"""End to end, for real: a Sigma rule written here turns a harmless command into a pause;
``coi-watch resume`` brings the container back; a rule added while running is hot-loaded
and pauses it again."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.incus, pytest.mark.privileged]

RULE = """\
title: E2E marker {marker}
id: {rule_id}
status: test
level: high
logsource:
  product: linux
  category: process_creation
detection:
  selection:
    CommandLine|contains: '{marker}'
  condition: selection
"""


def _run_marked(e2e: Any, name: str, marker: str) -> subprocess.Popen[bytes]:
    # sh's argv carries the marker ($0); the shell itself is harmless.
    return subprocess.Popen(["incus", "exec", name, "--", "sh", "-c", "sleep 20; true", marker],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_rule_pauses_resume_unfreezes_and_hot_reload_adds_a_rule(e2e: Any,
                                                                 tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "one.yml").write_text(RULE.format(marker="coi-e2e-marker-one",
                                               rule_id="6d3f1a52-0000-4000-8000-000000000001"))
    audit = tmp_path / "audit"
    with e2e.container() as name:
        watcher = e2e.Watcher(name, "--no-follow", "--rules", str(rules), audit_dir=audit)
        procs = []
        try:
            watcher.wait_ready()
            procs.append(_run_marked(e2e, name, "coi-e2e-marker-one"))
            assert e2e.wait_for(lambda: e2e.status(name) == "Frozen", timeout=5), watcher.lines
            # A frozen container really is frozen: exec into it fails.
            assert e2e.incus("exec", name, "--", "true", check=False).returncode != 0

            resume = subprocess.run([*e2e.COI_WATCH, "resume", name, "--audit-dir", str(audit)],
                                    capture_output=True, text=True, timeout=60)
            assert resume.returncode == 0, resume.stderr
            assert e2e.status(name) == "Running"

            # Hot reload: a new rule file is picked up without a restart.
            (rules / "two.yml").write_text(RULE.format(
                marker="coi-e2e-marker-two", rule_id="6d3f1a52-0000-4000-8000-000000000002"))
            deadline = time.monotonic() + 10
            assert watcher.proc.stdout is not None
            while time.monotonic() < deadline:
                line = watcher.proc.stdout.readline()
                if "rules reloaded" in line:
                    break
            else:
                raise AssertionError("no reload")
            procs.append(_run_marked(e2e, name, "coi-e2e-marker-two"))
            assert e2e.wait_for(lambda: e2e.status(name) == "Frozen", timeout=5)
            e2e.incus("start", name)  # unfreeze for a clean delete
        finally:
            for p in procs:
                p.kill()
            rc, _out, err = watcher.stop()
        assert rc == 0, err
        records = e2e.audit_records(audit / f"{name}.jsonl")
        verdicts = [r["data"] for r in records if r["kind"] == "verdict"]
        assert [v["detector"] for v in verdicts] == [
            "sigma:6d3f1a52-0000-4000-8000-000000000001",
            "sigma:6d3f1a52-0000-4000-8000-000000000002"]
        assert all(v["severity"] == "high" for v in verdicts)
        actions = [(r["data"]["action"], r["data"]["status"]) for r in records
                   if r["kind"] == "action"]
        assert actions.count(("pause", "done")) == 2 and ("resume", "done") in actions
        assert ("kill", "done") not in actions
        verify = subprocess.run([*e2e.COI_WATCH, "audit", "verify", str(audit)],
                                capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0, verify.stdout + verify.stderr
