"""The response policy: from a verdict to an audited action, containment first.

Strategy: :meth:`ResponsePolicy.submit` is synchronous and cheap, called by the runner for
each verdict. It writes the verdict record (order fixed at once), decides the action, drops
duplicates, and starts the response as a task; responses to one container run one after
another (a kill never races a pause), responses to different containers run concurrently.

Decisions, in order:

1. **Action.** The verdict's own ``action`` (a rule's ``coi.action``) if set, otherwise the
   ladder for its severity (default info -> log, warning -> alert, high -> pause,
   critical -> kill; configurable).
2. **Mode.** ``--monitor-only`` or a verdict in ``monitor`` mode never acts: the action is
   audited as ``skipped`` ("would pause") and still alerted.
3. **Dedup.** A verdict with the same ``(container, dedup_key)`` within the window (default
   30 s) is counted as a duplicate and not acted on again, unless it asks for a stronger
   action than the one taken (a warning that escalates to high is paused at once). A pause
   or quarantine, though, is *re-armed*: if the duplicate arrives while Incus says the
   container runs again (somebody resumed it), or coi-watch's nftables table no longer
   holds its quarantine, the action is carried out again. The state comes from Incus and
   the kernel's table, not from a flag here.
4. **Containment first.** ``kill`` is carried out as pause (freeze: milliseconds), then,
   when ``snapshot_before_kill`` is on, a forensic snapshot of the frozen container, then
   kill (forced stop: about half a second), each audited; a container already killed by
   this supervisor is not acted on again.
5. **Alerts.** Every verdict that is not a duplicate and reaches ``alert_min`` is also handed
   to the alert sinks (a Falco-compatible webhook), without waiting for them.

Each action record is made durable (fsync) before the action is reported done.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from coi_watch.audit import AuditLog
from coi_watch.events import wall_from_mono
from coi_watch.protocols import Responder
from coi_watch.verdicts import Action, ActionRecord, Severity, Verdict

__all__ = ("DEFAULT_LADDER", "PolicyStats", "ResponsePolicy")

DEFAULT_LADDER: Mapping[Severity, Action] = {
    Severity.INFO: Action.LOG,
    Severity.WARNING: Action.ALERT,
    Severity.HIGH: Action.PAUSE,
    Severity.CRITICAL: Action.KILL,
}

# How strong each action is, for escalation within the dedup window.
_STRENGTH = {Action.LOG: 0, Action.ALERT: 1, Action.QUARANTINE: 2, Action.PAUSE: 3,
             Action.KILL: 4, Action.SNAPSHOT: 0, Action.RESUME: 0}

Report = Callable[[Verdict | ActionRecord], None]
AlertSink = Callable[[Verdict], Awaitable[None]]
StatusOf = Callable[[str], Awaitable[str]]


@dataclass(slots=True)
class PolicyStats:
    """Counters of the policy."""

    verdicts: int = 0
    duplicates: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    failures: int = 0


class ResponsePolicy:
    """Turns verdicts into actions; see the module docstring."""

    def __init__(
        self,
        responders: Mapping[Action, Responder],
        audit: AuditLog,
        *,
        ladder: Mapping[Severity, Action] = DEFAULT_LADDER,
        dedup_window_s: float = 30.0,
        monitor_only: bool = False,
        detector_modes: Mapping[str, str] | None = None,
        status_of: StatusOf | None = None,
        quarantined: Callable[[str], bool] | None = None,
        snapshot_before_kill: bool = False,
        alerts: Sequence[AlertSink] = (),
        alert_min: Severity = Severity.WARNING,
        report: Report | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._responders = dict(responders)
        self._audit = audit
        self._ladder = dict(ladder)
        self._window_ns = int(dedup_window_s * 1e9)
        self._monitor_only = monitor_only
        self._modes = dict(detector_modes or {})
        self._status_of = status_of
        self._quarantined = quarantined
        self._snapshot = snapshot_before_kill
        self._alerts = tuple(alerts)
        self._alert_min = alert_min
        self._report = report or (lambda _r: None)
        self._clock = clock
        self._seen: dict[tuple[str, str], tuple[int, Action]] = {}
        self._killed: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = PolicyStats()

    # ------------------------------------------------------------------ deciding

    def decide(self, v: Verdict) -> Action:
        """The action for ``v`` before mode and dedup (override, else the ladder)."""
        if v.action:
            try:
                return Action(v.action)
            except ValueError:
                print(f"coi-watch: verdict {v.detector} asks for unknown action "
                      f"{v.action!r}; following the ladder", file=sys.stderr)
        return self._ladder.get(v.severity, Action.ALERT)

    def monitoring(self, v: Verdict) -> bool:
        """True when ``v`` must not be acted on (global or per-detector monitor mode)."""
        mode = self._modes.get(v.detector.split(":", 1)[0], v.mode)
        return self._monitor_only or mode == "monitor" or v.mode == "monitor"

    def submit(self, v: Verdict) -> None:
        """Audit ``v`` and start its response (see the module docstring)."""
        self.stats.verdicts += 1
        self._audit.verdict(v)
        self._report(v)
        action = self.decide(v)
        key = (v.container, v.dedup_key or f"{v.detector}:{v.title}")
        now = self._clock()
        last = self._seen.get(key)
        if (last is not None and now - last[0] < self._window_ns
                and _STRENGTH[action] <= _STRENGTH[last[1]]):
            self.stats.duplicates += 1
            if last[1] is action and action in (Action.PAUSE, Action.QUARANTINE):
                self._spawn(self._rearm(v, action, key))
            return
        self._seen[key] = (now, action)
        if len(self._seen) > 4096:
            self._prune(now)
        self._spawn(self._respond(v, action))
        if v.severity.rank >= self._alert_min.rank:
            for sink in self._alerts:
                self._spawn(sink(v))

    def _prune(self, now: int) -> None:
        for k in [k for k, (t, _) in self._seen.items() if now - t >= self._window_ns]:
            del self._seen[k]

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _rearm(self, v: Verdict, action: Action, key: tuple[str, str]) -> None:
        if action is Action.QUARANTINE:
            lifted = self._quarantined is not None and not self._quarantined(v.container)
        else:
            if self._status_of is None:
                return
            try:
                status = await self._status_of(v.container)
            except Exception as exc:  # best effort; the verdict itself is audited
                print(f"coi-watch: cannot read state of {v.container}: {exc}", file=sys.stderr)
                return
            lifted = status == "Running"
        if lifted:
            self._seen[key] = (self._clock(), action)
            await self._respond(v, action)

    # ------------------------------------------------------------------ acting

    async def _respond(self, v: Verdict, action: Action) -> None:
        lock = self._locks.setdefault(v.container, asyncio.Lock())
        async with lock:
            if v.container in self._killed:
                return
            if action is Action.LOG:
                await self._record(v, action, "done", detail="logged")
                return
            if self.monitoring(v):
                if Action.ALERT in self._responders:
                    await self._responders[Action.ALERT].respond(v)
                await self._record(v, action, "skipped", detail=f"monitor mode: would {action}")
                return
            steps = [action]
            if action is Action.KILL:
                steps = [Action.PAUSE, Action.KILL]
                if self._snapshot:
                    steps.insert(1, Action.SNAPSHOT)
            for step in steps:
                ok = await self._run(v, step)
                if step is Action.KILL and ok:
                    self._killed.add(v.container)
                # A failed freeze or snapshot must not stop the kill: go on regardless.

    async def _run(self, v: Verdict, action: Action) -> bool:
        responder = self._responders.get(action)
        if responder is None:
            await self._record(v, action, "failed", error=f"no responder for {action}")
            return False
        try:
            rec = await responder.respond(v)
        except Exception as exc:  # a responder should not raise; if it does, audit it
            rec = self._make(v, action, "failed", error=f"{type(exc).__name__}: {exc}")
        self._audit.action(rec)
        await self._audit.sync(v.container)
        self._count(rec)
        self._report(rec)
        return rec.status == "done"

    async def _record(self, v: Verdict, action: Action, status: str, *, detail: str = "",
                      error: str = "") -> None:
        rec = self._make(v, action, status, detail=detail, error=error)
        self._audit.action(rec)
        await self._audit.sync(v.container)
        self._count(rec)
        self._report(rec)

    def _make(self, v: Verdict, action: Action, status: str, *, detail: str = "",
              error: str = "") -> ActionRecord:
        now = self._clock()
        return ActionRecord(
            ts_ns=now, wall_ns=wall_from_mono(now), container=v.container, action=action,
            status=status, detector=v.detector, dedup_key=v.dedup_key, detail=detail,
            error=error, latency_ms=round((now - v.ts_ns) / 1e6, 3) if v.ts_ns else 0.0,
        )

    def _count(self, rec: ActionRecord) -> None:
        name = f"{rec.action}:{rec.status}"
        self.stats.actions[name] = self.stats.actions.get(name, 0) + 1
        if rec.status == "failed":
            self.stats.failures += 1

    def forget(self, container: str) -> None:
        """Drop all state about ``container`` (it stopped or was deleted)."""
        self._killed.discard(container)
        self._locks.pop(container, None)
        for k in [k for k in self._seen if k[0] == container]:
            del self._seen[k]

    async def drain(self) -> None:
        """Wait for every response in flight (used at shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
