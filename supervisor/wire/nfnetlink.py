"""nfnetlink plumbing shared by the NFLOG and conntrack parsers: ``nfgenmsg``, attribute
tables as data, request builders and ack decoding.

Strategy: sans-I/O and declarative, in pyroute2's ``nla_map`` style. A parser describes the
attributes it understands as an :data:`AttrTable` (``type -> (field name, decoder)``); one
generic walk, :func:`decode_into`, fills a ``dict`` from the table. A decoder is either a
callable over the attribute's bytes or a :class:`Nested` table, which is decoded into its own
record (``build``) or merged into the parent (``build=None``, to flatten a nest). Attributes
missing from a table are skipped, so newer kernels parse. Every length comes from the peer
and is checked (framing by :mod:`coi_watch.wire.netlink`, value sizes by the decoders).
Tables are module constants: each is compiled once into a lookup plan in which the
struct-backed scalar decoders (:func:`u8`, :func:`be16`, :func:`be32`, :func:`be64`) run
as a bare ``Struct.unpack``; that walk is the hot path of NFLOG and conntrack parsing.

Invariant (h11's, tested with hypothesis): whatever bytes arrive, :func:`decode_into`,
:func:`nfgen_header` and :func:`parse_acks` either return a result or raise
:class:`~coi_watch.errors.WireError`, never another exception.

Sources: ``linux/netfilter/nfnetlink.h`` (``struct nfgenmsg { __u8 nfgen_family; __u8
version; __be16 res_id; }``, ``NFNL_SUBSYS_*``, ``NFNLGRP_*``); ``linux/netlink.h``
(``NLM_F_*``, ``struct nlmsgerr { int error; struct nlmsghdr msg; }``).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias

from coi_watch.errors import WireError
from coi_watch.wire.netlink import NLMSG_ERROR, NLMSG_HDRLEN, iter_attrs, iter_messages

__all__ = (
    "MAX_DEPTH",
    "NETLINK_NETFILTER",
    "NFGENMSG_LEN",
    "NFNETLINK_V0",
    "NFNLGRP_CONNTRACK_DESTROY",
    "NFNLGRP_CONNTRACK_NEW",
    "NFNLGRP_CONNTRACK_UPDATE",
    "NFNL_SUBSYS_CTNETLINK",
    "NFNL_SUBSYS_ULOG",
    "NLA_F_NESTED",
    "NLM_F_ACK",
    "NLM_F_CREATE",
    "NLM_F_DUMP",
    "NLM_F_EXCL",
    "NLM_F_MULTI",
    "NLM_F_REQUEST",
    "AttrTable",
    "Decoder",
    "Nested",
    "NetlinkAck",
    "NfGen",
    "be16",
    "be32",
    "be64",
    "cstring",
    "decode_into",
    "group_mask",
    "ipv4",
    "ipv6",
    "message",
    "nfgen_header",
    "nla",
    "parse_acks",
    "split_type",
    "u8",
)

# linux/netlink.h
NETLINK_NETFILTER = 12
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_EXCL = 0x200  # for NEW requests; the kernel also sets it on conntrack "new" events
NLM_F_CREATE = 0x400
NLA_F_NESTED = 1 << 15

# linux/netfilter/nfnetlink.h
NFNETLINK_V0 = 0
NFNL_SUBSYS_CTNETLINK = 1
NFNL_SUBSYS_ULOG = 4
NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_UPDATE = 2
NFNLGRP_CONNTRACK_DESTROY = 3

_NFGENMSG = struct.Struct("!BBH")  # nfgen_family, version, res_id (be16)
NFGENMSG_LEN = _NFGENMSG.size
_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")
_NLMSGERR = struct.Struct("=i")

# --------------------------------------------------------------------------- value decoders

Decoder: TypeAlias = "Callable[[memoryview], Any] | Nested"
AttrTable: TypeAlias = Mapping[int, tuple[str, Decoder]]
"""``nla_type -> (field name, decoder)``: one netlink attribute namespace, as data."""

_U8 = struct.Struct("B")
_BE16 = struct.Struct("!H")
_BE32 = struct.Struct("!I")
_BE64 = struct.Struct("!Q")


def u8(v: memoryview) -> int:
    """``__u8``; the value must be exactly one byte."""
    return int(_U8.unpack(v)[0])


def be16(v: memoryview) -> int:
    """``__be16`` (ports, zones)."""
    return int(_BE16.unpack(v)[0])


def be32(v: memoryview) -> int:
    """``__be32`` (ids, marks, ifindexes, sequence numbers)."""
    return int(_BE32.unpack(v)[0])


def be64(v: memoryview) -> int:
    """``__be64`` (conntrack counters and timestamps)."""
    return int(_BE64.unpack(v)[0])


def ipv4(v: memoryview) -> str:
    """A 4-byte IPv4 address as dotted quad."""
    if len(v) != 4:
        raise WireError(f"IPv4 address of {len(v)} bytes")
    return socket.inet_ntop(socket.AF_INET, v)


def ipv6(v: memoryview) -> str:
    """A 16-byte IPv6 address in RFC 5952 text (``inet_ntop``, as ``conntrack``/``ss`` print)."""
    if len(v) != 16:
        raise WireError(f"IPv6 address of {len(v)} bytes")
    return socket.inet_ntop(socket.AF_INET6, v)


def cstring(v: memoryview) -> str:
    """A NUL-terminated string from the kernel or a rule; never fails (backslash escapes)."""
    raw = bytes(v)
    nul = raw.find(0)
    return (raw if nul < 0 else raw[:nul]).decode("utf-8", "backslashreplace")


@dataclass(frozen=True, slots=True)
class Nested:
    """A nested attribute (``NLA_F_NESTED``) described by its own table.

    ``build`` turns the decoded ``dict`` into a record; ``None`` merges the nested fields
    into the parent's dict (flattening, e.g. ``CTA_COUNTERS_ORIG`` into ``bytes_orig``).
    """

    table: AttrTable
    build: Callable[[dict[str, Any]], Any] | None = None


MAX_DEPTH = 8
"""Nesting deeper than this is refused (the tables here nest at most three levels)."""

# A table is compiled once into a plan: nla_type -> (name, op, function, sub-plan). The
# struct-backed scalar decoders run as the bare ``Struct.unpack`` (one C call, the hot path).
_LEAF, _SCALAR, _FLAT, _BUILD = 0, 1, 2, 3
_Plan: TypeAlias = dict[int, tuple[str, int, Any, Any]]
_SCALARS: dict[Callable[[memoryview], Any], Callable[[memoryview], tuple[Any, ...]]] = {
    u8: _U8.unpack,
    be16: _BE16.unpack,
    be32: _BE32.unpack,
    be64: _BE64.unpack,
}
_PLANS: dict[int, tuple[AttrTable, _Plan]] = {}  # id(table) -> (table kept alive, plan)


def _plan(table: AttrTable) -> _Plan:
    hit = _PLANS.get(id(table))
    if hit is not None and hit[0] is table:
        return hit[1]
    plan: _Plan = {}
    for typ, (name, dec) in table.items():
        if isinstance(dec, Nested):
            op = _FLAT if dec.build is None else _BUILD
            plan[typ] = (name, op, dec.build, _plan(dec.table))
        elif dec in _SCALARS:
            plan[typ] = (name, _SCALAR, _SCALARS[dec], None)
        else:
            plan[typ] = (name, _LEAF, dec, None)
    _PLANS[id(table)] = (table, plan)
    return plan


def decode_into(
    out: dict[str, Any], buf: memoryview, table: AttrTable, start: int = 0
) -> dict[str, Any]:
    """Walk the attributes of ``buf`` from ``start`` and store each known one in ``out``.

    Raises:
        WireError: bad framing, a value whose size does not fit its decoder, a nested
            record missing a required field, or nesting deeper than :data:`MAX_DEPTH`.
    """
    return _walk(out, buf, _plan(table), start, 0)


def _walk(
    out: dict[str, Any], buf: memoryview, plan: _Plan, start: int, depth: int
) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise WireError("attributes nested too deeply")
    get = plan.get
    name = ""
    try:
        for typ, val in iter_attrs(buf, start):
            step = get(typ)
            if step is None:
                continue
            name, op, fn, sub = step
            if op == _SCALAR:
                out[name] = fn(val)[0]
            elif op == _FLAT:
                _walk(out, val, sub, 0, depth + 1)
            elif op == _BUILD:
                attrs = _walk({}, val, sub, 0, depth + 1)
                try:
                    out[name] = fn(attrs)
                except TypeError as exc:  # a required field is missing
                    raise WireError(f"{name}: {exc}") from None
            else:
                out[name] = fn(val)
    except (struct.error, ValueError):
        raise WireError(f"{name}: attribute value of the wrong size") from None
    return out


# --------------------------------------------------------------------------- messages


class NfGen(NamedTuple):
    """``struct nfgenmsg``: address family, version, resource id (NFLOG group)."""

    family: int
    version: int
    res_id: int


def nfgen_header(payload: memoryview) -> NfGen:
    """Decode the 4-byte ``nfgenmsg`` at the start of an nfnetlink message payload.

    Raises:
        WireError: fewer than 4 bytes.
    """
    if len(payload) < NFGENMSG_LEN:
        raise WireError(f"nfgenmsg truncated ({len(payload)} bytes)")
    return NfGen(*_NFGENMSG.unpack_from(payload))


def split_type(nlmsg_type: int) -> tuple[int, int]:
    """``(subsystem, operation)`` of a message type (``NFNL_SUBSYS_ID``, ``NFNL_MSG_TYPE``)."""
    return (nlmsg_type >> 8) & 0xFF, nlmsg_type & 0xFF


class NetlinkAck(NamedTuple):
    """An ``NLMSG_ERROR`` reply: ``errno`` 0 is a positive ack, else the (positive) errno."""

    seq: int
    errno: int


def parse_acks(buf: bytes | memoryview) -> list[NetlinkAck]:
    """Every ``NLMSG_ERROR`` message of one datagram (other messages are skipped).

    Raises:
        WireError: bad framing or an error message shorter than its ``int error``.
    """
    acks = []
    for msg in iter_messages(buf):
        if msg.type == NLMSG_ERROR:
            if len(msg.payload) < _NLMSGERR.size:
                raise WireError("NLMSG_ERROR without an error code")
            acks.append(NetlinkAck(msg.seq, -_NLMSGERR.unpack_from(msg.payload)[0]))
    return acks


# --------------------------------------------------------------------------- builders


def nla(typ: int, payload: bytes, *, nested: bool = False) -> bytes:
    """One attribute: header, payload and padding to 4 bytes."""
    n = _NLATTR.size + len(payload)
    return (
        _NLATTR.pack(n, typ | (NLA_F_NESTED if nested else 0)) + payload + b"\0" * ((4 - n % 4) % 4)
    )


def message(
    subsys: int,
    op: int,
    attrs: bytes = b"",
    *,
    family: int = socket.AF_UNSPEC,
    res_id: int = 0,
    flags: int = NLM_F_REQUEST | NLM_F_ACK,
    seq: int = 0,
) -> bytes:
    """One nfnetlink request: ``nlmsghdr`` + ``nfgenmsg`` + already-encoded attributes."""
    body = _NFGENMSG.pack(family, NFNETLINK_V0, res_id) + attrs
    return _NLMSGHDR.pack(NLMSG_HDRLEN + len(body), (subsys << 8) | op, flags, seq, 0) + body


def group_mask(*groups: int) -> int:
    """The ``nl_groups`` bitmask to ``bind()`` for multicast groups numbered from 1."""
    mask = 0
    for g in groups:
        if not 1 <= g <= 32:
            raise ValueError(f"group {g} needs NETLINK_ADD_MEMBERSHIP, not a bind mask")
        mask |= 1 << (g - 1)
    return mask
