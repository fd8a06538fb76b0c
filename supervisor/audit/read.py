"""Reading audit files: records, filters, time parsing and one-line summaries.

Strategy: :func:`iter_records` streams one file as :class:`AuditRecord` values (shape-checked
by the same :func:`~coi_watch.audit.chain.parse_line` the verifier uses, but not
chain-checked: that is ``audit verify``'s job, and a damaged file should still be
readable). A :class:`RecordFilter` ANDs its conditions, like ausearch(8): containers and
kinds are each OR-ed sets, ``since``/``until`` bound ``wall_ns``, and ``level`` keeps
verdicts of at least that severity (with ``level`` alone, only verdicts; name other kinds in
``kinds`` to keep them too). :func:`merge_records` interleaves several files by wall time
into one timeline. :func:`format_record` is the human line ``audit show`` prints; every
control or bidi-override character in it is escaped, since argv, paths and DNS names come
from the container and must not drive the reader's terminal.
"""

from __future__ import annotations

import heapq
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson

from coi_watch.audit.chain import parse_line
from coi_watch.errors import AuditError, WireError
from coi_watch.events import Event, event_from_dict
from coi_watch.verdicts import Action, ActionRecord, Severity, Verdict, verdict_from_dict

__all__ = (
    "AuditRecord",
    "BadLineHandler",
    "RecordFilter",
    "expand_paths",
    "format_record",
    "iter_records",
    "merge_records",
    "parse_time",
)

BadLineHandler = Callable[[str, int, str], None]
"""Called with ``(path, line, reason)`` for a line that is not a record."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One record as read back; ``path``/``line`` say where it was, ``raw`` is its line."""

    v: int
    seq: int
    kind: str
    wall_ns: int
    ts_ns: int
    container: str
    data: dict[str, Any]
    prev: str
    path: str = ""
    line: int = 0
    raw: bytes = b""

    @classmethod
    def from_line(cls, line: bytes, *, path: str = "", lineno: int = 0) -> AuditRecord:
        """Decode one line (without its newline).

        Raises:
            ValueError: not a well-formed record (the message says why).
        """
        o = parse_line(line)
        return cls(v=o["v"], seq=o["seq"], kind=o["kind"], wall_ns=o["wall_ns"],
                   ts_ns=o["ts_ns"], container=o["container"], data=o["data"], prev=o["prev"],
                   path=path, line=lineno, raw=line)

    def payload(self) -> Event | Verdict | ActionRecord | dict[str, Any]:
        """The payload as the object that was logged (a system record's is its dict).

        Raises:
            ValueError: the payload does not decode into its kind's type (a redacted value
                never causes this: it is still a string).
        """
        try:
            if self.kind == "event":
                return event_from_dict(self.data)
            if self.kind == "verdict":
                return verdict_from_dict(self.data)
            if self.kind == "action":
                return ActionRecord(**{**self.data, "action": Action(self.data["action"])})
        except (WireError, KeyError, TypeError) as exc:
            raise ValueError(f"bad {self.kind} payload: {exc}") from None
        return self.data


# --------------------------------------------------------------------------- filters


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """Which records to keep (see the module docstring); empty fields keep everything."""

    containers: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()
    level: Severity | None = None
    since_ns: int | None = None
    until_ns: int | None = None

    def matches(self, rec: AuditRecord) -> bool:
        """Whether ``rec`` passes every condition."""
        if self.containers and rec.container not in self.containers:
            return False
        if self.kinds and rec.kind not in self.kinds:
            return False
        if self.since_ns is not None and rec.wall_ns < self.since_ns:
            return False
        if self.until_ns is not None and rec.wall_ns > self.until_ns:
            return False
        if self.level is not None:
            if rec.kind == "verdict":
                try:
                    return Severity(str(rec.data.get("severity"))).rank >= self.level.rank
                except ValueError:
                    return False
            return bool(self.kinds)
        return True


_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.ASCII)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time(text: str, *, now_ns: int | None = None) -> int:
    """Wall-clock nanoseconds for ``text``: ISO 8601 (``2026-02-18T10:23:45Z``, a date,
    local time when no offset is given), ``now``, or a span ago (``90s``, ``10m``, ``2h``,
    ``1d``, ``1w``).

    Raises:
        ValueError: ``text`` is neither.
    """
    now = time.time_ns() if now_ns is None else now_ns
    t = text.strip()
    if t.lower() == "now":
        return now
    m = _RELATIVE.fullmatch(t.lower())
    if m:
        return now - int(float(m.group(1)) * _UNITS[m.group(2)] * 1_000_000_000)
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use ISO 8601 like 2026-02-18T10:23:45Z, "
                         "or a span ago like 10m, 2h, 1d)") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()  # a time without an offset is the reader's local time
    return (dt - _EPOCH) // timedelta(microseconds=1) * 1000


# --------------------------------------------------------------------------- reading


def iter_records(
    path: str | os.PathLike[str],
    filt: RecordFilter | None = None,
    *,
    on_bad_line: BadLineHandler | None = None,
) -> Iterator[AuditRecord]:
    """The records of one file, in file order, that pass ``filt``.

    A line that is not a record (torn, edited into invalid JSON) goes to ``on_bad_line`` and
    is skipped; without a handler it raises.

    Raises:
        AuditError: the file cannot be read, or a bad line with no ``on_bad_line``.
    """
    name = os.fspath(path)
    try:
        fh = open(name, "rb")  # noqa: SIM115 - closed by the with below, inside the generator
    except OSError as exc:
        raise AuditError(f"cannot read {name}: {exc.strerror or exc}") from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw[:-1] if raw.endswith(b"\n") else raw
            try:
                rec = AuditRecord.from_line(line, path=name, lineno=lineno)
            except ValueError as exc:
                if on_bad_line is None:
                    raise AuditError(f"{name}:{lineno}: {exc}") from None
                on_bad_line(name, lineno, str(exc))
                continue
            if filt is None or filt.matches(rec):
                yield rec


def expand_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, directories replaced by their ``*.jsonl`` files (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(p.glob("*.jsonl")) if p.is_dir() else [p])
    return out


def merge_records(
    paths: Iterable[str | os.PathLike[str]],
    filt: RecordFilter | None = None,
    *,
    on_bad_line: BadLineHandler | None = None,
) -> Iterator[AuditRecord]:
    """The records of several files as one timeline by ``wall_ns`` (each file keeps its
    own order).

    Raises:
        AuditError: as :func:`iter_records`, when the merge reaches that file.
    """
    streams = [iter_records(p, filt, on_bad_line=on_bad_line) for p in paths]
    return heapq.merge(*streams, key=lambda r: r.wall_ns)


# --------------------------------------------------------------------------- formatting

# C0/C1 controls, DEL, zero-width and bidi controls: shown as \\xNN or \\uNNNN.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def _safe(text: str) -> str:
    return _UNSAFE.sub(_escape, text)


def _iso(wall_ns: int) -> str:
    dt = datetime.fromtimestamp(wall_ns // 1_000_000_000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{wall_ns // 1_000_000 % 1000:03d}Z"


def _short(v: Any, limit: int = 80) -> str:
    s = v if isinstance(v, str) else orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS).decode()
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _hostport(addr: Any, port: Any) -> str:
    a = str(addr)
    return f"[{a}]:{port}" if ":" in a else f"{a}:{port}"


def _flow(d: Mapping[str, Any]) -> str:
    return (f"{d.get('proto', '?')} {_hostport(d.get('src', '?'), d.get('sport', 0))} -> "
            f"{_hostport(d.get('dst', '?'), d.get('dport', 0))}")


_EVENT_DETAIL: Final[Mapping[str, Callable[[Mapping[str, Any]], str]]] = {
    "proc.exec": lambda d: " ".join(map(str, d.get("argv") or ())) or str(d.get("exe", "")),
    "proc.fork": lambda d: f"ppid={d.get('ppid')}",
    "proc.exit": lambda d: f"code={d.get('code')} signal={d.get('signal')}",
    "proc.comm": lambda d: f"comm={d.get('comm')}",
    "proc.uid": lambda d: f"ruid={d.get('ruid')} euid={d.get('euid')}",
    "net.connect": _flow,
    "net.flow": lambda d: (f"{d.get('event')} {_flow(d)} out={d.get('bytes_out')} "
                           f"in={d.get('bytes_in')}"),
    "net.dns": lambda d: f"{d.get('qname')} type={d.get('qtype')} via "
                         f"{_hostport(d.get('dst', '?'), d.get('dport', 53))}",
    "file.access": lambda d: f"{d.get('op')} {d.get('path')}",
    "tamper": lambda d: f"{d.get('source')} {d.get('what')} {d.get('detail', '')}".rstrip(),
}


def _event(d: Mapping[str, Any]) -> str:
    kind = str(d.get("kind", "?"))
    parts = [kind]
    if "pid" in d:
        parts.append(f"pid={d['pid']}")
    detail = _EVENT_DETAIL.get(kind)
    if detail is not None:
        parts.append(detail(d))
    return " ".join(p for p in parts if p)


def _verdict(d: Mapping[str, Any]) -> str:
    s = f"{d.get('severity', '?')} {d.get('detector', '?')}: {d.get('title', '')}"
    if d.get("pid"):
        s += f" pid={d['pid']}"
    if d.get("mode") == "monitor":
        s += " (monitor)"
    return s


def _action(d: Mapping[str, Any]) -> str:
    s = f"{d.get('action', '?')} {d.get('status', '?')}"
    if d.get("detector"):
        s += f" ({d['detector']})"
    if d.get("error"):
        s += f": {d['error']}"
    elif d.get("detail"):
        s += f": {d['detail']}"
    return s


def _system(d: Mapping[str, Any]) -> str:
    rest = " ".join(f"{k}={_short(v)}" for k, v in d.items() if k != "what")
    return f"{d.get('what', '?')} {rest}".rstrip()


_SUMMARY: Final[Mapping[str, Callable[[Mapping[str, Any]], str]]] = {
    "event": _event, "verdict": _verdict, "action": _action, "system": _system,
}


def format_record(rec: AuditRecord) -> str:
    """One human line: UTC time, container (``-`` for the supervisor), kind, summary."""
    summary = _SUMMARY.get(rec.kind, _system)(rec.data)
    return _safe(f"{_iso(rec.wall_ns)} {rec.container or '-'} {rec.kind:<7} {summary}")
