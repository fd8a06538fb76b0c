"""The supervisor's control endpoint: ``resume`` and ``stats`` over a unix socket.

Strategy: a running supervisor owns the state of the containers it watches (their
quarantine rules live in its nftables table, which it repairs when anybody else changes
it), so ``coi-watch resume NAME`` asks *it* to lift a pause or quarantine rather than
editing that state behind its back. The endpoint is a small aiohttp application on
``<run_dir>/supervisor-<pid>.sock`` (mode 0600, in the 0700 run directory); the container's
lock file (:mod:`coi_watch.locks`) names the pid, so a client finds the socket from the
container's name alone. With no supervisor running, ``resume`` acts on Incus directly.

Routes:

- ``POST /resume/{name}``: unfreeze through Incus, lift any quarantine, audit the action;
  answers the :class:`~coi_watch.verdicts.ActionRecord` as JSON.
- ``GET /stats``: events, verdicts, drops per source and kind, actions, watched containers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from coi_watch.errors import CoiWatchError
from coi_watch.verdicts import Action, ActionRecord

__all__ = ("ControlServer", "request_resume", "socket_for", "supervisor_pid")

Resume = Callable[[str], Awaitable[ActionRecord]]
Stats = Callable[[], dict[str, Any]]


def socket_for(run_dir: Path, pid: int) -> Path:
    """The control socket of the supervisor with ``pid``."""
    return run_dir / f"supervisor-{pid}.sock"


def supervisor_pid(run_dir: Path, name: str) -> int:
    """The pid of the supervisor that holds ``name``'s lock, or 0 when none does."""
    import fcntl

    path = run_dir / f"{name}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with contextlib.suppress(ValueError, OSError):
                return int(os.pread(fd, 32, 0).decode().strip() or 0)
            return 0
        fcntl.flock(fd, fcntl.LOCK_UN)  # nobody held it: no supervisor
        return 0
    finally:
        os.close(fd)


class ControlServer:
    """Serves the routes above while the supervisor runs."""

    def __init__(self, run_dir: Path, *, resume: Resume, stats: Stats) -> None:
        self.path = socket_for(run_dir, os.getpid())
        self._resume = resume
        self._stats = stats
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen on the socket (replacing a stale one of a dead process with our pid)."""
        app = web.Application()
        app.router.add_post("/resume/{name}", self._on_resume)
        app.router.add_get("/stats", self._on_stats)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)  # the socket is created 0600
        try:
            await web.UnixSite(self._runner, str(self.path)).start()
        finally:
            os.umask(old)

    async def close(self) -> None:
        """Stop serving and remove the socket."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _on_resume(self, request: web.Request) -> web.Response:
        rec = await self._resume(request.match_info["name"])
        return web.Response(body=orjson.dumps(rec), content_type="application/json")

    async def _on_stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self._stats(), option=orjson.OPT_NON_STR_KEYS),
                            content_type="application/json")


async def request_resume(run_dir: Path, name: str) -> ActionRecord | None:
    """Ask the supervisor watching ``name`` to resume it; None when no supervisor does.

    Raises:
        CoiWatchError: a supervisor holds the container but its endpoint does not answer.
    """
    pid = supervisor_pid(run_dir, name)
    if not pid:
        return None
    path = socket_for(run_dir, pid)
    connector = aiohttp.UnixConnector(path=str(path))
    try:
        async with aiohttp.ClientSession(connector=connector) as s, s.post(
                f"http://coi-watch/resume/{name}", timeout=aiohttp.ClientTimeout(total=60)) as r:
            data = await r.json(loads=orjson.loads)
    except (aiohttp.ClientError, OSError) as exc:
        raise CoiWatchError(
            f"the supervisor (pid {pid}) watching {name} does not answer on {path}: {exc}"
        ) from None
    data["action"] = Action(data["action"])
    data.pop("kind", None)
    return ActionRecord(**data)
