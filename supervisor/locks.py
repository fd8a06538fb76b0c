"""One supervisor per container, enforced by a lock file.

Strategy: ``flock(2)`` on ``<run_dir>/<container>.lock`` (default ``~/.coi/run``, as the Go
original's ``coi supervise``). The kernel drops the lock when the holder exits, however it
exits, so a killed supervisor never leaves a stale lock behind; the file holds the holder's
pid only so the refusal can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from coi_watch.errors import ConfigError

__all__ = ("ContainerLock", "LockHeld")


class LockHeld(ConfigError):
    """Another supervisor holds the container's lock (``holder`` is its pid, 0 if unknown)."""

    def __init__(self, name: str, holder: int) -> None:
        who = f"pid {holder}" if holder else "another process"
        super().__init__(f"{name} is already supervised by {who}")
        self.holder = holder


class ContainerLock:
    """The lock of one container; :meth:`acquire` raises :class:`LockHeld` when taken."""

    def __init__(self, run_dir: Path, name: str) -> None:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"not a container name: {name!r}")
        self.path = run_dir / f"{name}.lock"
        self.name = name
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting.

        Raises:
            LockHeld: another process holds it.
        """
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = 0
            with contextlib.suppress(ValueError, OSError):
                holder = int(os.pread(fd, 32, 0).decode().strip() or 0)
            os.close(fd)
            raise LockHeld(self.name, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None
