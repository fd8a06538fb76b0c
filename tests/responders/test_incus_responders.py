"""Pause/kill responders and resume(): against a small fake Incus, then the real incusd."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
from aiohttp import web

# The fake incusd; its fixtures (sock_path, fake, client) come from the support plugin.
from support.fake_incus import FakeIncus, serve

from coi_watch.incus import IncusClient
from coi_watch.protocols import Responder
from coi_watch.responders.incus import KillResponder, PauseResponder, resume
from coi_watch.verdicts import Action, Severity, Verdict


def verdict(container: str, ts_ns: int = 0) -> Verdict:
    return Verdict(
        ts_ns=ts_ns or time.monotonic_ns(),
        wall_ns=time.time_ns(),
        container=container,
        detector="reverse_shell",
        title="shell with socket stdio",
        severity=Severity.CRITICAL,
        dedup_key="reverse_shell:c1:42",
    )


class StepClock:
    """Returns the given instants in turn (ns)."""

    def __init__(self, *instants: int) -> None:
        self._it = iter(instants)

    def __call__(self) -> int:
        return next(self._it)


def test_they_are_responders() -> None:
    assert isinstance(PauseResponder(), Responder)
    assert isinstance(KillResponder(), Responder)
    assert (PauseResponder.name, PauseResponder.action) == ("pause", Action.PAUSE)
    assert (KillResponder.name, KillResponder.action) == ("kill", Action.KILL)


async def test_pause_freezes_and_times_from_the_verdict(
    client: IncusClient, fake: FakeIncus
) -> None:
    clock = StepClock(5_000_000, 12_100_000)  # action starts at 5 ms, ends at 12.1 ms
    rec = await PauseResponder(client=client, clock=clock).respond(verdict("c1", ts_ns=1_000_000))
    assert fake.status["c1"] == "Frozen"
    assert fake.puts == [{"action": "freeze", "timeout": 30}]
    assert (rec.action, rec.status, rec.error) == (Action.PAUSE, "done", "")
    assert rec.detail == "frozen in 7.1 ms"
    assert rec.latency_ms == pytest.approx(11.1)  # from the verdict's event, not the call
    assert (rec.container, rec.detector, rec.dedup_key) == (
        "c1",
        "reverse_shell",
        "reverse_shell:c1:42",
    )
    assert rec.ts_ns == 12_100_000


async def test_pause_is_idempotent(client: IncusClient, fake: FakeIncus) -> None:
    pause = PauseResponder(client=client)
    assert (await pause.respond(verdict("c1"))).status == "done"
    again = await pause.respond(verdict("c1"))
    assert (again.status, again.error) == ("done", "")
    assert fake.status["c1"] == "Frozen"


async def test_pause_of_a_stopped_container_is_skipped(client: IncusClient) -> None:
    rec = await PauseResponder(client=client).respond(verdict("c2"))
    assert rec.status == "skipped"
    assert rec.detail.startswith("instance is not running: nothing to pause")


async def test_failure_is_a_record_with_incus_text(client: IncusClient) -> None:
    for responder in (PauseResponder(client=client), KillResponder(client=client)):
        rec = await responder.respond(verdict("ghost"))
        assert rec.status == "failed"
        assert (
            rec.error == 'Failed to fetch instance "ghost" in project "default": Instance not found'
        )


async def test_kill_stops_a_frozen_container_idempotently(
    client: IncusClient, fake: FakeIncus
) -> None:
    await PauseResponder(client=client).respond(verdict("c1"))
    kill = KillResponder(client=client)
    rec = await kill.respond(verdict("c1"))
    assert (rec.action, rec.status) == (Action.KILL, "done")
    assert rec.detail.startswith("stopped in ")
    assert fake.puts[-1] == {"action": "stop", "force": True, "timeout": 30}
    assert fake.status["c1"] == "Stopped"
    assert (await kill.respond(verdict("c1"))).status == "done"


async def test_registry_construction_connects_lazily(fake: FakeIncus, sock_path: str) -> None:
    pause = PauseResponder({"socket": sock_path})  # as the entry-point registry builds it
    assert (await pause.respond(verdict("c1"))).status == "done"
    await pause.aclose()


async def test_no_incusd_is_a_failed_record(sock_path: str) -> None:
    rec = await KillResponder({"socket": sock_path, "retry_attempts": 2}).respond(verdict("c1"))
    assert rec.status == "failed"
    assert rec.error == f"no Incus socket at {sock_path}: is incusd running?"


async def test_pause_retries_until_incusd_is_back(sock_path: str) -> None:
    fake = FakeIncus()
    runners: list[web.AppRunner] = []

    async def restart() -> None:
        await asyncio.sleep(0.4)
        runners.append(await serve(fake, sock_path))

    task = asyncio.create_task(restart())
    pause = PauseResponder({"socket": sock_path, "retry_attempts": 6})
    rec = await pause.respond(verdict("c1"))
    await task
    assert rec.status == "done", rec.error
    assert fake.status["c1"] == "Frozen"
    await pause.aclose()
    await runners[0].cleanup()


async def test_resume(client: IncusClient, fake: FakeIncus) -> None:
    fake.status["c1"] = "Frozen"
    rec = await resume(client, "c1")
    assert (rec.status, rec.container) == ("done", "c1")
    assert rec.detail.startswith("resumed: unfrozen in ")
    assert fake.status["c1"] == "Running"
    assert (await resume(client, "c1")).status == "done"  # running already
    stopped = await resume(client, "c2")
    assert stopped.status == "failed"
    assert stopped.error == (
        "The container isn't running (the instance is Stopped; resume does not restart it)"
    )
    assert fake.status["c2"] == "Stopped"
    missing = await resume(client, "ghost")
    assert missing.status == "failed" and "Instance not found" in missing.error


# -- the real incusd ---------------------------------------------------------------------

INCUS_SOCKET = os.environ.get("COI_INCUS_SOCKET", "/var/lib/incus/unix.socket")
TEST_IMAGE = os.environ.get("COI_TESTBED_IMAGE", "coi-bb")


@pytest.fixture
def container() -> Iterator[str]:
    name = f"coi-t-{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run(["incus", "launch", TEST_IMAGE, name], check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["incus", "delete", "--force", name], check=False, capture_output=True)


@pytest.mark.incus
async def test_real_pause_resume_pause_kill(container: str) -> None:
    async with IncusClient.connect(INCUS_SOCKET) as c:
        pause, kill = PauseResponder(client=c), KillResponder(client=c)
        rec = await pause.respond(verdict(container))
        assert rec.status == "done", rec.error
        assert await c.status(container) == "Frozen"
        assert (await pause.respond(verdict(container))).status == "done"

        back = await resume(c, container)
        assert back.status == "done", back.error
        assert await c.status(container) == "Running"

        await pause.respond(verdict(container))
        killed = await kill.respond(verdict(container))  # the policy's order: freeze, then kill
        assert killed.status == "done", killed.error
        assert await c.status(container) == "Stopped"
        assert (await kill.respond(verdict(container))).status == "done"
        assert (await pause.respond(verdict(container))).status == "skipped"
        after = await resume(c, container)
        assert after.status == "failed" and "Stopped" in after.error
        print(f"\nresponders: pause {rec.detail}, kill {killed.detail}")

        ghost = await kill.respond(verdict("coi-t-does-not-exist"))
        assert ghost.status == "failed" and "Instance not found" in ghost.error


@pytest.mark.incus
async def test_real_lazy_client_from_config(container: str) -> None:
    pause = PauseResponder({"socket": INCUS_SOCKET})
    try:
        assert (await pause.respond(verdict(container))).status == "done"
    finally:
        await pause.aclose()
    kill = KillResponder({})
    try:
        assert (await kill.respond(verdict(container))).status == "done"
    finally:
        await kill.aclose()
