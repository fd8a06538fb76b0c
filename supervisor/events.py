"""The event model: what sources publish and detectors consume.

Strategy: every event is a frozen, slotted, keyword-only dataclass whose fields are
JSON-native (``int``, ``str``, ``bool``, tuples of those, or tuples of the small frozen
records :class:`Fd` and :class:`Ancestor`). orjson serialises them as they are; the
discriminator ``kind`` is a real field (orjson skips ``ClassVar``), so an audit log can be
decoded back into the exact same objects and replayed through the detectors.

Common fields:

``ts_ns``
    ``CLOCK_MONOTONIC`` nanoseconds: the kernel's own stamp where it gives one (proc
    connector ``timestamp_ns``), otherwise the moment coi-watch read the event. Detector
    windows use this (through the runner's ``now_ns``), so wall-clock jumps never matter.
``wall_ns``
    Wall-clock nanoseconds since the epoch, for humans and ``audit show --since``: the
    kernel's wall stamp where it gives one (NFLOG ``NFULA_TIMESTAMP``), otherwise derived
    from ``ts_ns`` with the boot offset of :func:`wall_from_mono`.
``container``
    The Incus instance name the event is attributed to.

Do not subclass concrete events (as h11 says of its own): decoding dispatches on ``kind``.
"""

from __future__ import annotations

import time
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from functools import cache
from typing import Any, Literal, Union

import orjson

from coi_watch.errors import WireError

__all__ = (
    "EVENT_TYPES",
    "Ancestor",
    "DnsAnswer",
    "DnsQuery",
    "Event",
    "Fd",
    "FileAccess",
    "NetConnect",
    "NetFlow",
    "ProcComm",
    "ProcExec",
    "ProcExit",
    "ProcFork",
    "ProcUid",
    "Tamper",
    "event_from_dict",
    "event_from_json",
    "event_to_json",
    "wall_from_mono",
)


# Offset between the two clocks, taken once: wall = mono + offset. Good to a few µs, which
# is all a human reading an audit record needs; detectors never use wall time.
_WALL_OFFSET_NS = time.time_ns() - time.monotonic_ns()


def wall_from_mono(ts_ns: int) -> int:
    """Wall-clock nanoseconds for a ``CLOCK_MONOTONIC`` stamp taken on this boot."""
    return ts_ns + _WALL_OFFSET_NS


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True, kw_only=True)
class Fd:
    """What one file descriptor of a process points to (``/proc/PID/fd/N``).

    ``type`` is ``socket``, ``file``, ``pipe``, ``tty``, ``anon``, ``other`` or ``gone``
    (the process or fd vanished before we read it). For sockets, ``proto`` is the
    ``/proc/PID/net`` table it was found in (``tcp``, ``tcp6``, ``udp``, ``udp6``,
    ``unix``; empty when not found), ``state`` the TCP state name, ``local``/``remote``
    ``addr:port`` (IPv6 in brackets).
    """

    fd: int
    type: str
    target: str = ""
    proto: str = ""
    state: str = ""
    local: str = ""
    remote: str = ""

    @property
    def connected_inet(self) -> bool:
        """True for a TCP socket in ESTABLISHED/SYN_SENT or a UDP socket with a peer."""
        if self.type != "socket" or not self.proto.startswith(("tcp", "udp")):
            return False
        if self.proto.startswith("tcp"):
            return self.state in ("ESTABLISHED", "SYN_SENT", "SYN_RECV", "CLOSE_WAIT")
        return bool(self.remote) and not self.remote.endswith(":0")


@dataclass(frozen=True, slots=True, kw_only=True)
class Ancestor:
    """One step of a process's parent chain, nearest parent first."""

    pid: int
    comm: str = ""
    exe: str = ""
    cmdline: str = ""


# --------------------------------------------------------------------------- process


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcExec:
    """A process called ``execve`` (proc connector ``PROC_EVENT_EXEC``), enriched from /proc.

    ``argv`` is decoded as UTF-8 with backslash escapes for invalid bytes and capped at
    :data:`coi_watch.sources.procfs.ARGV_CAP` bytes in all; ``argv_truncated`` says when the
    cap cut it. Fields that /proc no longer had (the process exited first) are empty and
    ``partial`` is true.
    """

    kind: Literal["proc.exec"] = "proc.exec"
    ts_ns: int
    wall_ns: int
    container: str
    pid: int
    ppid: int = 0
    uid: int = -1
    comm: str = ""
    exe: str = ""
    argv: tuple[str, ...] = ()
    argv_truncated: bool = False
    cwd: str = ""
    stdio: tuple[Fd, ...] = ()
    ancestry: tuple[Ancestor, ...] = ()
    partial: bool = False

    @property
    def cmdline(self) -> str:
        """``argv`` joined by spaces, as ``ps`` shows it."""
        return " ".join(self.argv)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcFork:
    """A new process (``PROC_EVENT_FORK``); threads are filtered out by the source."""

    kind: Literal["proc.fork"] = "proc.fork"
    ts_ns: int
    wall_ns: int
    container: str
    pid: int
    ppid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcExit:
    """A process ended (``PROC_EVENT_EXIT``): ``code`` is the exit status, ``signal`` the
    signal that ended it (0 when none)."""

    kind: Literal["proc.exit"] = "proc.exit"
    ts_ns: int
    wall_ns: int
    container: str
    pid: int
    code: int = 0
    signal: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcComm:
    """A process changed its ``comm`` (``PROC_EVENT_COMM``): busybox applets that run without
    ``exec`` (``ls``, ``dd``) show up only this way."""

    kind: Literal["proc.comm"] = "proc.comm"
    ts_ns: int
    wall_ns: int
    container: str
    pid: int
    comm: str
    argv: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcUid:
    """A process changed its user ids (``PROC_EVENT_UID``); ids are host ids."""

    kind: Literal["proc.uid"] = "proc.uid"
    ts_ns: int
    wall_ns: int
    container: str
    pid: int
    ruid: int
    euid: int


# --------------------------------------------------------------------------- network


@dataclass(frozen=True, slots=True, kw_only=True)
class NetConnect:
    """The first packet of a new connection leaving a container (NFLOG).

    ``proto`` is ``tcp``, ``udp``, ``icmp``, ``icmpv6`` or the IP protocol number as a
    string; ``family`` 4 or 6; ports are 0 where the protocol has none.
    """

    kind: Literal["net.connect"] = "net.connect"
    ts_ns: int
    wall_ns: int
    container: str
    family: int
    proto: str
    src: str
    sport: int = 0
    dst: str
    dport: int = 0
    indev: str = ""
    outdev: str = ""
    prefix: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsQuery:
    """A DNS query leaving a container (NFLOG, UDP or TCP port 53).

    ``qname`` is lower-cased, without the trailing dot; bytes outside printable ASCII in a
    label are written ``\\DDD`` (RFC 4343 presentation form), so every name is a safe str.
    """

    kind: Literal["net.dns"] = "net.dns"
    ts_ns: int
    wall_ns: int
    container: str
    family: int
    proto: str
    src: str
    sport: int = 0
    dst: str
    dport: int = 53
    qid: int = 0
    qname: str
    qtype: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsAnswer:
    """A DNS response reaching a container (NFLOG on the way in): the names it resolved.

    ``src`` is the resolver, ``dst`` the container; ``addresses`` are the A/AAAA records and
    ``cnames`` the CNAME targets of the answer section (same presentation form as
    :class:`DnsQuery`), ``ttl`` the smallest TTL among them, ``rcode`` the response code.
    The allowlist detector matches domain names through these: the container's own view.
    """

    kind: Literal["net.dns_answer"] = "net.dns_answer"
    ts_ns: int
    wall_ns: int
    container: str
    family: int
    proto: str
    src: str
    sport: int = 53
    dst: str
    dport: int = 0
    qid: int = 0
    qname: str
    qtype: int = 1
    rcode: int = 0
    addresses: tuple[str, ...] = ()
    cnames: tuple[str, ...] = ()
    ttl: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class NetFlow:
    """A conntrack flow event (``new``, ``update``, ``destroy``) or a periodic ``counter``
    reading of a flow still alive. Counters are cumulative for the flow: ``bytes_out`` is
    the original direction (from the container), ``bytes_in`` the reply direction."""

    kind: Literal["net.flow"] = "net.flow"
    ts_ns: int
    wall_ns: int
    container: str
    event: str
    family: int
    proto: str
    src: str
    sport: int = 0
    dst: str
    dport: int = 0
    flow_id: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    packets_in: int = 0
    start_ns: int = 0
    stop_ns: int = 0


# --------------------------------------------------------------------------- files, tamper


@dataclass(frozen=True, slots=True, kw_only=True)
class FileAccess:
    """A file event inside a container (fanotify), ``path`` in the container's view.

    ``op`` is ``open``, ``open_exec``, ``access``, ``modify``, ``close_write`` or
    ``close_nowrite``; ``path`` is empty when the kernel could not give us the file
    (``FAN_REPORT_FD_ERROR``: e.g. a procfs file of a process that already exited).
    ``size`` is the file size at close where known, else -1.
    """

    kind: Literal["file.access"] = "file.access"
    ts_ns: int
    wall_ns: int
    container: str
    pid: int
    op: str
    path: str = ""
    size: int = -1
    comm: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Tamper:
    """Something switched off or removed part of coi-watch's view of a container."""

    kind: Literal["tamper"] = "tamper"
    ts_ns: int
    wall_ns: int
    container: str
    source: str
    what: str
    detail: str = ""


Event = Union[  # noqa: UP007 - a runtime alias used in isinstance-free dispatch
    ProcExec, ProcFork, ProcExit, ProcComm, ProcUid,
    NetConnect, DnsQuery, DnsAnswer, NetFlow, FileAccess, Tamper,
]

EVENT_TYPES: Mapping[str, type[Any]] = types.MappingProxyType(
    {cls.__dataclass_fields__["kind"].default: cls for cls in typing.get_args(Event)}
)
"""``kind`` string -> event class."""


# --------------------------------------------------------------------------- codec


def event_to_json(ev: Event) -> bytes:
    """Serialise an event to JSON bytes (orjson; tuples become lists)."""
    return orjson.dumps(ev)


def event_from_json(data: bytes | str) -> Event:
    """Decode :func:`event_to_json` output back into the same event.

    Raises:
        WireError: not JSON, unknown ``kind``, or fields that do not fit the class.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"event is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireError("event JSON is not an object")
    return event_from_dict(obj)


def event_from_dict(obj: Mapping[str, Any]) -> Event:
    """Build an event from a decoded JSON object (see :func:`event_from_json`).

    Raises:
        WireError: unknown ``kind`` or fields that do not fit the class.
    """
    cls: Any = EVENT_TYPES.get(str(obj.get("kind", "")))
    if cls is None:
        raise WireError(f"unknown event kind {obj.get('kind')!r}")
    try:
        ev: Event = _decoder(cls)(obj)
    except (TypeError, ValueError, KeyError) as exc:
        raise WireError(f"bad {cls.__name__} fields: {exc}") from None
    return ev


Decoder = Callable[[Any], Any]


def _for_type(tp: Any) -> Decoder:
    """A decoder for one annotated field type (only the shapes the model uses)."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        item = _for_type(typing.get_args(tp)[0])
        return lambda v: tuple(item(x) for x in v)
    if is_dataclass(tp):
        return _decoder(tp)  # type: ignore[arg-type]
    if origin is Literal:
        allowed = typing.get_args(tp)

        def literal(v: Any) -> Any:
            if v not in allowed:
                raise ValueError(f"{v!r} not in {allowed}")
            return v

        return literal
    if tp in (int, str, bool):
        def scalar(v: Any, tp: type = tp) -> Any:
            # bool is an int subclass: refuse True where an int belongs, and vice versa.
            if type(v) is not tp:
                raise TypeError(f"expected {tp.__name__}, got {type(v).__name__}")
            return v

        return scalar
    raise TypeError(f"unsupported field type {tp!r}")  # pragma: no cover - model bug


@cache
def _decoder(cls: Any) -> Decoder:
    hints = typing.get_type_hints(cls)
    conv = {f.name: _for_type(hints[f.name]) for f in fields(cls)}

    def decode(obj: Mapping[str, Any]) -> Any:
        unknown = obj.keys() - conv.keys()
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        return cls(**{k: conv[k](v) for k, v in obj.items()})

    return decode
