"""IncusClient against a fake Incus on a unix socket, then against the real incusd.

The fake imitates what incusd 6.0.4 answers (probed on the test bed): state changes are
``202 {"type": "async", "operation": ...}``; an operation that failed answers its ``/wait``
with HTTP 200 ``{"type": "error", "error_code": 500, "error": "The container is already
frozen"}``; an unknown instance is a sync ``404 {"type": "error", ...}``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

# The fake incusd; its fixtures (sock_path, fake, client) come from the support plugin.
from support.fake_incus import FakeIncus, serve

from coi_watch.errors import IncusError, IncusUnavailable
from coi_watch.incus import IncusClient, check_socket, with_retry

# -- connecting --------------------------------------------------------------------------


async def test_missing_socket_is_unavailable_with_a_clear_message(sock_path: str) -> None:
    with pytest.raises(IncusUnavailable) as err:
        IncusClient.connect(sock_path)
    assert str(err.value) == f"no Incus socket at {sock_path}: is incusd running?"


async def test_a_regular_file_is_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "unix.socket"
    path.write_text("")
    with pytest.raises(IncusUnavailable, match="is not a unix socket"):
        check_socket(str(path))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
async def test_permission_denied_names_the_fix(fake: FakeIncus, sock_path: str) -> None:
    # A socket only root may use, tried with the effective uid of nobody (root bypasses DAC).
    os.chmod(sock_path, 0o600)
    os.chmod(os.path.dirname(sock_path), 0o755)
    denied = f"permission denied on {sock_path}: run as root or a member of the incus-admin group"
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock_path)) as s:
        c = IncusClient(s)
        os.seteuid(65534)
        try:
            with pytest.raises(IncusUnavailable) as checked:
                check_socket(sock_path)
            with pytest.raises(IncusUnavailable) as connecting:  # connect(2) gets EACCES
                await c.server_info()
        finally:
            os.seteuid(0)
    assert str(checked.value) == denied
    assert str(connecting.value) == denied


async def test_injected_session_is_left_open(fake: FakeIncus, sock_path: str) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock_path)) as s:
        async with IncusClient(s) as c:
            assert (await c.server_info())["api_version"] == "1.0"
        assert not s.closed


async def test_server_gone_is_unavailable(sock_path: str) -> None:
    fake = FakeIncus()
    runner = await serve(fake, sock_path)
    async with IncusClient.connect(sock_path) as c:
        await c.status("c1")
        await runner.cleanup()
        if os.path.exists(sock_path):
            os.unlink(sock_path)
        with pytest.raises(IncusUnavailable) as err:
            await c.freeze("c1")
        assert str(err.value) == f"no Incus socket at {sock_path}: is incusd running?"


# -- reads -------------------------------------------------------------------------------


async def test_reads(client: IncusClient, fake: FakeIncus) -> None:
    assert (await client.server_info())["environment"]["server_version"] == "6.0.4"
    assert [i["name"] for i in await client.list_instances()] == ["c1", "c2"]
    assert ("GET", "/1.0/instances?recursion=1", None) in fake.requests
    assert (await client.instance("c1"))["status"] == "Running"
    state = await client.state("c1")
    assert state["pid"] == 4242
    assert await client.status("c2") == "Stopped"


async def test_missing_instance_carries_incus_text(client: IncusClient) -> None:
    with pytest.raises(IncusError) as err:
        await client.freeze("nope")
    assert not isinstance(err.value, IncusUnavailable)
    assert (
        str(err.value) == 'Failed to fetch instance "nope" in project "default": Instance not found'
    )
    assert err.value.status == 404
    assert err.value.operation == "PUT /1.0/instances/nope/state"


async def test_names_are_quoted_into_one_path_segment(client: IncusClient, fake: FakeIncus) -> None:
    with pytest.raises(IncusError) as err:
        await client.state("../../1.0")
    assert err.value.status == 404
    assert fake.requests[-1][1] == "/1.0/instances/..%2F..%2F1.0/state"


async def test_non_json_answer_is_an_incus_error(client: IncusClient) -> None:
    with pytest.raises(IncusError, match="HTTP 502, not JSON") as err:
        await client._call("GET", "/broken")
    assert err.value.status == 502


# -- state changes -----------------------------------------------------------------------


async def test_freeze_sends_the_action_and_waits_on_the_operation(
    client: IncusClient, fake: FakeIncus
) -> None:
    await client.freeze("c1")
    assert fake.status["c1"] == "Frozen"
    method, path, body = fake.requests[0]
    assert (method, path, body) == (
        "PUT",
        "/1.0/instances/c1/state",
        {"action": "freeze", "timeout": 30},
    )
    method, path, _ = fake.requests[1]
    assert method == "GET"
    assert path.startswith("/1.0/operations/") and path.endswith("/wait?timeout=35")


async def test_state_changes_are_idempotent(client: IncusClient, fake: FakeIncus) -> None:
    await client.unfreeze("c1")  # running: "already running" -> success
    await client.freeze("c1")
    await client.freeze("c1")  # "already frozen" -> state Frozen -> success
    assert await client.status("c1") == "Frozen"
    await client.stop("c1")  # force stop of a frozen container
    stop_body = next(b for m, p, b in fake.requests if m == "PUT" and b["action"] == "stop")
    assert stop_body == {"action": "stop", "force": True, "timeout": 30}
    await client.stop("c1")  # "already stopped" -> success
    assert await client.status("c1") == "Stopped"


async def test_freezing_a_stopped_instance_fails_with_incus_text(client: IncusClient) -> None:
    with pytest.raises(IncusError) as err:
        await client.freeze("c2")
    assert str(err.value) == "The instance isn't running"
    assert err.value.status == 500
    with pytest.raises(IncusError, match="The container isn't running"):
        await client.unfreeze("c2")


async def test_failure_reported_in_operation_metadata(client: IncusClient, fake: FakeIncus) -> None:
    fake.failure_style = "metadata"
    await client.freeze("c1")
    await client.freeze("c1")  # still idempotent
    with pytest.raises(IncusError) as err:
        await client.freeze("c2")
    assert str(err.value) == "The instance isn't running"
    assert err.value.status == 400


async def test_snapshots(client: IncusClient, fake: FakeIncus) -> None:
    await client.snapshot("c1", "forensic-1")
    assert ("POST", "/1.0/instances/c1/snapshots", {"name": "forensic-1", "stateful": False}) in (
        fake.requests
    )
    assert await client.list_snapshots("c1") == ["forensic-1"]
    with pytest.raises(IncusError, match="Snapshot already exists"):
        await client.snapshot("c1", "forensic-1")
    await client.delete_snapshot("c1", "forensic-1")
    assert await client.list_snapshots("c1") == []
    with pytest.raises(IncusError, match="Snapshot not found"):
        await client.delete_snapshot("c1", "forensic-1")


# -- retry -------------------------------------------------------------------------------


async def test_retry_backs_off_exponentially_and_only_on_unavailable() -> None:
    delays: list[float] = []
    calls = 0

    async def sleep(d: float) -> None:
        delays.append(d)

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 6:
            raise IncusUnavailable("restarting")
        return "ok"

    assert await with_retry(flaky, attempts=6, base_delay=0.1, max_delay=1.0, sleep=sleep) == "ok"
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])

    calls, delays[:] = 0, []
    with pytest.raises(IncusUnavailable):
        await with_retry(flaky, attempts=3, sleep=sleep)
    assert calls == 3 and len(delays) == 2

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise IncusError("Instance not found", status=404)

    calls = 0
    with pytest.raises(IncusError):
        await with_retry(refused, sleep=sleep)
    assert calls == 1


async def test_retry_reaches_a_daemon_that_comes_up_late(sock_path: str) -> None:
    fake = FakeIncus()
    runners: list[web.AppRunner] = []

    async def start_later() -> None:
        await asyncio.sleep(0.3)
        runners.append(await serve(fake, sock_path))

    starter = asyncio.create_task(start_later())
    clients: list[IncusClient] = []

    async def freeze() -> None:
        if not clients:
            clients.append(IncusClient.connect(sock_path))  # raises until the socket exists
        await clients[0].freeze("c1")

    t0 = time.monotonic()
    await with_retry(freeze, attempts=6, base_delay=0.05)
    assert time.monotonic() - t0 >= 0.3
    assert fake.status["c1"] == "Frozen"
    await starter
    await clients[0].close()
    await runners[0].cleanup()


# -- events ------------------------------------------------------------------------------


async def test_event_stream_yields_lifecycle_events(client: IncusClient, fake: FakeIncus) -> None:
    stream = await client.subscribe("lifecycle")
    assert fake.requests[-1][1] == "/1.0/events?type=lifecycle"
    await client.freeze("c1")
    event = await asyncio.wait_for(anext(stream), 2)
    assert event["metadata"]["action"] == "instance-paused"
    assert event["metadata"]["source"] == "/1.0/instances/c1"
    await stream.close()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_event_stream_drop_is_unavailable(client: IncusClient, fake: FakeIncus) -> None:
    gen = client.events("lifecycle,operation")
    first = asyncio.ensure_future(anext(gen))
    for _ in range(100):
        if fake.streams:
            break
        await asyncio.sleep(0.01)
    await client.stop("c1")
    assert (await asyncio.wait_for(first, 2))["metadata"]["action"] == "instance-stopped"
    await fake.streams[0][0].close()  # incusd going away
    with pytest.raises(IncusUnavailable, match="event stream closed"):
        await asyncio.wait_for(anext(gen), 2)


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


def _ctr_size(pid: int) -> int:
    # The host can read a (frozen) container's files through /proc/PID/root.
    return os.stat(f"/proc/{pid}/root/tmp/ctr").st_size


async def _grows(pid: int, seconds: float = 0.4) -> bool:
    before = _ctr_size(pid)
    await asyncio.sleep(seconds)
    return _ctr_size(pid) > before


@pytest.mark.incus
async def test_real_freeze_unfreeze_stop(container: str) -> None:
    assert shutil.which("incus")
    subprocess.run(
        [
            "incus",
            "exec",
            container,
            "--",
            "sh",
            "-c",
            "while true; do echo x >> /tmp/ctr; done </dev/null >/dev/null 2>&1 &",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    async with IncusClient.connect(INCUS_SOCKET) as c:
        pid = int((await c.state(container))["pid"])
        for _ in range(50):
            if os.path.exists(f"/proc/{pid}/root/tmp/ctr"):
                break
            await asyncio.sleep(0.05)
        assert await _grows(pid), "the counter loop does not run"

        events = await c.subscribe("lifecycle")
        t0 = time.perf_counter()
        await c.freeze(container)
        freeze_ms = (time.perf_counter() - t0) * 1e3
        assert await c.status(container) == "Frozen"
        assert not await _grows(pid), "a frozen container kept writing"
        paused = None
        while paused is None:
            ev = await asyncio.wait_for(anext(events), 5)
            if ev["metadata"]["source"] == f"/1.0/instances/{container}":
                paused = ev["metadata"]["action"]
        assert paused == "instance-paused"
        await events.close()

        await c.freeze(container)  # idempotent
        assert await c.status(container) == "Frozen"

        t0 = time.perf_counter()
        await c.unfreeze(container)
        unfreeze_ms = (time.perf_counter() - t0) * 1e3
        assert await c.status(container) == "Running"
        assert await _grows(pid), "the counter did not resume"
        await c.unfreeze(container)  # idempotent

        await c.freeze(container)
        t0 = time.perf_counter()
        await c.stop(container, force=True)  # forced stop of a FROZEN container
        stop_ms = (time.perf_counter() - t0) * 1e3
        assert await c.status(container) == "Stopped"
        await c.stop(container)  # idempotent
        assert await c.status(container) == "Stopped"
        with pytest.raises(IncusError, match="isn't running"):
            await c.freeze(container)
        print(
            f"\nincus latency: freeze {freeze_ms:.1f} ms, unfreeze {unfreeze_ms:.1f} ms, "
            f"stop --force (frozen) {stop_ms:.1f} ms"
        )


@pytest.mark.incus
async def test_real_errors_and_snapshots(container: str) -> None:
    async with IncusClient.connect(INCUS_SOCKET) as c:
        assert (await c.server_info())["api_version"] == "1.0"
        assert container in [i["name"] for i in await c.list_instances()]
        with pytest.raises(IncusError) as err:
            await c.freeze("coi-t-does-not-exist")
        assert "Instance not found" in str(err.value)
        assert err.value.status == 404
        await c.snapshot(container, "forensic-1")
        assert await c.list_snapshots(container) == ["forensic-1"]
        await c.delete_snapshot(container, "forensic-1")
        assert await c.list_snapshots(container) == []
