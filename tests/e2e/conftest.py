"""Fixtures for the end-to-end tests: real containers from the test image and a real
``coi-watch watch`` subprocess. Tests use them through the ``e2e`` fixture (a namespace of
the helpers below), since test modules cannot import conftest by name."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

IMAGE = os.environ.get("COI_TESTBED_IMAGE", "coi-bb")
COI_WATCH = [sys.executable, "-m", "coi_watch.cli"]


def incus(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the incus client."""
    return subprocess.run(["incus", *args], check=check, capture_output=True, text=True,
                          timeout=timeout)


def status(name: str) -> str:
    """The instance status as Incus reports it (``Running``, ``Frozen``, ``Stopped``)."""
    out = incus("list", f"^{name}$", "--format", "json").stdout
    items = orjson.loads(out)
    return str(items[0]["status"]) if items else "Missing"


@contextmanager
def container(prefix: str = "coi-e2e") -> Iterator[str]:
    """A throwaway container from the test image, deleted afterwards."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    incus("launch", IMAGE, name)
    try:
        yield name
    finally:
        incus("delete", "--force", name, check=False)


def wait_for(pred: object, timeout: float, interval: float = 0.02) -> bool:
    """Poll ``pred()`` until true or ``timeout`` seconds pass (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


class Watcher:
    """A real ``coi-watch watch --json`` subprocess, with its output lines collected."""

    def __init__(self, *args: str, audit_dir: Path, env: dict[str, str] | None = None,
                 command: str = "watch", extra: tuple[str, ...] = ()) -> None:
        self.audit_dir = audit_dir
        self.proc = subprocess.Popen(
            [*COI_WATCH, command, "--json", "--audit-dir", str(audit_dir), *args, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[dict[str, object]] = []

    def wait_ready(self, timeout: float = 20) -> None:
        """Block until the supervisor says it is ready (sources subscribed)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"coi-watch exited early: rc={self.proc.poll()} {err}")
            rec = orjson.loads(line)
            self.lines.append(rec)
            if rec.get("kind") == "note" and str(rec.get("message", "")).startswith("ready"):
                return
        raise AssertionError("coi-watch did not become ready")

    def stop(self) -> tuple[int, str, str]:
        """SIGTERM (unless it already ended), then collect the rest of the output."""
        if self.proc.poll() is None:
            self.proc.terminate()
        out, err = self.proc.communicate(timeout=20)
        for line in out.splitlines():
            if line.strip():
                self.lines.append(orjson.loads(line))
        return self.proc.returncode, out, err


def audit_records(path: Path) -> list[dict[str, object]]:
    """All records of one audit file."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def environ() -> dict[str, str]:
    """The environment for coi-watch subprocesses."""
    return dict(os.environ)


class _E2E:
    environ = staticmethod(environ)
    incus = staticmethod(incus)
    status = staticmethod(status)
    container = staticmethod(container)
    wait_for = staticmethod(wait_for)
    Watcher = Watcher
    audit_records = staticmethod(audit_records)
    COI_WATCH = COI_WATCH


@pytest.fixture
def e2e() -> type[_E2E]:
    """The end-to-end helpers."""
    return _E2E
