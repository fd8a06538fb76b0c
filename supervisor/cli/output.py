"""How ``coi-watch`` prints what happens: one line per verdict or action, or JSON lines.

Strategy: the supervisor calls one printer with verdicts, action records and plain notes; the
printer turns them into a human line (time, what, container, details) or, with ``--json``,
into the same JSON objects the audit log holds (one per line, orjson), for piping.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import orjson

from coi_watch.verdicts import ActionRecord, Verdict

__all__ = ("Printer",)

_COLOR = {"info": "", "warning": "\033[33m", "high": "\033[31m", "critical": "\033[1;31m"}


class Printer:
    """Callable printer for the supervisor's ``report`` hook."""

    def __init__(self, *, json: bool = False, stream: TextIO | None = None) -> None:
        self.json = json
        self.stream = stream or sys.stdout
        self.color = not json and self.stream.isatty()

    def __call__(self, item: Verdict | ActionRecord | str) -> None:
        if self.json:
            obj = {"kind": "note", "message": item} if isinstance(item, str) else item
            self.stream.write(orjson.dumps(obj).decode() + "\n")
        else:
            self.stream.write(self.line(item) + "\n")
        self.stream.flush()

    def line(self, item: Verdict | ActionRecord | str) -> str:
        """The human line for ``item``."""
        if isinstance(item, str):
            return f"{_clock(time.time_ns())} note     {item}"
        if isinstance(item, Verdict):
            sev = item.severity.value
            color, reset = (_COLOR.get(sev, ""), "\033[0m") if self.color else ("", "")
            evidence = " ".join(f"{k}={_short(v)}" for k, v in item.evidence.items()
                                if k in ("family", "program", "cmdline", "remote", "rule"))
            return (f"{_clock(item.wall_ns)} VERDICT  {color}{sev:<8}{reset} [{item.container}] "
                    f"{item.detector}: {item.title}" + (f"  ({evidence})" if evidence else ""))
        detail = item.error or item.detail
        return (f"{_clock(item.wall_ns)} ACTION   {item.action.value:<8} [{item.container}] "
                f"{item.status}" + (f": {detail}" if detail else "")
                + (f"  ({item.latency_ms:.1f} ms after the event)" if item.latency_ms else ""))


def _clock(wall_ns: int) -> str:
    t = wall_ns / 1e9
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


def _short(v: object, limit: int = 120) -> str:
    s = v if isinstance(v, str) else orjson.dumps(v).decode()
    return s if len(s) <= limit else s[: limit - 1] + "…"
