"""Process events from the kernel's proc connector (``NETLINK_CONNECTOR``, ``CN_IDX_PROC``).

Strategy: sans-I/O. :func:`parse` takes one datagram read from the connector socket and
returns a :class:`ProcRecord` per message; :func:`subscribe_message` builds the datagram that
switches the stream on or off. Nothing here touches a socket or ``/proc``.

A datagram is a run of netlink messages (:func:`coi_watch.wire.netlink.iter_messages`), each
carrying a ``struct cn_msg`` (``linux/connector.h``) whose data is a ``struct proc_event``
(``linux/cn_proc.h``)::

    struct cn_msg     { __u32 idx, val; __u32 seq, ack; __u16 len, flags; __u8 data[]; }   20 B
    struct proc_event { enum what what; __u32 cpu; __u64 timestamp_ns; union event_data; } 16 B +

The union member depends on ``what``; its layouts are the table :data:`LAYOUTS` (data, not an
if-chain). The kernel always sends the whole union (``msg->len = sizeof(struct proc_event)``),
but we only require the bytes of the member we decode, so an older or newer kernel with a
different union size still parses. ``timestamp_ns`` is ``CLOCK_MONOTONIC`` (``ktime_get_ns``).
``cn_msg.seq`` is a per-CPU counter of proc events (``send_msg`` in ``drivers/connector/
cn_proc.c``), so the caller can spot lost events as gaps per ``cpu``.

An unknown ``what`` yields a record with ``what="unknown"`` and the raw code, so a newer
kernel's events are counted, not dropped. Anything truncated, mis-sized or addressed to
another connector user raises :class:`~coi_watch.errors.WireError`, and nothing else.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from coi_watch.errors import WireError
from coi_watch.wire.netlink import (
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDRLEN,
    NLMSG_NOOP,
    NLMSG_OVERRUN,
    iter_messages,
)

__all__ = (
    "CN_IDX_PROC",
    "CN_VAL_PROC",
    "LAYOUTS",
    "NETLINK_CONNECTOR",
    "PROC_CN_MCAST_IGNORE",
    "PROC_CN_MCAST_LISTEN",
    "PROC_EVENT_ALL",
    "Layout",
    "ProcRecord",
    "decode_exit_status",
    "parse",
    "subscribe_message",
)

# linux/netlink.h
NETLINK_CONNECTOR = 11
# linux/connector.h
CN_IDX_PROC = 0x1
CN_VAL_PROC = 0x1
# linux/cn_proc.h: enum proc_cn_mcast_op
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
# linux/cn_proc.h (6.6+): PROC_EVENT_ALL, the filter mask of struct proc_input.event_type;
# includes PROC_EVENT_NONZERO_EXIT = 0x20000000, a filter bit that never appears in ``what``.
PROC_EVENT_ALL = (
    0x1 | 0x2 | 0x4 | 0x40 | 0x80 | 0x100 | 0x200 | 0x20000000 | 0x40000000 | 0x80000000
)

_NLMSGHDR = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_PROC_EVENT = struct.Struct("=IIQ")  # what, cpu, timestamp_ns (aligned(8): no padding here)
_OP = struct.Struct("=I")  # enum proc_cn_mcast_op
_PROC_INPUT = struct.Struct("=II")  # struct proc_input { mcast_op; event_type; } (6.6+)


class Layout(NamedTuple):
    """How one ``event_data`` union member is laid out: a name, a struct, its field names."""

    what: str
    struct: struct.Struct
    fields: tuple[str, ...]


# linux/cn_proc.h, enum what -> union member. __kernel_pid_t is a signed int; ids, exit_code
# and exit_signal are __u32. PROC_EVENT_NONE (0) carries the ``ack`` member: the kernel's
# answer to a LISTEN/IGNORE request (cn_proc_ack), with an errno in ``err``.
LAYOUTS: Mapping[int, Layout] = MappingProxyType(
    {
        0x00000000: Layout("ack", struct.Struct("=I"), ("err",)),
        0x00000001: Layout(
            "fork", struct.Struct("=iiii"), ("parent_pid", "parent_tgid", "pid", "tgid")
        ),
        0x00000002: Layout("exec", struct.Struct("=ii"), ("pid", "tgid")),
        0x00000004: Layout("uid", struct.Struct("=iiII"), ("pid", "tgid", "ruid", "euid")),
        0x00000040: Layout("gid", struct.Struct("=iiII"), ("pid", "tgid", "rgid", "egid")),
        0x00000080: Layout("sid", struct.Struct("=ii"), ("pid", "tgid")),
        0x00000100: Layout(
            "ptrace", struct.Struct("=iiii"), ("pid", "tgid", "tracer_pid", "tracer_tgid")
        ),
        0x00000200: Layout("comm", struct.Struct("=ii16s"), ("pid", "tgid", "comm")),
        0x40000000: Layout(
            "coredump", struct.Struct("=iiii"), ("pid", "tgid", "parent_pid", "parent_tgid")
        ),
        0x80000000: Layout(
            "exit",
            struct.Struct("=iiIIii"),
            ("pid", "tgid", "exit_code", "exit_signal", "parent_pid", "parent_tgid"),
        ),
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcRecord:
    """One decoded ``struct proc_event``, named after the kernel's own fields.

    ``what`` is the :data:`LAYOUTS` name (``fork``, ``exec``, ``uid``, ``gid``, ``sid``,
    ``ptrace``, ``comm``, ``coredump``, ``exit``, ``ack``) or ``unknown``; ``code`` is the raw
    ``what``. ``pid`` is the thread id and ``tgid`` the process id (``pid == tgid`` for a
    process's main thread); for ``fork`` they describe the child and ``parent_*`` the parent.
    ``exit_code`` is the kernel's ``task->exit_code`` (a wait status: see
    :func:`decode_exit_status`), ``exit_signal`` the signal sent to the parent (``SIGCHLD``).
    ``seq``/``ack`` are the ``cn_msg`` counters; fields a kind lacks keep their defaults.
    """

    what: str
    code: int
    cpu: int
    ts_ns: int
    seq: int = 0
    ack: int = 0
    pid: int = 0
    tgid: int = 0
    parent_pid: int = 0
    parent_tgid: int = 0
    ruid: int = 0
    euid: int = 0
    rgid: int = 0
    egid: int = 0
    tracer_pid: int = 0
    tracer_tgid: int = 0
    comm: str = ""
    exit_code: int = 0
    exit_signal: int = 0
    err: int = 0


def _decode_comm(raw: bytes) -> str:
    # task->comm is a NUL-terminated char[16] that prctl(PR_SET_NAME) fills with any bytes:
    # backslash escapes keep it a str with no lone surrogates (orjson-safe).
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def _record(data: memoryview, seq: int, ack: int) -> ProcRecord:
    what, cpu, ts_ns = _PROC_EVENT.unpack_from(data, 0)
    layout = LAYOUTS.get(what)
    if layout is None:
        return ProcRecord(what="unknown", code=what, cpu=cpu, ts_ns=ts_ns, seq=seq, ack=ack)
    body = len(data) - _PROC_EVENT.size
    if body < layout.struct.size:
        raise WireError(
            f"proc_event {layout.what}: {body} bytes of event_data, need {layout.struct.size}"
        )
    values: dict[str, Any] = dict(
        zip(layout.fields, layout.struct.unpack_from(data, _PROC_EVENT.size), strict=True)
    )
    if "comm" in values:
        values["comm"] = _decode_comm(values["comm"])
    return ProcRecord(
        what=layout.what, code=what, cpu=cpu, ts_ns=ts_ns, seq=seq, ack=ack, **values
    )


def parse(buf: bytes | bytearray | memoryview) -> list[ProcRecord]:
    """Decode one datagram from the proc connector into records, in order.

    ``NLMSG_NOOP`` messages and ``NLMSG_ERROR`` acks (errno 0) are skipped.

    Raises:
        WireError: truncated or impossible lengths, a netlink error or overrun, or a
            connector message that is not for ``CN_IDX_PROC``/``CN_VAL_PROC``.
    """
    out: list[ProcRecord] = []
    for msg in iter_messages(memoryview(buf)):
        payload = msg.payload
        if msg.type == NLMSG_NOOP:
            continue
        if msg.type == NLMSG_ERROR:
            # struct nlmsgerr { int error; struct nlmsghdr msg; }: error 0 is a plain ack.
            if len(payload) < 4:
                raise WireError("truncated nlmsgerr")
            (errno_neg,) = struct.unpack_from("=i", payload, 0)
            if errno_neg == 0:
                continue
            raise WireError(f"netlink error {-errno_neg}")
        if msg.type == NLMSG_OVERRUN:
            raise WireError("netlink overrun: data lost")
        if len(payload) < _CN_MSG.size:
            raise WireError(f"truncated cn_msg ({len(payload)} bytes)")
        idx, val, seq, ack, ln, _flags = _CN_MSG.unpack_from(payload, 0)
        if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC):
            raise WireError(f"connector message for {idx}:{val}, not proc events")
        have = len(payload) - _CN_MSG.size
        if ln > have:
            raise WireError(f"cn_msg.len {ln} exceeds the {have} bytes present")
        if ln < _PROC_EVENT.size:
            raise WireError(f"cn_msg.len {ln} is shorter than a proc_event header")
        out.append(_record(payload[_CN_MSG.size : _CN_MSG.size + ln], seq, ack))
    return out


def subscribe_message(
    op: int, *, seq: int = 0, ack: int = 0, events: int | None = None, pid: int = 0
) -> bytes:
    """The datagram that asks the kernel to start (``PROC_CN_MCAST_LISTEN``) or stop
    (``PROC_CN_MCAST_IGNORE``) sending proc events to this socket.

    ``events=None`` sends the classic 4-byte ``enum proc_cn_mcast_op`` that every kernel
    since 2.6.15 accepts (all events); a mask sends the 6.6+ ``struct proc_input`` with a
    kernel-side filter (older kernels ignore a message of that size). The kernel answers with
    an ``ack`` record whose ``ack`` is ``ack + 1`` and ``err`` an errno (``cn_proc_ack``); its
    ``seq`` is the per-CPU event counter, not ours (``send_msg`` overwrites it). No answer
    comes while no listener is left (after the last IGNORE) or when the sender is outside the
    initial user/pid namespace (the request is ignored). Since 6.6 listening needs no
    ``CAP_NET_ADMIN``.
    """
    if op not in (PROC_CN_MCAST_LISTEN, PROC_CN_MCAST_IGNORE):
        raise ValueError(f"unknown proc connector op {op}")
    data = _OP.pack(op) if events is None else _PROC_INPUT.pack(op, events)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, seq, ack, len(data), 0) + data
    # The connector ignores nlmsg_type; NLMSG_DONE is what it sends itself (cn_netlink_send_mult).
    return _NLMSGHDR.pack(NLMSG_HDRLEN + len(cn), NLMSG_DONE, 0, seq, pid) + cn


def decode_exit_status(exit_code: int) -> tuple[int, int]:
    """Split the kernel's ``task->exit_code`` (a wait(2) status) into ``(code, signal)``.

    The low 7 bits are the terminating signal (``WTERMSIG``; 0x80 is the core-dump flag),
    otherwise bits 8-15 are the exit status (``WEXITSTATUS``).
    """
    sig = exit_code & 0x7F
    if sig:
        return 0, sig
    return (exit_code >> 8) & 0xFF, 0
