"""The control endpoint: resume and stats over the supervisor's unix socket."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import aiohttp
import orjson

from coi_watch.control import ControlServer, request_resume, socket_for, supervisor_pid
from coi_watch.locks import ContainerLock
from coi_watch.verdicts import Action, ActionRecord


async def test_resume_goes_to_the_supervisor_holding_the_lock(tmp_path: Path) -> None:
    asked: list[str] = []

    async def resume(name: str) -> ActionRecord:
        asked.append(name)
        return ActionRecord(ts_ns=1, wall_ns=2, container=name, action=Action.RESUME,
                            status="done", detail="unfrozen; quarantine lifted")

    assert await request_resume(tmp_path, "c1") is None  # no supervisor: caller acts itself
    server = ControlServer(tmp_path, resume=resume, stats=lambda: {"events": 7})
    await server.start()
    lock = ContainerLock(tmp_path, "c1")
    lock.acquire()
    try:
        assert supervisor_pid(tmp_path, "c1") == os.getpid()
        assert stat.S_IMODE(os.stat(socket_for(tmp_path, os.getpid())).st_mode) == 0o600
        rec = await request_resume(tmp_path, "c1")
        assert rec is not None and rec.action is Action.RESUME and rec.status == "done"
        assert asked == ["c1"]
        conn = aiohttp.UnixConnector(path=str(server.path))
        async with aiohttp.ClientSession(connector=conn) as s, s.get("http://x/stats") as r:
            assert orjson.loads(await r.read()) == {"events": 7}
    finally:
        lock.release()
        await server.close()
    assert not server.path.exists()
    assert supervisor_pid(tmp_path, "c1") == 0  # the lock is free again
