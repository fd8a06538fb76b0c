"""Conntrack events and dump replies (``NFNL_SUBSYS_CTNETLINK``), parsed without pyroute2.

Strategy: sans-I/O and declarative. :func:`parse` takes one datagram read from a
``NETLINK_NETFILTER`` socket subscribed to the conntrack groups (:data:`EVENT_GROUPS`) or
answering :func:`dump_request`, and returns one :class:`CtEvent` per ``IPCTNL_MSG_CT_NEW`` /
``IPCTNL_MSG_CT_DELETE`` message. The ``CTA_*`` attributes are nested tables of data
(:data:`CTA`, :data:`CTA_TUPLE`, ...) walked by :func:`coi_watch.wire.nfnetlink.decode_into`:
tuples become :class:`CtTuple` records, counters, timestamps and TCP protoinfo are flattened
into the event. Other messages (``NLMSG_DONE`` after a dump, acks, expectation messages)
are skipped.

The event kind comes from the message type and flags, as
``ctnetlink_conntrack_event()`` in ``net/netfilter/nf_conntrack_netlink.c`` sets them:
``DELETE`` -> ``"destroy"``; ``NEW`` with ``NLM_F_CREATE|NLM_F_EXCL`` -> ``"new"``; ``NEW``
with ``NLM_F_MULTI`` (a dump reply) -> ``"dump"``; plain ``NEW`` -> ``"update"``.

Counters (``nf_conntrack_acct=1``) come only with ``destroy`` events and dumps; the start
and stop stamps (``nf_conntrack_timestamp=1``) are wall-clock ns. Fields the message did not
carry are ``None``.

Invariant (h11's, tested with hypothesis on random and mutated real datagrams): whatever
bytes arrive, :func:`parse` either returns events or raises
:class:`~coi_watch.errors.WireError`, never another exception.

Sources: ``linux/netfilter/nfnetlink_conntrack.h`` (``enum ctattr_*``),
``linux/netfilter/nf_conntrack_common.h`` (``enum ip_conntrack_status``),
``linux/netfilter/nf_conntrack_tcp.h`` (``enum tcp_conntrack``).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from coi_watch.errors import WireError
from coi_watch.wire.netlink import iter_messages
from coi_watch.wire.nfnetlink import (
    NFGENMSG_LEN,
    NFNL_SUBSYS_CTNETLINK,
    NFNLGRP_CONNTRACK_DESTROY,
    NFNLGRP_CONNTRACK_NEW,
    NFNLGRP_CONNTRACK_UPDATE,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    AttrTable,
    Nested,
    be16,
    be32,
    be64,
    cstring,
    decode_into,
    group_mask,
    ipv4,
    ipv6,
    message,
    nfgen_header,
    u8,
)
from coi_watch.wire.packet import proto_name

__all__ = (
    "CTA",
    "CTA_TUPLE",
    "EVENT_GROUPS",
    "STATUS_BITS",
    "TCP_STATES",
    "CtEvent",
    "CtTuple",
    "dump_request",
    "parse",
)

# linux/netfilter/nfnetlink_conntrack.h: enum cntl_msg_types
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
IPCTNL_MSG_CT_GET_CTRZERO = 3
_NEW = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
_DELETE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE

EVENT_GROUPS = group_mask(
    NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY
)
"""``bind((0, EVENT_GROUPS))`` subscribes to new, update and destroy events."""

# linux/netfilter/nf_conntrack_common.h: enum ip_conntrack_status (bit -> name)
STATUS_BITS: Mapping[int, str] = MappingProxyType(
    {
        0: "EXPECTED",
        1: "SEEN_REPLY",
        2: "ASSURED",
        3: "CONFIRMED",
        4: "SRC_NAT",
        5: "DST_NAT",
        6: "SEQ_ADJUST",
        7: "SRC_NAT_DONE",
        8: "DST_NAT_DONE",
        9: "DYING",
        10: "FIXED_TIMEOUT",
        11: "TEMPLATE",
        12: "UNTRACKED",
        13: "HELPER",
        14: "OFFLOAD",
        15: "HW_OFFLOAD",
    }
)

# linux/netfilter/nf_conntrack_tcp.h: enum tcp_conntrack
TCP_STATES: tuple[str, ...] = (
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
)


@dataclass(frozen=True, slots=True)
class CtTuple:
    """One direction of a flow (``CTA_TUPLE_ORIG`` or ``CTA_TUPLE_REPLY``).

    Ports are 0 for protocols without them; ``icmp_*`` are -1 unless ICMP/ICMPv6.
    """

    src: str
    dst: str
    proto: int
    sport: int = 0
    dport: int = 0
    icmp_type: int = -1
    icmp_code: int = -1
    icmp_id: int = -1
    zone: int = 0


def _tuple(attrs: dict[str, Any]) -> CtTuple:
    return CtTuple(**attrs)


@dataclass(frozen=True, slots=True)
class CtEvent:
    """One conntrack event or dump entry; ``orig`` is the direction that opened the flow."""

    event: str
    family: int
    orig: CtTuple
    reply: CtTuple | None = None
    id: int = 0
    status: int = 0
    mark: int = 0
    zone: int = 0
    timeout: int | None = None
    tcp_state: int | None = None
    packets_orig: int | None = None
    bytes_orig: int | None = None
    packets_reply: int | None = None
    bytes_reply: int | None = None
    start_ns: int | None = None
    stop_ns: int | None = None
    event_ns: int | None = None
    helper: str = ""

    @property
    def proto_name(self) -> str:
        """``tcp``, ``udp``, ``icmp``, ``icmpv6`` or the protocol number as a string."""
        return proto_name(self.orig.proto)

    @property
    def tcp_state_name(self) -> str:
        """``ESTABLISHED``, ``TIME_WAIT``, ...; ``""`` when there is no TCP state."""
        if self.tcp_state is None:
            return ""
        if self.tcp_state < len(TCP_STATES):
            return TCP_STATES[self.tcp_state]
        return str(self.tcp_state)

    @property
    def status_names(self) -> tuple[str, ...]:
        """The ``IPS_*`` bits set in ``status``, lowest first."""
        return tuple(name for bit, name in STATUS_BITS.items() if self.status >> bit & 1)


# linux/netfilter/nfnetlink_conntrack.h: enum ctattr_ip (inside CTA_TUPLE_IP)
CTA_IP: AttrTable = MappingProxyType(
    {
        1: ("src", ipv4),  # CTA_IP_V4_SRC
        2: ("dst", ipv4),  # CTA_IP_V4_DST
        3: ("src", ipv6),  # CTA_IP_V6_SRC
        4: ("dst", ipv6),  # CTA_IP_V6_DST
    }
)

# linux/netfilter/nfnetlink_conntrack.h: enum ctattr_l4proto (inside CTA_TUPLE_PROTO)
CTA_PROTO: AttrTable = MappingProxyType(
    {
        1: ("proto", u8),  # CTA_PROTO_NUM
        2: ("sport", be16),  # CTA_PROTO_SRC_PORT
        3: ("dport", be16),  # CTA_PROTO_DST_PORT
        4: ("icmp_id", be16),  # CTA_PROTO_ICMP_ID
        5: ("icmp_type", u8),  # CTA_PROTO_ICMP_TYPE
        6: ("icmp_code", u8),  # CTA_PROTO_ICMP_CODE
        7: ("icmp_id", be16),  # CTA_PROTO_ICMPV6_ID
        8: ("icmp_type", u8),  # CTA_PROTO_ICMPV6_TYPE
        9: ("icmp_code", u8),  # CTA_PROTO_ICMPV6_CODE
    }
)

# linux/netfilter/nfnetlink_conntrack.h: enum ctattr_tuple
CTA_TUPLE: AttrTable = MappingProxyType(
    {
        1: ("ip", Nested(CTA_IP)),  # CTA_TUPLE_IP: flattened into src/dst
        2: ("proto", Nested(CTA_PROTO)),  # CTA_TUPLE_PROTO: flattened
        3: ("zone", be16),  # CTA_TUPLE_ZONE
    }
)

# linux/netfilter/nfnetlink_conntrack.h: enum ctattr_protoinfo_tcp
_CTA_PROTOINFO_TCP: AttrTable = MappingProxyType(
    {1: ("tcp_state", u8)}  # CTA_PROTOINFO_TCP_STATE (wscale/flags 2-5 not decoded)
)

# linux/netfilter/nfnetlink_conntrack.h: enum ctattr_protoinfo
_CTA_PROTOINFO: AttrTable = MappingProxyType(
    {1: ("tcp", Nested(_CTA_PROTOINFO_TCP))}  # CTA_PROTOINFO_TCP (DCCP 2, SCTP 3: skipped)
)


def _counters(direction: str) -> AttrTable:
    # linux/netfilter/nfnetlink_conntrack.h: enum ctattr_counters
    return MappingProxyType(
        {
            1: (f"packets_{direction}", be64),  # CTA_COUNTERS_PACKETS: 64-bit
            2: (f"bytes_{direction}", be64),  # CTA_COUNTERS_BYTES: 64-bit
            3: (f"packets_{direction}", be32),  # CTA_COUNTERS32_PACKETS: old, unused
            4: (f"bytes_{direction}", be32),  # CTA_COUNTERS32_BYTES: old, unused
        }
    )


# linux/netfilter/nfnetlink_conntrack.h: enum ctattr_tstamp
_CTA_TIMESTAMP: AttrTable = MappingProxyType(
    {
        1: ("start_ns", be64),  # CTA_TIMESTAMP_START
        2: ("stop_ns", be64),  # CTA_TIMESTAMP_STOP
    }
)

# linux/netfilter/nfnetlink_conntrack.h: enum ctattr_help
_CTA_HELP: AttrTable = MappingProxyType({1: ("helper", cstring)})  # CTA_HELP_NAME

# linux/netfilter/nfnetlink_conntrack.h: enum ctattr_type. Names are CtEvent fields.
CTA: AttrTable = MappingProxyType(
    {
        1: ("orig", Nested(CTA_TUPLE, _tuple)),  # CTA_TUPLE_ORIG
        2: ("reply", Nested(CTA_TUPLE, _tuple)),  # CTA_TUPLE_REPLY
        3: ("status", be32),  # CTA_STATUS: IPS_* bits
        4: ("protoinfo", Nested(_CTA_PROTOINFO)),  # CTA_PROTOINFO: flattened (tcp_state)
        5: ("help", Nested(_CTA_HELP)),  # CTA_HELP: flattened (helper)
        7: ("timeout", be32),  # CTA_TIMEOUT: seconds left
        8: ("mark", be32),  # CTA_MARK
        9: ("counters_orig", Nested(_counters("orig"))),  # CTA_COUNTERS_ORIG: flattened
        10: ("counters_reply", Nested(_counters("reply"))),  # CTA_COUNTERS_REPLY: flattened
        12: ("id", be32),  # CTA_ID
        18: ("zone", be16),  # CTA_ZONE
        20: ("timestamp", Nested(_CTA_TIMESTAMP)),  # CTA_TIMESTAMP: flattened
        27: ("event_ns", be64),  # CTA_TIMESTAMP_EVENT (kernels >= 6.15)
        # 6 NAT_SRC, 11 USE, 13 NAT_DST, 14 TUPLE_MASTER, 15/16 SEQ_ADJ, 19 SECCTX,
        # 22 LABELS, 24 SYNPROXY: not decoded.
    }
)


def _kind(typ: int, flags: int) -> str:
    if typ == _DELETE:
        return "destroy"
    if flags & (NLM_F_CREATE | NLM_F_EXCL):
        return "new"
    if flags & NLM_F_MULTI:
        return "dump"
    return "update"


def parse(buf: bytes | memoryview) -> list[CtEvent]:
    """Every conntrack event (or dump entry) in one datagram.

    Raises:
        WireError: bad framing, an entry without ``CTA_TUPLE_ORIG``, an incomplete tuple,
            or an attribute whose size does not fit its type.
    """
    out: list[CtEvent] = []
    for msg in iter_messages(buf):
        typ = msg.type
        if typ != _NEW and typ != _DELETE:
            continue
        family = nfgen_header(msg.payload).family
        attrs = decode_into({}, msg.payload, CTA, NFGENMSG_LEN)
        if "orig" not in attrs:
            raise WireError("conntrack message without CTA_TUPLE_ORIG")
        out.append(CtEvent(event=_kind(typ, msg.flags), family=family, **attrs))
    return out


def dump_request(
    family: int = socket.AF_UNSPEC, *, seq: int = 1, zero_counters: bool = False
) -> bytes:
    """Ask for every conntrack entry of ``family`` (``AF_UNSPEC``: all); the replies are
    ``"dump"`` events ending with ``NLMSG_DONE``. ``zero_counters`` resets the counters as
    they are read (``IPCTNL_MSG_CT_GET_CTRZERO``)."""
    op = IPCTNL_MSG_CT_GET_CTRZERO if zero_counters else IPCTNL_MSG_CT_GET
    return message(
        NFNL_SUBSYS_CTNETLINK, op, family=family, flags=NLM_F_REQUEST | NLM_F_DUMP, seq=seq
    )
