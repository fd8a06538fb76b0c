"""The supervisor against a fake incusd: discovery, lifecycle following, and an incusd that
goes away and comes back (clear report, backoff, re-discovery; nothing else stops)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
from support.fake_incus import FakeIncus, serve

from coi_watch.app import Supervisor, SupervisorOptions
from coi_watch.config import load_config
from coi_watch.incus import IncusClient
from coi_watch.verdicts import ActionRecord, Verdict


async def _until(pred: object, timeout: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if pred():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.02)
    return False


async def test_supervisor_survives_incusd_restarting(tmp_path: Path, sock_path: str) -> None:
    cfg = load_config([], env={}, overrides={
        "watch.sources": [], "watch.pattern": "c*", "audit.dir": str(tmp_path / "audit"),
        "watch.run_dir": str(tmp_path / "run"), "detectors.enabled": ["reverse_shell"],
        "rules.reload": False})
    first = FakeIncus()  # c1 runs, c2 is stopped
    second = FakeIncus()
    server = await serve(first, sock_path)
    printed: list[Verdict | ActionRecord | str] = []
    client = IncusClient.connect(sock_path)
    sup = Supervisor(cfg, SupervisorOptions(follow=True), client=client, printer=printed.append)
    task = asyncio.create_task(sup.run())
    try:
        await asyncio.wait_for(sup.ready.wait(), 10)
        assert sup.containers == {"c1"}
        # A container that starts is supervised at once (lifecycle event).
        first.status["c2"] = "Running"
        assert await _until(lambda: bool(first.streams))
        await first.emit("lifecycle", "instance-started", "c2")
        assert await _until(lambda: sup.containers == {"c1", "c2"})

        # incusd goes away: the stream drops, the supervisor says so and keeps running.
        for ws, _types in first.streams:
            await ws.close()
        await server.cleanup()
        assert await _until(lambda: any("Incus unavailable" in str(p) for p in printed))
        assert not task.done()

        # It comes back with another container running: reconnected and re-discovered.
        second.status = {"c1": "Running", "c2": "Running", "c3": "Running"}
        server = await serve(second, sock_path)
        assert await _until(lambda: "c3" in sup.containers, timeout=15)
        assert await _until(lambda: bool(second.streams))
        await second.emit("lifecycle", "instance-stopped", "c3")
        assert await _until(lambda: "c3" not in sup.containers)
    finally:
        sup.stop()
        await asyncio.wait_for(task, 20)
        await client.close()
        for fake in (first, second):
            for ws, _types in fake.streams:
                await ws.close()
        await server.cleanup()
    records = [orjson.loads(line) for line in
               (tmp_path / "audit" / "_supervisor.jsonl").read_bytes().splitlines()]
    whats = [r["data"]["what"] for r in records if r["kind"] == "system"]
    assert "incus_unavailable" in whats and whats[-1] == "stopped"
