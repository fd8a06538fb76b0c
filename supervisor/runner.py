"""The one shared runner that feeds every detector.

Strategy: detectors are synchronous state machines; the runner owns the only async loop.
At start it indexes detectors once by the event kinds they consume (Falco's
``m_filter_by_event_type``), so an event is offered only to detectors that asked for its
kind. Time is injected: ``now_ns`` is the event's own monotonic stamp, held non-decreasing
per container (stamps from different sources can arrive a little out of order). Per
container, because the audit log is one file per container: feeding a file back through
:meth:`Runner.feed` (``coi-watch replay``) then reproduces exactly the ``now_ns`` sequence,
and so the verdicts, of the live run.

Isolation: a detector that raises is caught, reported through ``on_error`` (the supervisor
audits it), replaced by a fresh instance from its factory, and the other detectors go on
with the same event. A detector that consumes no kind at all goes into the all-events
bucket, and that is reported once at start (``NO_EVENT_KIND``). A detector whose
configuration switches it off (``active`` false: the allowlist outside allowlist mode,
resource limits left at 0) is not indexed, so it costs nothing per event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from coi_watch.bus import Bus
from coi_watch.events import EVENT_TYPES, Event
from coi_watch.protocols import Detector
from coi_watch.verdicts import Verdict

__all__ = ("DetectorFactory", "Runner", "RunnerStats")

DetectorFactory = Callable[[], Detector]
ErrorHook = Callable[[str, BaseException, Event], None]


@dataclass(slots=True)
class _Slot:
    name: str
    factory: DetectorFactory
    detector: Detector
    restarts: int = 0


@dataclass(slots=True)
class RunnerStats:
    """Counters of the runner (events fed, verdicts, detector restarts by name)."""

    events: int = 0
    verdicts: int = 0
    restarts: dict[str, int] | None = None


class Runner:
    """Feeds events to detectors indexed by kind; see the module docstring."""

    def __init__(
        self,
        factories: Mapping[str, DetectorFactory],
        *,
        on_error: ErrorHook | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self._slots = [_Slot(name, f, f()) for name, f in factories.items()]
        self._on_error = on_error
        self._now: dict[str, int] = {}
        self.stats = RunnerStats(restarts={})
        index: dict[str, list[_Slot]] = {kind: [] for kind in EVENT_TYPES}
        for slot in self._slots:
            if not getattr(slot.detector, "active", True):
                continue  # switched off by its configuration: not fed at all
            kinds = frozenset(slot.detector.consumes)
            if not kinds:
                if warn is not None:
                    warn(f"NO_EVENT_KIND: detector {slot.name} consumes no event kind; "
                         "it is offered every event")
                kinds = frozenset(EVENT_TYPES)
            for kind in kinds:
                index.setdefault(kind, []).append(slot)
        self._index: dict[str, tuple[_Slot, ...]] = {k: tuple(v) for k, v in index.items()}

    @property
    def detectors(self) -> tuple[str, ...]:
        """Names of the detectors, in feeding order."""
        return tuple(s.name for s in self._slots)

    def detector(self, name: str) -> Detector | None:
        """The live instance of detector ``name`` (it changes when it is restarted)."""
        return next((s.detector for s in self._slots if s.name == name), None)

    def feed(self, ev: Event) -> list[Verdict]:
        """Offer one event to the detectors that consume its kind; return their verdicts."""
        last = self._now.get(ev.container, 0)
        now = ev.ts_ns if ev.ts_ns > last else last
        self._now[ev.container] = now
        self.stats.events += 1
        out: list[Verdict] = []
        for slot in self._index.get(ev.kind, ()):
            try:
                found: Iterable[Verdict] = slot.detector.feed(ev, now)
                if found:
                    out.extend(found)
            except Exception as exc:  # isolation is the point
                self._restart(slot, exc, ev)
        self.stats.verdicts += len(out)
        return out

    def forget(self, container: str) -> None:
        """Drop the clock of a container that is gone (memory stays flat under churn)."""
        self._now.pop(container, None)

    def _restart(self, slot: _Slot, exc: BaseException, ev: Event) -> None:
        slot.restarts += 1
        assert self.stats.restarts is not None
        self.stats.restarts[slot.name] = slot.restarts
        if self._on_error is not None:
            self._on_error(slot.name, exc, ev)
        try:
            slot.detector = slot.factory()
        except Exception as again:  # keep the old instance rather than none
            if self._on_error is not None:
                self._on_error(slot.name, again, ev)

    async def run(
        self,
        bus: Bus,
        on_event: Callable[[Event], None],
        on_verdict: Callable[[Verdict], None],
        *,
        batch: int = 512,
    ) -> None:
        """Drain ``bus`` until it is closed and empty.

        ``on_event`` sees every event before the detectors do (the audit log, so an event
        record always precedes the verdict it caused); ``on_verdict`` gets each verdict.
        """
        feed = self.feed
        while events := await bus.get_batch(batch):
            for ev in events:
                on_event(ev)
                for verdict in feed(ev):
                    on_verdict(verdict)
            # Let sources and responders run between batches even under sustained load.
            await asyncio.sleep(0)
