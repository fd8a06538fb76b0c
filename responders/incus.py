"""Containment responders: freeze (pause) and forced stop (kill) through the Incus API.

Strategy: contain first. :class:`PauseResponder` freezes the container's cgroup
(``PUT /1.0/instances/NAME/state {"action": "freeze"}``: 6-8 ms measured when idle; on a busy
container the kernel freezes in 8-25 ms but liblxc's 1 s poll can delay Incus's answer to
~1.01 s, see :mod:`coi_watch.incus`), which stops every process at once while keeping memory
and files for a human to inspect; :class:`KillResponder` force-stops it
(``{"action": "stop", "force": true}``, ~600 ms). The
policy freezes before it kills; a forced stop works on a frozen container (verified on Incus
6.0.4), so kill needs no unfreeze. Both are idempotent because the client is (a frozen
container freezes "successfully", a stopped one stops), and both retry with backoff while
incusd is absent or restarting (:func:`~coi_watch.incus.with_retry`), unlike the Go
original, whose ``incus pause`` shell-out failed once and was never retried.

Failures never raise: they come back as an :class:`~coi_watch.verdicts.ActionRecord` with
status ``failed`` and Incus's own error text, so the policy can audit and escalate.
``latency_ms`` runs from the verdict's ``ts_ns`` (CLOCK_MONOTONIC) to the end of the action.

The transport is a parameter (``client=``); when a responder is built from the entry-point
registry with only its config, it opens its own client on ``config["socket"]`` at first use.
:func:`resume` (for ``coi-watch resume``) thaws a frozen container.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from coi_watch import cgroup
from coi_watch.errors import IncusError, IncusUnavailable
from coi_watch.incus import DEFAULT_SOCKET, IncusClient, with_retry
from coi_watch.verdicts import Action, ActionRecord, Verdict

__all__ = ("KillResponder", "PauseResponder", "resume")

Clock = Callable[[], int]


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


class _IncusResponder:
    """Shared plumbing: lazy client, retry, timing, and the record."""

    name: ClassVar[str]
    action: ClassVar[Action]
    verb: ClassVar[str]

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        client: IncusClient | None = None,
        clock: Clock = time.monotonic_ns,
    ) -> None:
        cfg = dict(config or {})
        self._socket = str(cfg.get("socket", DEFAULT_SOCKET))
        self._attempts = int(cfg.get("retry_attempts", 5))
        self._client = client
        self._owns_client = False
        self._clock = clock

    def _get_client(self) -> IncusClient:
        if self._client is None:
            # IncusUnavailable here (no socket yet) is retried like any other.
            self._client = IncusClient.connect(self._socket)
            self._owns_client = True
        return self._client

    async def aclose(self) -> None:
        """Close the client this responder opened itself (an injected one is left alone)."""
        if self._owns_client and self._client is not None:
            await self._client.close()
            self._client = None
            self._owns_client = False

    async def _act(self, client: IncusClient, name: str) -> str:
        """Carry out the action; return ``skipped`` or ``done``."""
        raise NotImplementedError

    async def _contain(self, name: str) -> int | None:
        """Containment that can run before Incus answers; returns when it took hold (a
        monotonic stamp), or None when there is none for this action."""
        return None

    async def respond(self, verdict: Verdict) -> ActionRecord:
        """Act on ``verdict.container``; never raises (failure = status ``failed``)."""
        start = self._clock()
        status, error = "done", ""
        contained = await self._contain(verdict.container)
        try:
            status = await with_retry(
                lambda: self._act(self._get_client(), verdict.container),
                attempts=self._attempts,
            )
        except IncusError as exc:
            status, error = "failed", str(exc) or type(exc).__name__
        except Exception as exc:  # a bug of ours must still reach the audit log as a failure
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        end = self._clock()
        took = _ms(end - start)
        origin = verdict.ts_ns if 0 < verdict.ts_ns <= end else start
        if status == "done":
            detail = f"{self.verb} in {took:.1f} ms"
            if contained is not None:
                detail = (f"kernel froze it in {_ms(contained - start):.1f} ms; "
                          f"Incus confirmed in {took:.1f} ms")
        elif status == "skipped":
            detail = f"instance is not running: nothing to {self.name} ({took:.1f} ms)"
        else:
            detail = f"{self.name} failed after {took:.1f} ms"
        return ActionRecord(
            ts_ns=end,
            wall_ns=time.time_ns(),
            container=verdict.container,
            action=self.action,
            status=status,
            detector=verdict.detector,
            dedup_key=verdict.dedup_key,
            detail=detail,
            error=error,
            # The time that counts is event -> contained: the kernel's freeze where we saw it.
            latency_ms=_ms((contained if contained is not None else end) - origin),
        )


class PauseResponder(_IncusResponder):
    """Freeze the container (all its processes stop; state is kept for inspection)."""

    name: ClassVar[str] = "pause"
    action: ClassVar[Action] = Action.PAUSE
    verb: ClassVar[str] = "frozen"

    async def _contain(self, name: str) -> int | None:
        """Freeze the cgroup ourselves and wait (bounded, 250 ms) for the kernel to confirm;
        see :mod:`coi_watch.cgroup` for why Incus alone can take a second."""
        try:
            if not cgroup.freeze(name):
                return None
        except ValueError:
            return None
        for _ in range(250):
            if cgroup.frozen(name):
                return self._clock()
            await asyncio.sleep(0.001)
        return None

    async def _act(self, client: IncusClient, name: str) -> str:
        try:
            await client.freeze(name)
        except IncusUnavailable:
            raise  # with_retry's business
        except IncusError as exc:
            if exc.status == 404:
                raise
            # A stopped container cannot be frozen, and need not be: it is contained.
            if await client.status(name) == "Stopped":
                return "skipped"
            raise
        return "done"


class KillResponder(_IncusResponder):
    """Force-stop the container (works when it is frozen; a stopped one is a success)."""

    name: ClassVar[str] = "kill"
    action: ClassVar[Action] = Action.KILL
    verb: ClassVar[str] = "stopped"

    async def _act(self, client: IncusClient, name: str) -> str:
        await client.stop(name, force=True)
        return "done"


async def resume(
    client: IncusClient, name: str, *, clock: Clock = time.monotonic_ns, attempts: int = 5
) -> ActionRecord:
    """Thaw a frozen container for ``coi-watch resume``; ``done`` if it ends up Running.

    A stopped (killed) container is *not* restarted: that is a ``failed`` record saying so.
    The record's ``action`` is :attr:`Action.RESUME`.
    """
    start = clock()
    status, error, detail = "done", "", ""
    try:
        await with_retry(lambda: client.unfreeze(name), attempts=attempts)
    except IncusError as exc:
        status, error = "failed", str(exc) or type(exc).__name__
        if exc.status != 404:
            try:
                now = await client.status(name)
            except IncusError:
                now = ""
            if now == "Stopped":
                error = f"{error} (the instance is Stopped; resume does not restart it)"
    end = clock()
    took = _ms(end - start)
    detail = f"resumed: unfrozen in {took:.1f} ms" if status == "done" else "resume failed"
    return ActionRecord(
        ts_ns=end,
        wall_ns=time.time_ns(),
        container=name,
        action=Action.RESUME,
        status=status,
        detector="resume",
        detail=detail,
        error=error,
        latency_ms=took,
    )
