"""The three plugin contracts: sources, detectors and responders.

Strategy: plugins are plain classes that satisfy these ``typing.Protocol``s (checked by mypy,
no base class to inherit) and are registered under the entry-point groups
``coi_watch.sources``, ``coi_watch.detectors`` and ``coi_watch.responders``
(:mod:`coi_watch.registry`). Each is constructed with its own config mapping.

- A **source** is the only async plugin: it reads a kernel interface and calls
  ``ctx.publish(event)`` (never blocking; the bus counts what it must drop). A source that
  works per container (nftables rules on its veth, conntrack in its netns, fanotify marks on
  its mounts) also has the :class:`ContainerAware` hooks: ``attach(info)`` when a container
  is watched (before or after ``run`` started) and ``release(name)`` when it stops.
- A **detector** is a synchronous state machine. ``feed(event, now_ns)`` is called by the one
  shared runner with the time injected, for the event kinds in ``consumes`` only, and returns
  the verdicts it reached (usually none). It never sleeps, never reads a clock, never does I/O:
  so an audit log replayed through it gives the same verdicts as live. It keys its state by
  ``event.container`` (one instance serves every container, and the log is per container).
  A detector may have ``active``: false when its configuration switches it off, and is then
  not fed at all.
- A **responder** carries out one :class:`~coi_watch.verdicts.Action` on a container and
  reports an :class:`~coi_watch.verdicts.ActionRecord`; it must be idempotent (pausing a
  paused container is a success).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from coi_watch.containers import ContainerInfo
from coi_watch.events import Event
from coi_watch.verdicts import Action, ActionRecord, Verdict

__all__ = ("ContainerAware", "Detector", "Responder", "Source", "SourceContext")


@dataclass(slots=True)
class SourceContext:
    """What a running source may use.

    ``publish`` hands an event to the bus (non-blocking); ``watched`` tells whether a
    container is supervised (sources drop the rest before enrichment, to save work);
    ``system`` writes an audit ``system`` record (``container`` may be ``""``);
    ``count_drop`` reports events the source itself lost (ENOBUFS, sequence gaps).
    """

    publish: Callable[[Event], None]
    watched: Callable[[str], bool]
    system: Callable[[str, str, Mapping[str, Any]], None]
    count_drop: Callable[[str, str, str, int], None]
    config: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Source(Protocol):
    """An async reader of one kernel interface."""

    name: ClassVar[str]

    async def run(self, ctx: SourceContext, ready: asyncio.Future[None]) -> None:
        """Read until cancelled; set ``ready`` once subscribed (socket bound, marks set).

        Raises:
            SourceError: the source cannot start (missing privilege or kernel feature).
        """
        ...


@runtime_checkable
class ContainerAware(Protocol):
    """Optional hooks of a per-container source."""

    async def attach(self, info: ContainerInfo) -> None:
        """Start watching ``info.name`` (rules, sockets, marks). Idempotent; must not raise
        for a container that vanished meanwhile (report it with ``ctx.system`` instead)."""
        ...

    async def release(self, name: str) -> None:
        """Stop watching ``name`` and free everything kept for it. Idempotent."""
        ...


@runtime_checkable
class Detector(Protocol):
    """A synchronous state machine over events."""

    name: ClassVar[str]
    consumes: ClassVar[frozenset[str]]

    def feed(self, ev: Event, now_ns: int) -> Iterable[Verdict]:
        """Take one event at time ``now_ns`` (monotonic) and return any verdicts."""
        ...


@runtime_checkable
class Responder(Protocol):
    """Carries out one action on a container."""

    name: ClassVar[str]
    action: ClassVar[Action]

    async def respond(self, verdict: Verdict) -> ActionRecord:
        """Act on ``verdict.container``; return what was done (``status`` ``failed`` with
        ``error`` on failure rather than raising)."""
        ...
