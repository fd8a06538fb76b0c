"""The two mild responders: log (record only) and alert (record and tell a human).

Strategy: the response policy writes every verdict and every action record to the audit log
itself, so :class:`LogResponder` has nothing to do but say ``done``. :class:`AlertResponder`
prints one line to stderr (or the stream it is given)::

    coi-watch ALERT [coi-dev] high reverse_shell: shell with socket stdio (pid=4242 cmd=nc ...)

Everything in that line except our own words comes from inside the watched container (names,
command lines, paths), so control characters are escaped and the line is bounded: an agent
must not be able to clear the operator's terminal or forge a second line with an escape
sequence.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TextIO

import orjson

from coi_watch.verdicts import Action, ActionRecord, Verdict

__all__ = ("AlertResponder", "LogResponder", "alert_line")

#: Longest evidence summary and title printed, in characters (before escaping).
_EVIDENCE_MAX = 200
_TITLE_MAX = 160

# C0 controls, DEL and C1 controls -> visible escapes ("\x1b"); keeps the banner one line.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES[ord("\\")] = "\\\\"


def _clean(text: str, limit: int) -> str:
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.translate(_ESCAPES)


def _value(v: Any) -> str:
    if isinstance(v, str):
        return v
    try:
        return orjson.dumps(v, default=str).decode()
    except TypeError:
        return str(v)


def alert_line(verdict: Verdict) -> str:
    """The one-line banner for ``verdict`` (no trailing newline)."""
    summary = " ".join(f"{k}={_value(v)}" for k, v in verdict.evidence.items())
    line = (
        f"coi-watch ALERT [{_clean(verdict.container, 64)}] {verdict.severity.value} "
        f"{_clean(verdict.detector, 64)}: {_clean(verdict.title, _TITLE_MAX)}"
    )
    if summary:
        line += f" ({_clean(summary, _EVIDENCE_MAX)})"
    return line


def _record(
    verdict: Verdict,
    action: Action,
    status: str,
    start: int,
    end: int,
    *,
    detail: str = "",
    error: str = "",
) -> ActionRecord:
    origin = verdict.ts_ns if 0 < verdict.ts_ns <= end else start
    return ActionRecord(
        ts_ns=end,
        wall_ns=time.time_ns(),
        container=verdict.container,
        action=action,
        status=status,
        detector=verdict.detector,
        dedup_key=verdict.dedup_key,
        detail=detail,
        error=error,
        latency_ms=round((end - origin) / 1e6, 3),
    )


class LogResponder:
    """Does nothing: the policy has already written the verdict to the audit log."""

    name: ClassVar[str] = "log"
    action: ClassVar[Action] = Action.LOG

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._clock = clock

    async def respond(self, verdict: Verdict) -> ActionRecord:
        """Return ``done``."""
        now = self._clock()
        return _record(verdict, self.action, "done", now, now, detail="logged")


class AlertResponder:
    """Prints a one-line ``coi-watch ALERT`` banner to stderr (or ``stream``)."""

    name: ClassVar[str] = "alert"
    action: ClassVar[Action] = Action.ALERT

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        stream: TextIO | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._stream = stream
        self._clock = clock

    async def respond(self, verdict: Verdict) -> ActionRecord:
        """Print the banner; ``failed`` if the stream cannot be written (closed, broken pipe)."""
        start = self._clock()
        # sys.stderr is looked up per call, so a redirected stderr (tests, daemons) is honoured.
        stream = self._stream if self._stream is not None else sys.stderr
        try:
            stream.write(alert_line(verdict) + "\n")
            stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: I/O operation on closed file
            return _record(verdict, self.action, "failed", start, self._clock(), error=f"{exc}")
        return _record(verdict, self.action, "done", start, self._clock(), detail="alerted")
