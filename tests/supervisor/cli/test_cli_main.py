"""The main CLI: clear one-line errors and exit codes for the bad cases."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coi_watch import __version__
from coi_watch.cli.main import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0 and result.output.strip() == f"coi-watch {__version__}"


def test_missing_incus_socket_is_exit_3_with_a_clear_message(tmp_path: Path) -> None:
    result = runner.invoke(app, ["watch", "c1", "--incus-socket", str(tmp_path / "nope.sock"),
                                 "--audit-dir", str(tmp_path / "a")])
    assert result.exit_code == 3
    assert "no Incus socket at" in result.output and "is incusd running?" in result.output
    assert "Traceback" not in result.output


def test_unwritable_audit_dir_is_exit_4(tmp_path: Path) -> None:
    sock_path = tmp_path / "incus.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))  # a socket file is enough: the audit check comes first
    blocker = tmp_path / "file"
    blocker.write_text("x")
    try:
        # Run in a subprocess: the supervisor installs signal handlers on the main thread.
        proc = subprocess.run(
            [sys.executable, "-m", "coi_watch.cli", "watch", "c1", "--incus-socket",
             str(sock_path), "--audit-dir", str(blocker / "audit"), "--config",
             str(tmp_path / "none.toml")],
            capture_output=True, text=True, timeout=60)
    finally:
        sock.close()
    assert proc.returncode == 4, proc.stderr
    assert "coi-watch: error:" in proc.stderr and "audit" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_invalid_config_is_exit_2_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[response]\ndedup_window_s = "soon"\n')
    result = runner.invoke(app, ["watch", "--config", str(cfg)])
    assert result.exit_code == 2
    assert "response.dedup_window_s" in result.output and str(cfg) in result.output


@pytest.mark.incus
@pytest.mark.privileged
def test_resume_of_a_missing_container_reports_incus_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["resume", "coi-no-such-container", "--audit-dir",
                                 str(tmp_path)])
    assert result.exit_code == 3
    assert "not found" in result.output.lower()
