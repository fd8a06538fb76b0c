"""A fake incusd on a unix socket, shared by the client and responder tests.

It imitates what incusd 6.0.4 answers (probed on the test bed): state changes are
``202 {"type": "async", "operation": ...}``; an operation that failed answers its ``/wait``
with HTTP 200 ``{"type": "error", "error_code": 500, "error": "The container is already
frozen"}``; an unknown instance is a sync ``404 {"type": "error", ...}``. Import the fixtures
(``sock_path``, ``fake``, ``client``) into a test module to use them.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from coi_watch.incus import IncusClient

__all__ = ("FakeIncus", "client", "fake", "serve", "sock_path")

# -- a fake incusd -----------------------------------------------------------------------

# (action, current status) -> (new status, error code, error text); text as incusd 6.0.4 says it
_TRANSITIONS: dict[tuple[str, str], tuple[str, int, str]] = {
    ("freeze", "Running"): ("Frozen", 0, ""),
    ("freeze", "Frozen"): ("Frozen", 500, "The container is already frozen"),
    ("freeze", "Stopped"): ("Stopped", 500, "The instance isn't running"),
    ("unfreeze", "Frozen"): ("Running", 0, ""),
    ("unfreeze", "Running"): ("Running", 500, "The container is already running"),
    ("unfreeze", "Stopped"): ("Stopped", 500, "The container isn't running"),
    ("stop", "Running"): ("Stopped", 0, ""),
    ("stop", "Frozen"): ("Stopped", 0, ""),
    ("stop", "Stopped"): ("Stopped", 400, "The instance is already stopped"),
}
_LIFECYCLE = {
    "Frozen": "instance-paused",
    "Running": "instance-resumed",
    "Stopped": "instance-stopped",
}


def _sync(metadata: Any) -> web.Response:
    body = {"type": "sync", "status": "Success", "status_code": 200, "metadata": metadata}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _error(code: int, text: str, *, http: int | None = None) -> web.Response:
    body = {"type": "error", "error_code": code, "error": text, "metadata": None}
    return web.Response(
        body=orjson.dumps(body), status=http or code, content_type="application/json"
    )


def _not_found(name: str) -> web.Response:
    return _error(
        404, f'Failed to fetch instance "{name}" in project "default": Instance not found'
    )


class FakeIncus:
    """Just enough of incusd: instances, state changes as operations, snapshots, events."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {"c1": "Running", "c2": "Stopped"}
        self.snapshots: dict[str, list[str]] = {"c1": [], "c2": []}
        self.ops: dict[str, tuple[int, str]] = {}  # id -> (error code, error text)
        self.requests: list[tuple[str, str, Any]] = []  # (method, raw path, JSON body)
        self.failure_style = "error"  # or "metadata": failed op as status "Failure" + err
        self.streams: list[tuple[web.WebSocketResponse, list[str]]] = []  # (socket, types)
        app = web.Application()
        app.router.add_get("/1.0", self.root)
        app.router.add_get("/1.0/events", self.events)
        app.router.add_get("/1.0/instances", self.instances)
        app.router.add_get("/1.0/instances/{name}", self.instance)
        app.router.add_get("/1.0/instances/{name}/state", self.state)
        app.router.add_put("/1.0/instances/{name}/state", self.put_state)
        app.router.add_get("/1.0/instances/{name}/snapshots", self.list_snaps)
        app.router.add_post("/1.0/instances/{name}/snapshots", self.post_snap)
        app.router.add_delete("/1.0/instances/{name}/snapshots/{snap}", self.delete_snap)
        app.router.add_get("/1.0/operations/{id}/wait", self.wait)
        app.router.add_get("/broken", self.broken)
        self.app = app

    @property
    def puts(self) -> list[Any]:
        """The bodies of the state changes asked for, in order."""
        return [body for method, path, body in self.requests
                if method == "PUT" and path.endswith("/state")]

    async def _log(self, request: web.Request) -> Any:
        body = orjson.loads(await request.read()) if request.can_read_body else None
        self.requests.append((request.method, request.raw_path, body))
        return body

    def _op(self, code: int = 0, text: str = "") -> web.Response:
        op_id = str(uuid.uuid4())
        self.ops[op_id] = (code, text)
        body = {
            "type": "async",
            "status": "Operation created",
            "status_code": 100,
            "operation": f"/1.0/operations/{op_id}",
            "metadata": {"id": op_id, "status": "Running", "status_code": 103},
        }
        return web.Response(body=orjson.dumps(body), status=202, content_type="application/json")

    async def root(self, request: web.Request) -> web.Response:
        await self._log(request)
        return _sync({"api_version": "1.0", "environment": {"server_version": "6.0.4"}})

    async def instances(self, request: web.Request) -> web.Response:
        await self._log(request)
        return _sync([{"name": n, "status": s} for n, s in self.status.items()])

    async def instance(self, request: web.Request) -> web.Response:
        await self._log(request)
        name = request.match_info["name"]
        if name not in self.status:
            return _not_found(name)
        return _sync({"name": name, "status": self.status[name], "type": "container"})

    async def state(self, request: web.Request) -> web.Response:
        await self._log(request)
        name = request.match_info["name"]
        if name not in self.status:
            return _not_found(name)
        running = self.status[name] != "Stopped"
        return _sync({"status": self.status[name], "pid": 4242 if running else 0})

    async def put_state(self, request: web.Request) -> web.Response:
        body = await self._log(request)
        name = request.match_info["name"]
        if name not in self.status:
            return _not_found(name)
        action = body.get("action")
        if (action, self.status[name]) not in _TRANSITIONS:
            return _error(400, f"Unknown action: '{action}'")
        new, code, text = _TRANSITIONS[action, self.status[name]]
        if not code:
            self.status[name] = new
            await self.emit("lifecycle", _LIFECYCLE[new], name)
        return self._op(code, text)

    async def wait(self, request: web.Request) -> web.Response:
        await self._log(request)
        op_id = request.match_info["id"]
        if op_id not in self.ops:
            return _error(404, "Operation not found")
        code, text = self.ops[op_id]
        if not code:
            return _sync({"id": op_id, "status": "Success", "status_code": 200, "err": ""})
        if self.failure_style == "metadata":
            md = {"id": op_id, "status": "Failure", "status_code": 400, "err": text}
            return _sync(md)
        return _error(code, text, http=200)  # incusd 6.0.4: HTTP 200, type "error"

    async def list_snaps(self, request: web.Request) -> web.Response:
        await self._log(request)
        name = request.match_info["name"]
        if name not in self.status:
            return _not_found(name)
        return _sync([f"/1.0/instances/{name}/snapshots/{s}" for s in self.snapshots[name]])

    async def post_snap(self, request: web.Request) -> web.Response:
        body = await self._log(request)
        name = request.match_info["name"]
        if name not in self.status:
            return _not_found(name)
        if body["name"] in self.snapshots[name]:
            return self._op(409, "Snapshot already exists")
        self.snapshots[name].append(body["name"])
        return self._op()

    async def delete_snap(self, request: web.Request) -> web.Response:
        await self._log(request)
        name, snap = request.match_info["name"], request.match_info["snap"]
        if snap not in self.snapshots.get(name, []):
            return _error(404, "Snapshot not found")
        self.snapshots[name].remove(snap)
        return self._op()

    async def broken(self, request: web.Request) -> web.Response:
        return web.Response(text="<html>oops</html>", status=502)

    async def events(self, request: web.Request) -> web.WebSocketResponse:
        await self._log(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.streams.append((ws, request.query.get("type", "").split(",")))
        async for _ in ws:  # keep open until either side closes
            pass
        return ws

    async def emit(self, etype: str, action: str, name: str) -> None:
        event = {
            "type": etype,
            "timestamp": "2026-01-01T00:00:00Z",
            "metadata": {"action": action, "source": f"/1.0/instances/{name}", "context": {}},
            "project": "default",
        }
        for ws, types in list(self.streams):
            if etype in types and not ws.closed:
                await ws.send_bytes(orjson.dumps(event))


@pytest.fixture
def sock_path() -> Iterator[str]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="coi-incus-") as d:
        yield os.path.join(d, "unix.socket")


async def serve(fake: FakeIncus, path: str) -> web.AppRunner:
    runner = web.AppRunner(fake.app)
    await runner.setup()
    await web.UnixSite(runner, path).start()
    return runner


@pytest.fixture
async def fake(sock_path: str) -> AsyncIterator[FakeIncus]:
    f = FakeIncus()
    runner = await serve(f, sock_path)
    yield f
    await runner.cleanup()


@pytest.fixture
async def client(fake: FakeIncus, sock_path: str) -> AsyncIterator[IncusClient]:
    async with IncusClient.connect(sock_path) as c:
        yield c
