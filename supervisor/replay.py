"""Replay: feed the events of an audit log back through the detectors.

Strategy: the live runner feeds detectors ``(event, now_ns)`` with ``now_ns`` taken from the
events themselves, per container (:mod:`coi_watch.runner`), and the audit log holds every
event of a container in the order the runner saw it. Reading one file back through a fresh
:class:`~coi_watch.runner.Runner` therefore reproduces the live verdicts, and comparing them
with the verdict records in the same file shows whether anything differs: a changed rule or
detector, a tampered log, or events lost on the way (which the log itself records as
``events_dropped``). Forensics can also replay old logs through *new* rules to ask "would
this have been caught?".

Verdicts are compared on what identifies them: detector, severity, title, dedup key, pid
and event time, not on evidence text (the log's copy of an event is redacted).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from coi_watch.audit.read import iter_records
from coi_watch.errors import WireError
from coi_watch.events import Event, event_from_dict
from coi_watch.runner import DetectorFactory, Runner
from coi_watch.verdicts import Verdict, verdict_from_dict

__all__ = ("ReplayResult", "replay_file", "verdict_identity")

Identity = tuple[str, str, str, str, int, int]


def verdict_identity(v: Verdict) -> Identity:
    """What makes two verdicts "the same" for a replay comparison."""
    return (v.detector, v.severity.value, v.title, v.dedup_key, v.pid, v.ts_ns)


@dataclass(slots=True)
class ReplayResult:
    """The outcome of replaying one audit file."""

    path: str
    events: int = 0
    verdicts: list[Verdict] = field(default_factory=list)
    recorded: list[Verdict] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)
    detector_errors: list[str] = field(default_factory=list)
    dropped: int = 0

    @property
    def missing(self) -> list[Verdict]:
        """Recorded live but not reproduced."""
        have = {verdict_identity(v) for v in self.verdicts}
        return [v for v in self.recorded if verdict_identity(v) not in have]

    @property
    def extra(self) -> list[Verdict]:
        """Reproduced but not recorded live."""
        had = {verdict_identity(v) for v in self.recorded}
        return [v for v in self.verdicts if verdict_identity(v) not in had]

    @property
    def same(self) -> bool:
        """True when replay and the live run reached the same verdicts."""
        return not self.missing and not self.extra


def replay_file(
    path: str | os.PathLike[str],
    factories: Mapping[str, DetectorFactory],
    *,
    detectors: Iterable[str] | None = None,
) -> ReplayResult:
    """Replay one audit file through fresh detectors from ``factories``.

    Only verdicts of the detectors being replayed are compared (``detectors`` restricts
    both; ``sigma:`` rule verdicts belong to the ``sigma`` detector).

    Raises:
        AuditError: the file cannot be read.
    """
    wanted = set(detectors) if detectors is not None else set(factories)
    result = ReplayResult(path=os.fspath(path))
    runner = Runner({n: f for n, f in factories.items() if n in wanted},
                    on_error=lambda n, e, ev: result.detector_errors.append(f"{n}: {e}"))

    def bad(p: str, line: int, reason: str) -> None:
        result.bad_lines.append(f"{p}:{line}: {reason}")

    for rec in iter_records(path, on_bad_line=bad):
        if rec.kind == "event":
            try:
                ev: Event = event_from_dict(rec.data)
            except WireError as exc:
                bad(rec.path, rec.line, str(exc))
                continue
            result.events += 1
            result.verdicts.extend(runner.feed(ev))
        elif rec.kind == "verdict":
            try:
                v = verdict_from_dict(rec.data)
            except ValueError as exc:
                bad(rec.path, rec.line, str(exc))
                continue
            if v.detector.split(":", 1)[0] in wanted:
                result.recorded.append(v)
        elif rec.kind == "system" and rec.data.get("what") == "events_dropped":
            result.dropped += int(rec.data.get("count", 0))
    return result
