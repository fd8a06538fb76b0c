"""The supervisor: sources -> bus -> runner (detectors) -> policy (responders) -> audit.

Strategy: one :class:`asyncio.TaskGroup` holds every long-lived task (each source, the
runner, the audit flusher, the drop reporter and the Incus lifecycle follower), so a crash
of any of them cancels the rest and surfaces, instead of leaving a half-blind supervisor
running. Detector errors are the exception: the runner isolates them (audited, detector
restarted).

Which containers are watched: the names given, or, with none, every running instance whose
name matches the pattern (default ``coi-*``). While following Incus lifecycle events
(``GET /1.0/events?type=lifecycle``), instances that start and match are supervised at once,
and instances that stop or are deleted are released (their audit file closed and their
policy state dropped). Sources ask :meth:`Supervisor.watched` before enriching an event,
so nothing of other containers (or the host) is read or written.

Shutdown (SIGINT/SIGTERM): sources are cancelled first, the bus is closed and drained
through the detectors, in-flight responses finish, lost-event counters are written, and
the audit log is flushed and fsynced.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import functools
import inspect
import os
import signal
import time
import traceback
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coi_watch import registry
from coi_watch.audit import AuditLog, Redactor
from coi_watch.bus import Bus
from coi_watch.config import Config
from coi_watch.containers import info_from_state
from coi_watch.control import ControlServer
from coi_watch.errors import (
    CoiWatchError,
    ConfigError,
    IncusError,
    SourceError,
)
from coi_watch.events import Event, ProcExec, wall_from_mono
from coi_watch.incus import IncusClient
from coi_watch.locks import ContainerLock, LockHeld
from coi_watch.policy import ResponsePolicy
from coi_watch.protocols import ContainerAware, Responder, Source, SourceContext
from coi_watch.responders.incus import resume as incus_resume
from coi_watch.responders.quarantine import QuarantineResponder
from coi_watch.responders.webhook import WebhookAlerter
from coi_watch.rules.engine import RuleEngine
from coi_watch.runner import Runner
from coi_watch.sigma import SigmaHandle
from coi_watch.sources.netdev import NetdevEvent, NetdevWatcher
from coi_watch.sources.procfs import ARGV_CAP
from coi_watch.verdicts import Action, ActionRecord, Severity, Verdict

__all__ = ("Supervisor", "SupervisorOptions")


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf exception of a (nested) exception group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc

Printer = Callable[[Verdict | ActionRecord | str], None]


@dataclass(slots=True)
class SupervisorOptions:
    """What ``coi-watch watch`` asked for, beyond the config file."""

    names: tuple[str, ...] = ()
    monitor_only: bool = False
    follow: bool = True
    exit_when_released: bool = False
    """``coi-watch attach``: stop once the named containers have all stopped."""


class Supervisor:
    """Runs the whole pipeline for a set of containers until stopped."""

    def __init__(
        self,
        config: Config,
        options: SupervisorOptions,
        *,
        client: IncusClient,
        audit: AuditLog | None = None,
        printer: Printer | None = None,
    ) -> None:
        self.config = config
        self.options = options
        self.client = client
        self.audit = audit or AuditLog(
            config.audit_dir,
            redactor=Redactor.default().extended(config.get("audit.redact_patterns", [])),
            fsync=config.get("audit.fsync", True),
        )
        self.print = printer or (lambda _x: None)
        self.bus = Bus(config.get("watch.queue_size"))
        self._watched: set[str] = set()
        self._pattern: str = config.get("watch.pattern")
        self._stop = asyncio.Event()
        self._audit_events = config.get("audit.events") == "all"
        self.monitor_only: bool = options.monitor_only or config.get("response.monitor_only")
        self.sigma: SigmaHandle | None = None
        url = config.get("response.webhook", "")
        self.webhook = WebhookAlerter(url, min_severity=Severity(
            config.get("response.webhook_min_severity", "warning")),
            on_error=lambda m: self._system("", "alert_failed", {"error": m})) if url else None
        self.runner = Runner(self._detector_factories(), on_error=self._detector_error,
                             warn=lambda m: self.print(m))
        if self.sigma is not None:
            self.sigma.bind(self._live_sigma)
        self.responders = self._responders()
        self.policy = ResponsePolicy(
            self.responders,
            self.audit,
            ladder=config.ladder,
            dedup_window_s=config.get("response.dedup_window_s"),
            monitor_only=self.monitor_only,
            detector_modes={n: config.detector(n).get("mode", "enforce")
                            for n in self.runner.detectors},
            status_of=self.client.status,
            quarantined=self._is_quarantined,
            snapshot_before_kill=config.get("response.snapshot_before_kill", False),
            alerts=[self.webhook] if self.webhook else [],
            alert_min=Severity(config.get("response.webhook_min_severity", "warning")),
            report=self.print,
        )
        self.ready = asyncio.Event()
        self._run_dir = Path(os.path.expanduser(config.get("watch.run_dir", "~/.coi/run")))
        self._locks: dict[str, ContainerLock] = {}
        self._veths: dict[str, str] = {}  # host-side veth -> watched container
        self._refused: list[LockHeld] = []
        self._pending: set[asyncio.Future[None]] = set()
        self._sources: list[Source] = [
            registry.load("coi_watch.sources", n)(config.get(f"sources.{n}", {}) or {})
            for n in config.get("watch.sources")]

    # ------------------------------------------------------------------ plugins

    def _detector_factories(self) -> dict[str, Callable[[], Any]]:
        enabled: list[str] = self.config.get("detectors.enabled") or None  # type: ignore[assignment]
        classes = registry.load_all("coi_watch.detectors", enabled)
        factories: dict[str, Callable[[], Any]] = {}
        for name, cls in classes.items():
            cfg = self.config.detector(name)
            if name == "sigma":
                cfg.setdefault("rules", self.config.get("rules.paths", []))
                cfg.setdefault("packs", self.config.get("rules.packs", True))
                try:
                    self.sigma = SigmaHandle(cfg, system=self._system, say=self.print)
                except CoiWatchError as exc:
                    raise ConfigError(f"Sigma rules: {exc}") from exc
                factories[name] = self.sigma.factory
                continue
            try:
                cls(cfg)  # build once now, so a bad detector config fails at start
            except Exception as exc:
                raise ConfigError(f"detector {name}: {exc}") from exc
            factories[name] = functools.partial(cls, cfg)
        return factories

    def _responders(self) -> dict[Action, Responder]:
        out: dict[Action, Responder] = {}
        cfg = {"socket": self.config.get("watch.incus_socket"),
               **{k: self.config.get(f"response.{k}") for k in (
                   "snapshot_retention", "quarantine_permitted", "quarantine_resolvers")}}
        for cls in registry.load_all("coi_watch.responders").values():
            # Responders that talk to Incus share the supervisor's client (one pool).
            shared = "client" in inspect.signature(cls).parameters
            responder = cls(cfg, client=self.client) if shared else cls(cfg)
            out[Action(cls.action)] = responder
        return out

    def _is_quarantined(self, name: str) -> bool:
        q = self.responders.get(Action.QUARANTINE)
        return isinstance(q, QuarantineResponder) and q.quarantined(name)

    async def resume(self, name: str) -> ActionRecord:
        """Lift a pause and a quarantine of ``name`` (``coi-watch resume`` through the
        control endpoint), and audit it."""
        rec = await incus_resume(self.client, name)
        q = self.responders.get(Action.QUARANTINE)
        if isinstance(q, QuarantineResponder):
            try:
                if await q.lift(name):
                    rec = dataclasses.replace(rec, detail=rec.detail + "; quarantine lifted")
            except CoiWatchError as exc:
                rec = dataclasses.replace(rec, status="failed",
                                          error=f"{rec.error}; quarantine: {exc}".strip("; "))
        self.audit.action(rec)
        await self.audit.sync(name)
        self.print(rec)
        return rec

    def stats(self) -> dict[str, Any]:
        """Counters for ``GET /stats``: events, verdicts, drops, actions, containers."""
        return {
            "pid": os.getpid(),
            "containers": sorted(self._watched),
            "sources": [type(s).name for s in self._sources],
            "detectors": list(self.runner.detectors),
            "events": self.runner.stats.events,
            "verdicts": self.runner.stats.verdicts,
            "detector_restarts": self.runner.stats.restarts,
            "bus": {"published": self.bus.stats.published, "delivered": self.bus.stats.delivered,
                    "high_water": self.bus.stats.high_water, "queued": len(self.bus)},
            "dropped": [{"container": c, "source": s, "kind": k, "count": n}
                        for (c, s, k), n in sorted(self.bus.stats.dropped.items())],
            "policy": {"verdicts": self.policy.stats.verdicts,
                       "duplicates": self.policy.stats.duplicates,
                       "actions": self.policy.stats.actions,
                       "failures": self.policy.stats.failures},
            "audit": {"records": self.audit.stats.records,
                      "write_errors": self.audit.stats.write_errors},
        }

    def _live_sigma(self) -> RuleEngine | None:
        live = self.runner.detector("sigma")
        return live if isinstance(live, RuleEngine) else None

    # ------------------------------------------------------------------ scope

    def watched(self, container: str) -> bool:
        """True for a container this supervisor watches."""
        return container in self._watched

    @property
    def containers(self) -> frozenset[str]:
        """The containers watched right now."""
        return frozenset(self._watched)

    def _matches(self, name: str) -> bool:
        if self.options.names:
            return name in self.options.names
        return fnmatch.fnmatchcase(name, self._pattern)

    async def _discover(self) -> None:
        instances = await self.client.list_instances()
        running = {i["name"] for i in instances if i.get("status") == "Running"}
        if self.options.names:
            missing = [n for n in self.options.names if n not in running]
            if missing and not self.options.follow:
                raise ConfigError("not running: " + ", ".join(missing))
            for n in missing:
                self.print(f"waiting for {n} to start")
        for name in sorted(running):
            if self._matches(name):
                self._attach(name)

    def _attach(self, name: str) -> None:
        if name in self._watched:
            return
        lock = ContainerLock(self._run_dir, name)
        try:
            lock.acquire()
        except LockHeld as exc:
            self.audit.system("", "not_attached", {"container": name, "reason": str(exc)})
            self.print(f"not watching {name}: {exc}")
            if self.options.names:
                self._refused.append(exc)
            return
        self._locks[name] = lock
        # Watched at once (the proc source needs nothing more); per-container sources get
        # the container's facts as soon as Incus has answered.
        self._watched.add(name)
        self.audit.system(name, "attached", {"pattern": self._pattern,
                                             "detectors": list(self.runner.detectors)})
        self.print(f"watching {name}")
        self._background(self._attach_sources(name))

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _attach_sources(self, name: str) -> None:
        try:
            info = info_from_state(name, await self.client.state(name))
        except IncusError as exc:
            self.audit.system(name, "attach_failed", {"error": str(exc)})
            self.print(f"cannot read the state of {name}: {exc}")
            return
        armed = []
        for src in self._sources:
            if isinstance(src, ContainerAware) and name in self._watched:
                try:
                    await src.attach(info)
                    armed.append(type(src).name)
                except Exception as exc:  # one source's trouble must not unwatch the rest
                    self.audit.system(name, "source_attach_failed",
                                      {"source": type(src).name, "error": str(exc)})
                    self.print(f"source {type(src).name} cannot watch {name}: {exc}")
        for veth in [v for v, c in self._veths.items() if c == name]:
            del self._veths[veth]
        self._veths.update(dict.fromkeys(info.host_veths, name))
        self.audit.system(name, "sources_attached", {"sources": armed,
                                                     "veths": list(info.host_veths)})
        self.print(f"sources attached to {name}: {', '.join(armed) or 'none'}")

    def _detach(self, name: str, why: str) -> None:
        if name not in self._watched:
            return
        self._watched.discard(name)
        lock = self._locks.pop(name, None)
        if lock is not None:
            lock.release()
        self.audit.system(name, "released", {"reason": why})
        self.audit.release(name)
        self.policy.forget(name)
        self.runner.forget(name)
        for src in self._sources:
            if isinstance(src, ContainerAware):
                self._background(src.release(name))
        self.print(f"released {name} ({why})")
        if self.options.exit_when_released and not self._watched:
            self.stop()

    # ------------------------------------------------------------------ hooks

    def _on_event(self, ev: Event) -> None:
        if self._audit_events:
            self.audit.event(ev)

    def _detector_error(self, name: str, exc: BaseException, ev: Event) -> None:
        tb = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        self.audit.system(ev.container, "detector_error",
                          {"detector": name, "error": tb, "event_kind": ev.kind})
        self.print(f"detector {name} failed on {ev.kind} and was restarted: {tb}")

    def _system(self, container: str, what: str, detail: Mapping[str, Any]) -> None:
        self.audit.system(container, what, dict(detail))

    def stop(self) -> None:
        """Ask the supervisor to shut down (what SIGINT/SIGTERM do)."""
        self._stop.set()

    # ------------------------------------------------------------------ tasks

    async def _report_drops(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._flush_drops()

    def _flush_drops(self) -> None:
        for (container, source, kind), n in self.bus.take_drops().items():
            self.audit.system(container, "events_dropped",
                              {"source": source, "kind": kind, "count": n,
                               "total": self.bus.stats.dropped_total})
            self.print(f"LOST {n} {kind} event(s) from {source}"
                       + (f" for {container}" if container else ""))

    async def _follow(self) -> None:
        """Follow Incus lifecycle events for as long as the supervisor runs.

        Whenever the stream is lost (incusd stopped, restarting, or closed it) that is said
        at once, on the terminal and in the audit log, and the supervisor keeps watching
        what it watches while it reconnects with backoff (0.2 s doubling to 5 s); once
        Incus answers again, running containers are discovered afresh, so one that started
        meanwhile is not missed.
        """
        delay = 0.2
        while True:
            reason = "the event stream ended"
            try:
                async for event in self.client.events("lifecycle"):
                    if delay > 0.2:
                        self.audit.system("", "incus_available", {})
                        self.print("Incus reachable again")
                    delay = 0.2
                    self._lifecycle(event)
            except IncusError as exc:
                reason = str(exc)
            self.audit.system("", "incus_unavailable", {"error": reason, "retry_s": delay})
            self.print(f"Incus unavailable ({reason}); retrying in {delay:.1f}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            with contextlib.suppress(IncusError):  # still away: said again next round
                await self._discover()

    def _lifecycle(self, event: Mapping[str, Any]) -> None:
        meta = event.get("metadata", {})
        action = meta.get("action", "")
        source = meta.get("source", "")
        name = source.rsplit("/", 1)[-1].split("?", 1)[0] if source else ""
        if not name:
            return
        if action in ("instance-started", "instance-resumed") and self._matches(name):
            self._attach(name)
        elif action == "instance-restarted" and name in self._watched:
            # A restart sends neither stopped nor started: the container has a new init pid
            # and new mounts, so per-container sources attach again (attach is idempotent).
            self.audit.system(name, "restarted", {})
            self._background(self._attach_sources(name))
        elif action == "instance-restarted" and self._matches(name):
            self._attach(name)
        elif action in ("instance-stopped", "instance-deleted", "instance-shutdown"):
            self._detach(name, action)
        elif action == "instance-exec" and name in self._watched:
            self._incus_exec(name, meta.get("context") or {})

    def _on_netdev(self, ev: NetdevEvent) -> None:
        """A host veth came or went (kernel uevent): a NIC was hot-plugged into a watched
        container, or removed from it. Its per-container sources attach again from fresh
        state (attach is idempotent), so the new NIC is watched within milliseconds."""
        if ev.action == "remove":
            name = self._veths.pop(ev.name, "")
            if name in self._watched:
                self._background(self._attach_sources(name))
        elif ev.action == "add":
            self._background(self._adopt_veth(ev.name))

    async def _adopt_veth(self, veth: str) -> None:
        # Incus creates the pair, moves the peer into the container and only then reports
        # the host end in the instance state: look a few times, briefly, then give up (the
        # veth is another container's, or the host's own).
        for delay in (0.05, 0.2, 0.5):
            await asyncio.sleep(delay)
            for name in sorted(self._watched):
                if veth in self._veths:
                    return
                try:
                    state = await self.client.state(name)
                except IncusError:
                    continue
                if veth in info_from_state(name, state).host_veths:
                    await self._attach_sources(name)
                    return

    def _incus_exec(self, name: str, context: Mapping[str, Any]) -> None:
        """``incus exec`` into a watched container, from Incus's own record of the command.

        The proc source reads a process's argv from /proc after the kernel's exec event, and
        a command that lives under a millisecond (``incus exec c -- env``) can be gone by
        then. Incus's ``instance-exec`` lifecycle event carries the full command line, so it
        is published as a ``proc.exec`` too (pid 0: Incus does not say which process). Only
        commands started with ``incus exec`` get this; processes the container spawns
        itself depend on the proc source alone.
        """
        command = context.get("command")
        if not isinstance(command, list) or not command:
            return
        argv: list[str] = []
        total = 0
        for arg in map(str, command):
            total += len(arg) + 1
            if total > ARGV_CAP:
                break
            argv.append(arg)
        now = time.monotonic_ns()
        self._publish(ProcExec(
            ts_ns=now, wall_ns=wall_from_mono(now), container=name, pid=0,
            comm=argv[0].rsplit("/", 1)[-1][:15] if argv else "", argv=tuple(argv),
            argv_truncated=len(argv) < len(command)), "incus")

    async def _run_source(self, source: Source, ready: asyncio.Future[None]) -> None:
        name = type(source).name
        ctx = SourceContext(
            publish=functools.partial(self._publish, source=name),
            watched=self.watched,
            system=self._system,
            count_drop=self.bus.count_drop,
            config=self.config.get(f"sources.{name}", {}) or {},
        )
        await source.run(ctx, ready)

    def _publish(self, ev: Event, source: str) -> None:
        self.bus.publish(ev, source)

    async def run(self) -> None:
        """Supervise until :meth:`stop` (or SIGINT/SIGTERM).

        Raises:
            AuditError: the audit directory cannot be written.
            IncusError: Incus cannot be reached at start.
            SourceError: a source cannot start.
        """
        self.audit.check()
        loop = asyncio.get_running_loop()
        control = ControlServer(self._run_dir, resume=self.resume, stats=self.stats)
        await control.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Not possible outside the main thread (some tests); stop() still works there.
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        sources = self._sources
        started = time.monotonic()
        try:
            await self._run_tasks(loop, sources, started)
        except BaseExceptionGroup as group:
            # A task's error (a source that cannot start, a refused lock) surfaces as itself,
            # so the CLI can print its one clear line.
            raise _first_error(group) from None
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            self._flush_drops()
            for lock in self._locks.values():
                lock.release()
            self._locks.clear()
            self.audit.system("", "stopped", {"events": self.runner.stats.events,
                                              "verdicts": self.runner.stats.verdicts,
                                              "dropped": self.bus.stats.dropped_total})
            await control.close()
            for responder in self.responders.values():
                aclose = getattr(responder, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(CoiWatchError, OSError):
                        await aclose()
            if self.webhook is not None:
                await self.webhook.close()
            await self.audit.close()

    async def _run_tasks(self, loop: asyncio.AbstractEventLoop, sources: list[Source],
                         started: float) -> None:
        async with asyncio.TaskGroup() as tg:
            readies: list[asyncio.Future[None]] = []
            source_tasks = []
            for src in sources:
                fut: asyncio.Future[None] = loop.create_future()
                readies.append(fut)
                source_tasks.append(tg.create_task(self._run_source(src, fut),
                                                   name=f"source:{type(src).name}"))
            await self._wait_ready(readies, source_tasks)
            await self._discover()
            if self._refused and len(self._refused) == len(self.options.names):
                raise self._refused[0]
            runner = tg.create_task(
                self.runner.run(self.bus, self._on_event, self.policy.submit),
                name="runner")
            helpers = [tg.create_task(self.audit.run_flusher(), name="audit-flusher"),
                       tg.create_task(self._report_drops(), name="drop-reporter")]
            netdev = self._start_netdev(loop) if self.options.follow else None
            if self.options.follow:
                helpers.append(tg.create_task(self._follow(), name="lifecycle"))
            if self.sigma is not None and self.config.get("rules.reload", True):
                helpers.append(tg.create_task(self.sigma.reloader().run(), name="rule-reload"))
            self.audit.system("", "started", {
                "containers": sorted(self._watched), "pattern": self._pattern,
                "sources": [type(s).name for s in sources],
                "detectors": list(self.runner.detectors),
                "monitor_only": self.monitor_only,
                "startup_ms": round((time.monotonic() - started) * 1000, 1)})
            self.ready.set()
            self.print("ready: watching " + (", ".join(sorted(self._watched)) or "nothing yet"))
            await self._stop.wait()
            # Shutdown, in order: no new events, drain what is queued, finish responses.
            for t in source_tasks:
                t.cancel()
            self.bus.close()
            await runner
            await self.policy.drain()
            if self._pending:
                await asyncio.gather(*self._pending, return_exceptions=True)
            for t in helpers:
                t.cancel()
            if netdev is not None:
                netdev.close()

    def _start_netdev(self, loop: asyncio.AbstractEventLoop) -> NetdevWatcher | None:
        """Kernel net-device events (pyudev, kernel source); without them NIC hot-plug is
        only seen at the next lifecycle event, and that is said in the audit log."""
        try:
            watcher = NetdevWatcher(self._on_netdev)
            watcher.start(loop)
        except Exception as exc:  # pyudev or netlink refused: degraded, not fatal
            self.audit.system("", "source_degraded", {"source": "netdev", "error": str(exc)})
            self.print(f"net-device events unavailable: {exc}")
            return None
        return watcher

    async def _wait_ready(self, readies: list[asyncio.Future[None]],
                          tasks: list[asyncio.Task[None]]) -> None:
        """Wait until every source is subscribed; a source that dies first raises."""
        pending: set[asyncio.Future[Any]] = set(readies) | set(tasks)
        while not all(f.done() for f in readies):
            done, pending = await asyncio.wait(pending, timeout=10,
                                               return_when=asyncio.FIRST_COMPLETED)
            if not done:
                raise SourceError("a source did not become ready within 10 s")
            for t in done:
                if t in tasks and t.done():
                    t.result()  # re-raises the source's error
                    raise SourceError(f"source task {t.get_name()} ended before it was ready")
