"""``coi-watch attach``: one supervisor per container (lock), and it ends with the session."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.incus, pytest.mark.privileged]


def test_second_supervisor_is_refused_and_attach_ends_with_the_container(
        e2e: Any, tmp_path: Path) -> None:
    env = {"COI_WATCH_RUN_DIR": str(tmp_path / "run")}
    with e2e.container() as name:
        first = e2e.Watcher(name, audit_dir=tmp_path / "a", env=env, command="attach")
        try:
            first.wait_ready()
            second = subprocess.run(
                [*e2e.COI_WATCH, "attach", name, "--audit-dir", str(tmp_path / "b")],
                capture_output=True, text=True, timeout=60, env={**e2e.environ(), **env})
            assert second.returncode == 2, second.stderr
            assert f"{name} is already supervised by pid {first.proc.pid}" in second.stderr
            e2e.incus("stop", "--force", name)
            assert first.proc.wait(timeout=20) == 0
        finally:
            first.stop()
        released = [line for line in first.lines if line.get("kind") == "note"
                    and str(line.get("message", "")).startswith(f"released {name}")]
        assert released, first.lines
        # The lock died with the first supervisor: a new attach may take the container.
        assert (tmp_path / "run" / f"{name}.lock").exists()
