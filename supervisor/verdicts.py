"""Verdicts (what a detector concludes) and actions (what a responder did about it).

Strategy: a verdict is a value, like an event: frozen, slotted, JSON-native, with a ``kind``
so the audit log can hold it and replay can compare it. It names its detector (or rule id),
its severity, the evidence that explains it, MITRE ATT&CK technique ids and a ``dedup_key``
that says which verdicts are "the same threat again" for the response policy's dedup window.

Severity orders the response ladder (:mod:`coi_watch.policy`): info -> log, warning ->
alert, high -> pause, critical -> kill, unless the verdict itself asks for another action
(a rule's ``coi.action``) or runs in monitor mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import orjson

__all__ = ("Action", "ActionRecord", "Severity", "Verdict", "verdict_from_dict")



class Severity(StrEnum):
    """How bad a verdict is; compare with :attr:`rank`."""

    INFO = "info"
    WARNING = "warning"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 for info up to 3 for critical."""
        return _RANK[self]


_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.HIGH: 2, Severity.CRITICAL: 3}


class Action(StrEnum):
    """What the response policy can do about a verdict, mildest first."""

    LOG = "log"
    ALERT = "alert"
    QUARANTINE = "quarantine"
    PAUSE = "pause"
    KILL = "kill"
    RESUME = "resume"
    """Not on the ladder: ``coi-watch resume`` lifting a pause or quarantine."""
    SNAPSHOT = "snapshot"
    """Not on the ladder: the forensic snapshot taken between freeze and kill."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """A detector's conclusion about one container.

    ``evidence`` holds JSON-native values only (it is written to the audit log as is);
    ``action`` is empty to follow the ladder, or an :class:`Action` value to override it;
    ``mode`` is ``enforce`` or ``monitor`` (monitor never acts, only logs and alerts).
    """

    kind: Literal["verdict"] = "verdict"
    ts_ns: int
    wall_ns: int
    container: str
    detector: str
    title: str
    severity: Severity
    evidence: dict[str, Any] = field(default_factory=dict)
    mitre: tuple[str, ...] = ()
    dedup_key: str = ""
    event_kind: str = ""
    pid: int = 0
    action: str = ""
    mode: str = "enforce"

    def to_json(self) -> bytes:
        """JSON bytes (orjson)."""
        return orjson.dumps(self)


def verdict_from_dict(obj: dict[str, Any]) -> Verdict:
    """Rebuild a :class:`Verdict` from its JSON object.

    Raises:
        ValueError: a field is missing, unknown, or of the wrong kind.
    """
    data = dict(obj)
    if data.pop("kind", "verdict") != "verdict":
        raise ValueError("not a verdict")
    try:
        data["severity"] = Severity(data["severity"])
        data["mitre"] = tuple(data.get("mitre", ()))
        return Verdict(**data)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"bad verdict: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionRecord:
    """What a responder did: written to the audit log (durably) before it is reported.

    ``status`` is ``done``, ``failed``, ``skipped`` (monitor mode, or nothing to do) or
    ``deduplicated``; ``error`` carries Incus's own error text on failure; ``latency_ms``
    is measured from the triggering event's ``ts_ns`` to the end of the action.
    """

    kind: Literal["action"] = "action"
    ts_ns: int
    wall_ns: int
    container: str
    action: Action
    status: str
    detector: str = ""
    dedup_key: str = ""
    detail: str = ""
    error: str = ""
    latency_ms: float = 0.0
