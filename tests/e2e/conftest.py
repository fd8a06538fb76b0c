"""Fixtures for the end-to-end tests: real containers from the test image and a real
``coi-watch watch`` subprocess. Tests use them through the ``e2e`` fixture (a namespace of
the helpers below), since test modules cannot import conftest by name."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
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
def container(prefix: str = "coi-e2e", network: str | None = None) -> Iterator[str]:
    """A throwaway container from the test image (on ``network`` when given: a bridge made
    by the test), deleted afterwards, frozen or not."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    incus("launch", IMAGE, name, *(("--network", network) if network else ()))
    try:
        yield name
    finally:
        try:
            if status(name) == "Frozen":
                incus("start", name, check=False)  # unfreeze: a frozen one may not delete
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


class LiveWatcher:
    """A long-running ``coi-watch watch --json`` subprocess (one per test module, say), whose
    stdout and stderr are read by threads all along, so a test can wait for a line while the
    supervisor keeps printing for other containers."""

    def __init__(self, *args: str, audit_dir: Path, env: dict[str, str] | None = None) -> None:
        self.audit_dir = audit_dir
        self.proc = subprocess.Popen(
            [*COI_WATCH, "watch", "--json", "--audit-dir", str(audit_dir), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[dict[str, object]] = []
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.strip():
                continue
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                rec = {"kind": "unparsed", "line": line}
            with self._cond:
                self.lines.append(rec)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.errors.append(line)

    def wait_line(self, pred: object, timeout: float) -> dict[str, object] | None:
        """The first output line (JSON object) for which ``pred(line)`` is true, waiting up
        to ``timeout`` seconds for it; ``None`` when none came (or coi-watch ended)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = 0
            while True:
                for rec in self.lines[seen:]:
                    if pred(rec):  # type: ignore[operator]
                        return rec
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._threads[0].is_alive()):
                    return None
                self._cond.wait(min(left, 0.5))

    def wait_note(self, prefix: str, timeout: float = 20) -> dict[str, object]:
        """Wait for a note starting with ``prefix``; fail with the output so far otherwise."""
        rec = self.wait_line(lambda r: r.get("kind") == "note"
                             and str(r.get("message", "")).startswith(prefix), timeout)
        if rec is None:
            raise AssertionError(f"no note {prefix!r} within {timeout}s: rc={self.proc.poll()} "
                                 f"lines={self.lines[-20:]} stderr={''.join(self.errors)[-2000:]}")
        return rec

    def for_container(self, name: str) -> list[dict[str, object]]:
        """The verdict and action lines printed so far about ``name``."""
        with self._cond:
            return [r for r in self.lines if r.get("container") == name]

    def stop(self) -> int:
        """SIGTERM (unless it already ended); wait for it and the readers. Its exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            rc = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(timeout=10)
        for t in self._threads:
            t.join(5)
        return rc


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
    LiveWatcher = LiveWatcher
    audit_records = staticmethod(audit_records)
    COI_WATCH = COI_WATCH


@pytest.fixture(scope="session")
def e2e() -> type[_E2E]:
    """The end-to-end helpers (session-scoped, so module-scoped fixtures can use them)."""
    return _E2E
