"""A small async client for the Incus REST API over its unix socket.

Strategy: the client takes its transport as a parameter (an ``aiohttp.ClientSession``, usually
over ``aiohttp.UnixConnector``), so tests hand it a session bound to a fake server and
:meth:`IncusClient.connect` is the only place that knows about ``/var/lib/incus/unix.socket``.
Every call goes through one funnel, :meth:`IncusClient._call`, which turns Incus's three
response shapes into a value or an exception:

- ``{"type": "sync", "metadata": ...}`` -> the metadata;
- ``{"type": "async", "operation": "/1.0/operations/ID"}`` -> wait on
  ``GET /1.0/operations/ID/wait?timeout=N`` and check the operation's final status;
- ``{"type": "error", "error": ..., "error_code": ...}`` (also what an operation wait answers
  when the operation failed, with HTTP 200 and ``error_code`` 500 or 400, measured on Incus
  6.0.4) -> :class:`~coi_watch.errors.IncusError` carrying Incus's own text.

Connection failures (socket missing, refused, incusd restarting mid-request) become
:class:`~coi_watch.errors.IncusUnavailable`, the one error :func:`with_retry` retries.

State changes are idempotent by *checking state*, not by matching error text: when Incus
refuses ``freeze`` ("The container is already frozen"), ``unfreeze`` ("The container is already
running") or ``stop`` ("The instance is already stopped"), the client reads
``GET /1.0/instances/NAME/state`` and succeeds if the instance is already where we wanted it.
A forced stop works on a frozen container (verified on Incus 6.0.4), so kill never has to
unfreeze first.

Latency (Incus 6.0.4, cgroup v1, measured): freeze and unfreeze answer in 6-8 ms on an idle
container, a forced stop in ~600 ms. On a busy container a freeze is often *answered* only
after ~1.01 s: liblxc's ``do_freeze_thaw`` (``src/lxc/freezer.c``) writes ``FROZEN`` to
``freezer.state`` and, if the first read still says ``FREEZING``, polls again after
``sleep(1)``. The kernel has frozen the tasks long before (``freezer.state`` read ``FROZEN``
8-25 ms after the request), so containment is fast; only the confirmation is late.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Final, TypeVar
from urllib.parse import quote, unquote

import aiohttp
import orjson

from coi_watch.errors import IncusError, IncusUnavailable

__all__ = ("DEFAULT_SOCKET", "EventStream", "IncusClient", "check_socket", "with_retry")

DEFAULT_SOCKET: Final = "/var/lib/incus/unix.socket"

T = TypeVar("T")

#: Seconds to wait for a plain (non-operation) request before giving up.
_REQUEST_TIMEOUT: Final = 10.0
#: Extra seconds the HTTP request may take beyond the operation's own ``?timeout=``.
_WAIT_SLACK: Final = 10.0


def _missing_message(path: str) -> str:
    return f"no Incus socket at {path}: is incusd running?"


def _denied_message(path: str) -> str:
    return f"permission denied on {path}: run as root or a member of the incus-admin group"


def check_socket(path: str) -> None:
    """Check that ``path`` is a unix socket we may connect to.

    Raises:
        IncusUnavailable: it is missing, not a socket, or not readable and writable by us.
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise IncusUnavailable(_missing_message(path), operation=path) from None
    except PermissionError:
        raise IncusUnavailable(_denied_message(path), operation=path) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise IncusUnavailable(f"{path} is not a unix socket", operation=path)
    # connect(2) on a unix socket needs write permission on the socket file; ask with the
    # effective ids, which are what connect(2) is checked against.
    effective = os.access in os.supports_effective_ids
    if not os.access(path, os.R_OK | os.W_OK, effective_ids=effective):
        raise IncusUnavailable(_denied_message(path), operation=path)


def _q(name: str) -> str:
    """Quote one path segment: a name can never climb out of its collection."""
    return quote(name, safe="")


class IncusClient:
    """Async access to one Incus daemon; see the module docstring for the error model."""

    def __init__(self, session: aiohttp.ClientSession, *, base: str = "http://incus") -> None:
        self._session = session
        self._base = base.rstrip("/")
        self._owns_session = False
        # For error messages only: the socket path when the transport is a UnixConnector.
        self._where = str(getattr(session.connector, "path", "") or self._base)

    @classmethod
    def connect(cls, socket_path: str = DEFAULT_SOCKET) -> IncusClient:
        """Open a client on the unix socket ``socket_path``.

        Call it from a running event loop (aiohttp binds the connector to it).

        Raises:
            IncusUnavailable: the socket is missing or we may not use it.
        """
        check_socket(socket_path)
        session = aiohttp.ClientSession(
            # A small pool: a few warm connections make a freeze fast (no connect), and idle
            # ones close after 5 s, so a burst of state reads (container churn) leaves no
            # sockets open behind it.
            connector=aiohttp.UnixConnector(path=socket_path, limit=8, keepalive_timeout=5.0),
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
        )
        client = cls(session)
        client._owns_session = True
        return client

    async def close(self) -> None:
        """Close the session if :meth:`connect` opened it (an injected one stays open)."""
        if self._owns_session and not self._session.closed:
            await self._session.close()

    async def __aenter__(self) -> IncusClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the funnel ----------------------------------------------------------------------

    def _unavailable(self, exc: BaseException, what: str) -> IncusUnavailable:
        os_error = getattr(exc, "os_error", None)
        code = getattr(os_error, "errno", None)
        if code in (errno.ENOENT, errno.ENOTDIR):
            msg = _missing_message(self._where)
        elif code in (errno.EACCES, errno.EPERM):
            msg = _denied_message(self._where)
        elif code == errno.ECONNREFUSED:
            msg = f"Incus socket at {self._where} refuses connections: is incusd running?"
        elif isinstance(exc, aiohttp.ServerDisconnectedError):
            msg = f"Incus closed the connection during {what} (incusd restarting?)"
        else:
            msg = f"cannot reach Incus at {self._where}: {exc or type(exc).__name__}"
        return IncusUnavailable(msg, operation=what)

    async def _http(
        self, method: str, path: str, body: Mapping[str, Any] | None, timeout: float
    ) -> tuple[int, Any]:
        """One HTTP exchange: (status, decoded JSON body)."""
        what = f"{method} {path}"
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else None
        try:
            async with self._session.request(
                method,
                self._base + path,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except aiohttp.ConnectionTimeoutError as exc:
            raise self._unavailable(exc, what) from exc
        except TimeoutError:
            raise IncusError(
                f"Incus did not answer {what} within {timeout:g} s", operation=what
            ) from None
        except aiohttp.ClientConnectionError as exc:
            raise self._unavailable(exc, what) from exc
        except aiohttp.ClientError as exc:
            raise IncusError(f"{what}: {exc}", operation=what) from exc
        try:
            return status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            text = raw[:200].decode("utf-8", "replace").strip()
            raise IncusError(
                f"{what}: HTTP {status}, not JSON: {text!r}", status=status, operation=what
            ) from None

    @staticmethod
    def _check(status: int, payload: Any, what: str) -> dict[str, Any]:
        """Raise :class:`IncusError` for an error response; return the response object."""
        if not isinstance(payload, dict):
            raise IncusError(f"{what}: malformed response", status=status, operation=what)
        if payload.get("type") == "error" or status >= 400:
            code = payload.get("error_code") or status
            text = payload.get("error") or f"HTTP {status}"
            raise IncusError(str(text), status=int(code), operation=what)
        return payload

    async def _call(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, wait: int = 60
    ) -> Any:
        """Send one request; for an async answer, wait up to ``wait`` s for its operation.

        Returns the ``metadata`` of the sync answer or of the finished operation.
        """
        what = f"{method} {path}"
        status, payload = await self._http(method, path, body, _REQUEST_TIMEOUT)
        resp = self._check(status, payload, what)
        if resp.get("type") != "async":
            return resp.get("metadata")
        op = resp.get("operation")
        if not isinstance(op, str) or not op.startswith("/1.0/operations/"):
            raise IncusError(f"{what}: async answer without an operation", operation=what)
        # GET /1.0/operations/ID/wait?timeout=N blocks until the operation ends (or N s pass).
        status, payload = await self._http(
            "GET", f"{op}/wait?timeout={wait}", None, wait + _WAIT_SLACK
        )
        meta = self._check(status, payload, what).get("metadata")
        if not isinstance(meta, dict):
            raise IncusError(f"{what}: malformed operation {op}", status=status, operation=what)
        state = meta.get("status")
        if state == "Success":
            return meta.get("metadata")
        if state in ("Running", "Pending"):
            raise IncusError(f"{what}: operation {op} still running after {wait} s", operation=what)
        text = meta.get("err") or f"operation {state}"
        raise IncusError(str(text), status=int(meta.get("status_code") or 0), operation=what)

    # -- reads ---------------------------------------------------------------------------

    async def server_info(self) -> dict[str, Any]:
        """``GET /1.0``: API and server versions, environment."""
        return _as_dict(await self._call("GET", "/1.0"), "/1.0")

    async def list_instances(self) -> list[dict[str, Any]]:
        """``GET /1.0/instances?recursion=1``: every instance's configuration and status."""
        got = await self._call("GET", "/1.0/instances?recursion=1")
        if not isinstance(got, list):
            raise IncusError("GET /1.0/instances: not a list", operation="GET /1.0/instances")
        return [i for i in got if isinstance(i, dict)]

    async def instance(self, name: str) -> dict[str, Any]:
        """``GET /1.0/instances/NAME``."""
        path = f"/1.0/instances/{_q(name)}"
        return _as_dict(await self._call("GET", path), path)

    async def state(self, name: str) -> dict[str, Any]:
        """``GET /1.0/instances/NAME/state``: status, init ``pid``, ``network``, usage."""
        path = f"/1.0/instances/{_q(name)}/state"
        return _as_dict(await self._call("GET", path), path)

    async def status(self, name: str) -> str:
        """The instance's status: ``Running``, ``Frozen``, ``Stopped``, ..."""
        return str((await self.state(name)).get("status", ""))

    # -- state changes (idempotent) ------------------------------------------------------

    async def _change_state(
        self, name: str, body: Mapping[str, Any], goal: str, *, wait: int
    ) -> None:
        """``PUT /1.0/instances/NAME/state``; success when the instance ends up in ``goal``."""
        try:
            await self._call("PUT", f"/1.0/instances/{_q(name)}/state", body, wait=wait)
        except IncusUnavailable:
            raise
        except IncusError as exc:
            if exc.status == 404:  # no such instance: nothing to check
                raise
            try:
                now = await self.status(name)
            except IncusError:
                raise exc from None
            if now != goal:
                raise
            # Already there (or someone else got it there first): idempotent success.

    async def freeze(self, name: str, *, timeout: int = 30) -> None:
        """Freeze every process of the instance (cgroup freezer); already frozen = success."""
        body = {"action": "freeze", "timeout": timeout}
        await self._change_state(name, body, "Frozen", wait=timeout + 5)

    async def unfreeze(self, name: str, *, timeout: int = 30) -> None:
        """Thaw a frozen instance; already running = success (a stopped one is an error)."""
        body = {"action": "unfreeze", "timeout": timeout}
        await self._change_state(name, body, "Running", wait=timeout + 5)

    async def stop(self, name: str, *, force: bool = True, timeout: int = 30) -> None:
        """Stop the instance (``force``: kill at once, also when frozen); stopped = success."""
        body = {"action": "stop", "force": force, "timeout": timeout}
        await self._change_state(name, body, "Stopped", wait=timeout + 30)

    # -- snapshots -----------------------------------------------------------------------

    async def snapshot(self, name: str, snap: str, *, stateful: bool = False) -> None:
        """``POST /1.0/instances/NAME/snapshots``: take snapshot ``snap``."""
        body = {"name": snap, "stateful": stateful}
        await self._call("POST", f"/1.0/instances/{_q(name)}/snapshots", body, wait=300)

    async def delete_snapshot(self, name: str, snap: str) -> None:
        """``DELETE /1.0/instances/NAME/snapshots/SNAP``."""
        await self._call("DELETE", f"/1.0/instances/{_q(name)}/snapshots/{_q(snap)}", wait=300)

    async def list_snapshots(self, name: str) -> list[str]:
        """Snapshot names of the instance (``GET /1.0/instances/NAME/snapshots``)."""
        path = f"/1.0/instances/{_q(name)}/snapshots"
        urls = await self._call("GET", path)
        if not isinstance(urls, list):
            raise IncusError(f"GET {path}: not a list", operation=f"GET {path}")
        return [unquote(str(u).rstrip("/").rsplit("/", 1)[-1]) for u in urls]

    # -- events --------------------------------------------------------------------------

    async def subscribe(self, types: str = "lifecycle") -> EventStream:
        """Open ``GET /1.0/events?type=TYPES`` (a websocket); subscribed when this returns.

        Raises:
            IncusUnavailable: the daemon cannot be reached.
            IncusError: Incus refused the subscription.
        """
        what = f"GET /1.0/events?type={types}"
        try:
            ws = await self._session.ws_connect(
                f"{self._base}/1.0/events?type={quote(types, safe=',')}", autoping=True
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise IncusError(f"{what}: {exc.message}", status=exc.status, operation=what) from exc
        except aiohttp.ClientConnectionError as exc:
            raise self._unavailable(exc, what) from exc
        except aiohttp.ClientError as exc:
            raise IncusError(f"{what}: {exc}", operation=what) from exc
        return EventStream(ws, what)

    async def events(self, types: str = "lifecycle") -> AsyncIterator[dict[str, Any]]:
        """Yield decoded events until the stream drops (then :class:`IncusUnavailable`).

        The subscription starts with the first iteration; use :meth:`subscribe` to know when
        it is in place.
        """
        async with await self.subscribe(types) as stream:
            async for event in stream:
                yield event


class EventStream:
    """A live ``/1.0/events`` subscription: an async iterator of decoded event objects.

    Iteration ends quietly after :meth:`close`; if Incus closes the stream (daemon stopping
    or restarting) it raises :class:`IncusUnavailable` instead, so a watcher knows to
    reconnect.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, what: str) -> None:
        self._ws = ws
        self._what = what
        self._closing = False

    async def close(self) -> None:
        """Unsubscribe."""
        self._closing = True
        await self._ws.close()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while True:
            if self._closing:
                raise StopAsyncIteration
            msg = await self._ws.receive()
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                try:
                    event = orjson.loads(msg.data)
                except orjson.JSONDecodeError:
                    continue  # not an event; Incus only sends JSON objects
                if isinstance(event, dict):
                    return event
                continue
            if self._closing:
                raise StopAsyncIteration
            detail = f": {msg.data}" if msg.type == aiohttp.WSMsgType.ERROR else ""
            raise IncusUnavailable(
                f"Incus event stream closed ({msg.type.name.lower()}{detail})",
                operation=self._what,
            )


def _as_dict(obj: Any, path: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise IncusError(f"GET {path}: not an object", operation=f"GET {path}")
    return obj


async def with_retry(
    fn: Callable[[], Awaitable[T]],
    *,
    attempts: int = 5,
    base_delay: float = 0.1,
    max_delay: float = 2.0,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """Await ``fn()``, retrying only on :class:`IncusUnavailable` (incusd absent/restarting).

    Waits ``base_delay * 2**n`` (at most ``max_delay``) between attempts; the last failure is
    raised. Any other error is raised at once: Incus answered, so asking again will not help.
    Safe for state changes because they are idempotent.
    """
    for attempt in range(max(1, attempts)):
        try:
            return await fn()
        except IncusUnavailable:
            if attempt >= attempts - 1:
                raise
            await sleep(min(max_delay, base_delay * (2**attempt)))
    raise AssertionError("unreachable")  # pragma: no cover
