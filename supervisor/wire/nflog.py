"""NFLOG (``nfnetlink_log``): packets the kernel copies to us from ``log group N`` rules.

Strategy: sans-I/O. :func:`parse` takes one datagram read from a ``NETLINK_NETFILTER`` socket
bound to a log group and returns one :class:`NflogPacket` per ``NFULNL_MSG_PACKET`` message;
the attributes are the data table :data:`NFULA` walked by
:func:`coi_watch.wire.nfnetlink.decode_into`. ``NLMSG_DONE`` (the kernel ends a batch of
``qthresh > 1`` packets with one), ``NLMSG_ERROR`` acks (see
:func:`coi_watch.wire.nfnetlink.parse_acks`) and messages of other subsystems are skipped.
The builders (:func:`bind_message`, :func:`config_message`, ...) make the configuration
requests; nothing here touches a socket.

Invariant (h11's, tested with hypothesis on random and mutated real datagrams): whatever
bytes arrive, :func:`parse` either returns packets or raises
:class:`~coi_watch.errors.WireError`, never another exception.

Fast path: :func:`peek` reads the same datagram for the NFLOG source's hot loop and returns
only what the source uses (prefix, payload, timestamp, sequence number, the four interface
indexes) as plain tuples, with ``unpack_from`` on the caller's ``bytes``: no generator,
memoryview, dict or dataclass per attribute. The first message of a kind is walked attribute
by attribute (:func:`_walk`); the kernel writes the same attributes in the same order for
every packet of one rule and path, so the walk remembers that layout (:class:`_Layout`, at
most :data:`_LAYOUTS_MAX`) and later messages with the very same attribute headers are
checked with one ``unpack_from`` of all headers and read at the learnt offsets. Both ways
check everything :func:`parse` checks (framing, trailing slack, the size of every attribute
:data:`NFULA` decodes, the nested VLAN walk), so :func:`peek` and :func:`parse` agree: the
same fields, or both raise ``WireError`` (hypothesis properties over every golden capture,
kernel-shaped bridge datagrams, spliced attributes and mutations of them, with and without
a learnt layout).

``payload`` starts at the network header (also for the bridge family, ``family == 7``); decode
it with :func:`coi_watch.wire.packet.parse_ip`. It may be cut at the configured
``copy_range``. ``wall_ns`` is the packet's wall-clock stamp (``NFULA_TIMESTAMP``,
big-endian seconds and microseconds), 0 when the skb had none. ``seq`` counts packets per
instance (``NFULNL_CFG_F_SEQ``): gaps mean losses.

Source: ``linux/netfilter/nfnetlink_log.h``.
"""

from __future__ import annotations

import operator
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeAlias

from coi_watch.errors import WireError
from coi_watch.wire.netlink import NLMSG_HDRLEN, iter_messages
from coi_watch.wire.nfnetlink import (
    NFGENMSG_LEN,
    NFNL_SUBSYS_ULOG,
    AttrTable,
    Nested,
    be16,
    be32,
    cstring,
    decode_into,
    message,
    nfgen_header,
    nla,
)

__all__ = (
    "NFULA",
    "NFULNL_CFG_F_CONNTRACK",
    "NFULNL_CFG_F_SEQ",
    "NFULNL_CFG_F_SEQ_GLOBAL",
    "NFULNL_COPY_META",
    "NFULNL_COPY_NONE",
    "NFULNL_COPY_PACKET",
    "NflogPacket",
    "NflogPeek",
    "bind_message",
    "config_message",
    "parse",
    "peek",
    "pf_bind_message",
    "pf_unbind_message",
    "unbind_message",
)

# linux/netfilter/nfnetlink_log.h: enum nfulnl_msg_types
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
_PACKET_TYPE = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET

# linux/netfilter/nfnetlink_log.h: enum nfulnl_msg_config_cmds
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_CFG_CMD_PF_BIND = 3
NFULNL_CFG_CMD_PF_UNBIND = 4

# linux/netfilter/nfnetlink_log.h: enum nfulnl_attr_config
NFULA_CFG_CMD = 1  # struct nfulnl_msg_config_cmd { __u8 command; }
NFULA_CFG_MODE = 2  # struct nfulnl_msg_config_mode { __be32 copy_range; __u8 copy_mode; pad }
NFULA_CFG_NLBUFSIZ = 3  # __be32 (bytes)
NFULA_CFG_TIMEOUT = 4  # __be32, 1/100 s
NFULA_CFG_QTHRESH = 5  # __be32 (packets)
NFULA_CFG_FLAGS = 6  # __be16

# linux/netfilter/nfnetlink_log.h: copy modes and config flags
NFULNL_COPY_NONE = 0x00
NFULNL_COPY_META = 0x01
NFULNL_COPY_PACKET = 0x02
NFULNL_CFG_F_SEQ = 0x0001
NFULNL_CFG_F_SEQ_GLOBAL = 0x0002
NFULNL_CFG_F_CONNTRACK = 0x0004

# linux/netfilter/nfnetlink_log.h: enum nfulnl_attr_type (the ones peek() reads by name;
# it takes the four NFULA_IFINDEX_* as the run 4..7)
NFULA_PACKET_HDR = 1
NFULA_TIMESTAMP = 3
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NFULA_SEQ = 12

_PACKET_HDR = struct.Struct("!HBx")  # struct nfulnl_msg_packet_hdr: __be16 hw_protocol; __u8 hook
_TIMESTAMP = struct.Struct("!QQ")  # struct nfulnl_msg_packet_timestamp: __be64 sec, usec
_HW = struct.Struct("!H2x8s")  # struct nfulnl_msg_packet_hw: __be16 hw_addrlen; pad; __u8 [8]
_BE32 = struct.Struct("!I")
_BE16 = struct.Struct("!H")


def _packet_hdr(v: memoryview) -> tuple[int, int]:
    hw_protocol, hook = _PACKET_HDR.unpack(v)
    return hw_protocol, hook


def _timestamp(v: memoryview) -> int:
    sec, usec = _TIMESTAMP.unpack(v)
    return int(sec) * 1_000_000_000 + int(usec) * 1_000


def _hwaddr(v: memoryview) -> str:
    n, addr = _HW.unpack(v)
    return ":".join(f"{b:02x}" for b in addr[: min(n, 8)])


# linux/netfilter/nfnetlink_log.h: enum nfulnl_vlan_attr (inside NFULA_VLAN)
_NFULA_VLAN: AttrTable = MappingProxyType(
    {
        1: ("vlan_proto", be16),  # NFULA_VLAN_PROTO: __be16 skb vlan_proto
        2: ("vlan_tci", be16),  # NFULA_VLAN_TCI: __be16 htons(vlan_tci)
    }
)

# linux/netfilter/nfnetlink_log.h: enum nfulnl_attr_type. Names are NflogPacket fields.
NFULA: AttrTable = MappingProxyType(
    {
        1: ("hdr", _packet_hdr),  # NFULA_PACKET_HDR: struct nfulnl_msg_packet_hdr
        2: ("mark", be32),  # NFULA_MARK: __u32 nfmark (sent big-endian)
        3: ("wall_ns", _timestamp),  # NFULA_TIMESTAMP: struct nfulnl_msg_packet_timestamp
        4: ("indev", be32),  # NFULA_IFINDEX_INDEV
        5: ("outdev", be32),  # NFULA_IFINDEX_OUTDEV
        6: ("physindev", be32),  # NFULA_IFINDEX_PHYSINDEV (bridge port)
        7: ("physoutdev", be32),  # NFULA_IFINDEX_PHYSOUTDEV
        8: ("hwaddr", _hwaddr),  # NFULA_HWADDR: struct nfulnl_msg_packet_hw
        9: ("payload", bytes),  # NFULA_PAYLOAD: from the network header, up to copy_range
        10: ("prefix", cstring),  # NFULA_PREFIX: NUL-terminated rule prefix
        11: ("uid", be32),  # NFULA_UID: owner of the local socket (output path)
        12: ("seq", be32),  # NFULA_SEQ: instance-local sequence number
        13: ("seq_global", be32),  # NFULA_SEQ_GLOBAL
        14: ("gid", be32),  # NFULA_GID
        15: ("hwtype", be16),  # NFULA_HWTYPE: ARPHRD_*
        # 16 NFULA_HWHEADER, 17 NFULA_HWLEN, 18 NFULA_CT, 19 NFULA_CT_INFO, 21 NFULA_L2HDR:
        # not decoded (link-layer bytes; CT needs NETFILTER_NETLINK_GLUE_CT).
        20: ("vlan", Nested(_NFULA_VLAN)),  # NFULA_VLAN: nested, flattened into vlan_*
    }
)


@dataclass(frozen=True, slots=True)
class NflogPacket:
    """One logged packet. Integer fields absent from the message are 0, except those
    where 0 is a real value (``seq``, ``seq_global``, ``uid``, ``gid``): those are ``None``.

    ``family`` is the ``nfgenmsg`` family (2 IPv4, 10 IPv6, 7 bridge), ``group`` the log
    group (``res_id``), ``hook`` the netfilter hook (0 prerouting, 1 input, 2 forward,
    3 output, 4 postrouting), ``hw_protocol`` the ethertype (0x0800, 0x86dd).
    """

    family: int
    group: int
    hw_protocol: int
    hook: int
    payload: bytes
    prefix: str = ""
    wall_ns: int = 0
    seq: int | None = None
    seq_global: int | None = None
    indev: int = 0
    outdev: int = 0
    physindev: int = 0
    physoutdev: int = 0
    mark: int = 0
    uid: int | None = None
    gid: int | None = None
    hwtype: int = 0
    hwaddr: str = ""
    vlan_proto: int = 0
    vlan_tci: int = 0


def parse(buf: bytes | memoryview) -> list[NflogPacket]:
    """Every logged packet in one datagram read from an NFLOG socket.

    Raises:
        WireError: bad framing, a packet message without ``NFULA_PACKET_HDR``, or an
            attribute whose size does not fit its type.
    """
    out: list[NflogPacket] = []
    for msg in iter_messages(buf):
        if msg.type != _PACKET_TYPE:
            continue
        family, _version, group = nfgen_header(msg.payload)
        attrs: dict[str, Any] = decode_into({}, msg.payload, NFULA, NFGENMSG_LEN)
        hdr = attrs.pop("hdr", None)
        if hdr is None:
            raise WireError("NFULNL_MSG_PACKET without NFULA_PACKET_HDR")
        out.append(
            NflogPacket(
                family=family,
                group=group,
                hw_protocol=hdr[0],
                hook=hdr[1],
                payload=attrs.pop("payload", b""),
                **attrs,
            )
        )
    return out


# --------------------------------------------------------------------------- fast path

NflogPeek: TypeAlias = tuple[str, bytes, int, "int | None", int, int, int, int]
"""What :func:`peek` returns per packet: ``(prefix, payload, wall_ns, seq, indev, physindev,
outdev, physoutdev)``, each as :class:`NflogPacket` has it."""

# nla_len (header + value) that each attribute type NFULA decodes with a fixed-size struct
# must have, indexed by type; 0: any length (payload, prefix, types parse() skips); -1: the
# VLAN nest, checked by walking it. From linux/netfilter/nfnetlink_log.h: 1
# nfulnl_msg_packet_hdr (4 bytes), 2 mark, 4-7 ifindexes, 11 uid, 12 seq, 13 seq_global,
# 14 gid (__be32), 3 nfulnl_msg_packet_timestamp (2 x __be64), 8 nfulnl_msg_packet_hw (12),
# 15 hwtype (__be16).
_NLA_LEN = (0, 8, 8, 20, 8, 8, 8, 8, 16, 0, 0, 8, 8, 8, 8, 6, 0, 0, 0, 0, -1)
_NLA_TYPES = len(_NLA_LEN)
_NLMSG_LEN_TYPE = struct.Struct("=IH")  # nlmsghdr: nlmsg_len, nlmsg_type
_NLATTR = struct.Struct("=HH")  # nlattr: nla_len, nla_type
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_PREFIXES: dict[bytes, str] = {}  # raw NFULA_PREFIX value -> cstring(), bounded below
_PREFIX_CACHE_MAX = 64


def _prefix(raw: bytes) -> str:
    text = _PREFIXES.get(raw)
    if text is None:
        text = cstring(memoryview(raw))
        if len(_PREFIXES) < _PREFIX_CACHE_MAX:  # our rules use a handful of prefixes
            _PREFIXES[raw] = text
    return text


def peek(buf: bytes) -> list[NflogPeek]:
    """The fields the NFLOG source needs from every packet of one datagram (see
    :data:`NflogPeek`); agrees with :func:`parse`.

    A packet message whose attribute headers are those of a message walked before (the
    kernel writes the same attributes in the same order for every packet of a rule and
    path) is checked with one ``unpack_from`` of all its headers and a tuple comparison,
    and read at the offsets learnt then (:class:`_Layout`); any other goes through
    :func:`_walk`.

    Raises:
        WireError: exactly when :func:`parse` does.
    """
    out: list[NflogPeek] = []
    end = len(buf)
    off = 0
    while off < end:
        if end - off < NLMSG_HDRLEN:
            raise WireError(f"truncated nlmsghdr at offset {off} ({end - off} bytes)")
        ln, typ = _NLMSG_LEN_TYPE.unpack_from(buf, off)
        if ln < NLMSG_HDRLEN or ln > end - off:
            raise WireError(f"bad nlmsg_len {ln} at offset {off} ({end - off} bytes left)")
        msg_end = off + ln
        a = off + NLMSG_HDRLEN + NFGENMSG_LEN
        off += (ln + 3) & ~3
        if typ != _PACKET_TYPE:
            continue
        if a > msg_end:
            raise WireError(f"nfgenmsg truncated ({ln - NLMSG_HDRLEN} bytes)")
        for layout in _LAYOUTS:
            pkt = layout.read(buf, a, msg_end)
            if pkt is not None:
                if layout is not _LAYOUTS[0]:
                    _promote(layout)
                out.append(pkt)
                break
        else:
            out.append(_walk(buf, a, msg_end))
    return out


def _walk(buf: bytes, a: int, msg_end: int) -> NflogPeek:
    """The attributes of one packet message from ``a``: each header and fixed size is
    checked and where each type is noted (a later duplicate wins, as in :func:`parse`);
    the few fields wanted are then unpacked from those offsets. Learns the layout."""
    start = a
    attr = _NLATTR.unpack_from
    at = [0] * _NLA_TYPES  # type -> offset of its attribute (0: absent)
    plain = True  # no VLAN nest: a layout may be learnt (if the payload comes last)
    while a + 4 <= msg_end:
        alen, atyp = attr(buf, a)
        if alen < 4 or alen > msg_end - a:
            raise WireError(f"bad nla_len {alen} at offset {a} ({msg_end - a} bytes left)")
        atyp &= _NLA_TYPE_MASK
        if atyp < _NLA_TYPES:
            want = _NLA_LEN[atyp]
            if alen != want and want:
                if want > 0:
                    raise WireError(f"{NFULA[atyp][0]}: attribute value of the wrong size")
                decode_into({}, memoryview(buf)[a + 4 : a + alen], _NFULA_VLAN)
                plain = False
            at[atyp] = a
        a += (alen + 3) & ~3
    if a < msg_end and any(buf[a:msg_end]):  # only zero padding may be that short
        raise WireError(f"truncated nlattr at offset {a}")
    if not at[NFULA_PACKET_HDR]:
        raise WireError("NFULNL_MSG_PACKET without NFULA_PACKET_HDR")
    be32 = _BE32.unpack_from
    a = at[NFULA_PAYLOAD]
    if a:
        alen = attr(buf, a)[0]
        payload = buf[a + 4 : a + alen]
        last = a + ((alen + 3) & ~3) >= msg_end
        if plain and last and len(_LAYOUTS) < _LAYOUTS_MAX:
            _LAYOUTS.append(_Layout.learn(buf, start, at))
    else:
        payload = b""
    a = at[NFULA_PREFIX]
    prefix = _prefix(buf[a + 4 : a + attr(buf, a)[0]]) if a else ""
    a = at[NFULA_TIMESTAMP]
    if a:
        sec, usec = _TIMESTAMP.unpack_from(buf, a + 4)
        wall_ns = sec * 1_000_000_000 + usec * 1_000
    else:
        wall_ns = 0
    a = at[NFULA_SEQ]
    seq = be32(buf, a + 4)[0] if a else None
    a, b, c, d = at[4:8]  # NFULA_IFINDEX_INDEV, _OUTDEV, _PHYSINDEV, _PHYSOUTDEV
    return (
        prefix,
        payload,
        wall_ns,
        seq,
        be32(buf, a + 4)[0] if a else 0,
        be32(buf, c + 4)[0] if c else 0,
        be32(buf, b + 4)[0] if b else 0,
        be32(buf, d + 4)[0] if d else 0,
    )


_LAYOUTS_MAX = 8
"""Layouts remembered: the first ones seen, tried most recently used first (a source sees
a few: one per rule and path). Never replaced, so no traffic mix makes peek() learn again
and again."""

# What a layout reads, in NflogPeek order after (prefix, payload): (attribute type, offset
# in its value, big-endian struct code, value when the attribute is absent).
_WANTED = (
    (NFULA_TIMESTAMP, 0, "Q", 0),  # seconds
    (NFULA_TIMESTAMP, 8, "Q", 0),  # microseconds
    (NFULA_SEQ, 0, "I", None),
    (4, 0, "I", 0),  # NFULA_IFINDEX_INDEV
    (6, 0, "I", 0),  # NFULA_IFINDEX_PHYSINDEV
    (5, 0, "I", 0),  # NFULA_IFINDEX_OUTDEV
    (7, 0, "I", 0),  # NFULA_IFINDEX_PHYSOUTDEV
)
_ABSENT = tuple(absent for _, _, _, absent in _WANTED)


class _Layout:
    """The attribute layout of one kind of packet message, learnt from a message that
    :func:`_walk` accepted, whose last attribute is the payload: ``headers`` unpacks every
    ``nlattr`` header (without the payload's ``nla_len``), which must equal ``expected``;
    then ``values`` unpacks the wanted big-endian values in one call and ``pick`` puts
    them in :data:`NflogPeek` order.

    When the headers match and the payload's length fits the message exactly, a walk would
    visit the same attributes at the same offsets with the same lengths, so every check it
    makes holds and the result is the same.
    """

    __slots__ = ("expected", "headers", "payload", "pick", "prefix", "values")

    def __init__(
        self,
        headers: struct.Struct,
        expected: tuple[int, ...],
        payload: int,
        prefix: tuple[int, int],
        values: struct.Struct,
        pick: Callable[[tuple[Any, ...]], tuple[Any, ...]],
    ) -> None:
        self.headers = headers
        self.expected = expected
        self.payload = payload  # offset of the payload's nlattr from the first attribute
        self.prefix = prefix  # (start, end) of the prefix value; (0, 0): none
        self.values = values
        self.pick = pick

    @classmethod
    def learn(cls, buf: bytes, start: int, at: list[int]) -> _Layout:
        """The layout of the message whose attributes start at ``start``, walked and found
        plain by :func:`_walk` (``at``: its type -> attribute offset table)."""
        pay = at[NFULA_PAYLOAD]
        fmt, a = ["="], start
        expected: list[int] = []
        while a < pay:  # every attribute before the payload, padding skipped
            alen, atyp = _NLATTR.unpack_from(buf, a)
            fmt.append(f"HH{((alen + 3) & ~3) - 4}x")
            expected += (alen, atyp)
            a += (alen + 3) & ~3
        fmt.append("2xH")  # the payload's nla_type; its nla_len varies
        expected.append(_NLATTR.unpack_from(buf, pay)[1])
        # The wanted values present, by offset, as one big-endian struct with pad bytes.
        wanted = [at[t] + 4 + skip if at[t] else 0 for t, skip, _, _ in _WANTED]
        codes = [code for _, _, code, _ in _WANTED]
        present = sorted({(off, code) for off, code in zip(wanted, codes, strict=True) if off})
        vfmt, pos = ["!"], start
        for off, code in present:
            vfmt.append(f"{off - pos}x{code}")
            pos = off + struct.calcsize("!" + code)
        offsets = [off for off, _ in present]
        pick = [offsets.index(off) if off else len(present) + k for k, off in enumerate(wanted)]
        p = at[NFULA_PREFIX]
        prefix = (p + 4 - start, p + _NLATTR.unpack_from(buf, p)[0] - start) if p else (0, 0)
        return cls(
            struct.Struct("".join(fmt)),
            tuple(expected),
            pay - start,
            prefix,
            struct.Struct("".join(vfmt)),
            operator.itemgetter(*pick),
        )

    def read(self, buf: bytes, a: int, msg_end: int) -> NflogPeek | None:
        """The packet at ``a`` if its message has this layout, else ``None``."""
        p = a + self.payload
        if p + 4 > msg_end or self.headers.unpack_from(buf, a) != self.expected:
            return None
        plen = _NLATTR.unpack_from(buf, p)[0]
        if plen < 4 or plen > msg_end - p or p + ((plen + 3) & ~3) < msg_end:
            return None  # cut short, or more after the payload: the walk decides
        sec, usec, seq, indev, physindev, outdev, physoutdev = self.pick(
            self.values.unpack_from(buf, a) + _ABSENT
        )
        ps, pe = self.prefix
        return (
            _prefix(buf[a + ps : a + pe]) if pe else "",
            buf[p + 4 : p + plen],
            sec * 1_000_000_000 + usec * 1_000,
            seq,
            indev,
            physindev,
            outdev,
            physoutdev,
        )


_LAYOUTS: list[_Layout] = []


def _promote(layout: _Layout) -> None:
    """Put ``layout`` first (most recently used): a new list, so that a walk of the old one
    elsewhere is never disturbed."""
    global _LAYOUTS
    _LAYOUTS = [layout, *(other for other in _LAYOUTS if other is not layout)]


# --------------------------------------------------------------------------- config builders


def _config(attrs: bytes, *, group: int = 0, family: int = socket.AF_UNSPEC, seq: int = 0) -> bytes:
    return message(NFNL_SUBSYS_ULOG, NFULNL_MSG_CONFIG, attrs, family=family, res_id=group, seq=seq)


def _cmd(command: int) -> bytes:
    return nla(NFULA_CFG_CMD, bytes([command]))


def bind_message(group: int, *, seq: int = 0) -> bytes:
    """Bind this socket to log group ``group`` (one socket per group and netns: 2nd gets EPERM)."""
    return _config(_cmd(NFULNL_CFG_CMD_BIND), group=group, seq=seq)


def unbind_message(group: int, *, seq: int = 0) -> bytes:
    """Release log group ``group``."""
    return _config(_cmd(NFULNL_CFG_CMD_UNBIND), group=group, seq=seq)


def pf_bind_message(family: int, *, seq: int = 0) -> bytes:
    """Legacy per-family bind (a no-op on kernels >= 3.17, accepted for old ones)."""
    return _config(_cmd(NFULNL_CFG_CMD_PF_BIND), family=family, seq=seq)


def pf_unbind_message(family: int, *, seq: int = 0) -> bytes:
    """Legacy per-family unbind (a no-op on modern kernels)."""
    return _config(_cmd(NFULNL_CFG_CMD_PF_UNBIND), family=family, seq=seq)


_MODE = struct.Struct("!IBx")


def config_message(
    group: int,
    *,
    copy_range: int = 0xFFFF,
    copy_mode: int = NFULNL_COPY_PACKET,
    qthresh: int | None = None,
    timeout_cs: int | None = None,
    flags: int | None = None,
    nlbufsiz: int | None = None,
    seq: int = 0,
) -> bytes:
    """Configure a bound group: copy mode and range, batching, flags.

    ``qthresh`` (packets) and ``timeout_cs`` (1/100 s) decide latency: the kernel defaults
    (100 packets, 1 s) delay packets by up to a second, so set them. ``flags`` is a mask of
    ``NFULNL_CFG_F_*`` (``NFULNL_CFG_F_SEQ`` gives loss detection). ``None`` leaves a
    setting as it is.
    """
    if not 0 <= copy_range <= 0xFFFFFFFF:
        raise ValueError(f"copy_range {copy_range} out of range")
    attrs = [nla(NFULA_CFG_MODE, _MODE.pack(copy_range, copy_mode))]
    for typ, value, fmt in (
        (NFULA_CFG_QTHRESH, qthresh, _BE32),
        (NFULA_CFG_TIMEOUT, timeout_cs, _BE32),
        (NFULA_CFG_NLBUFSIZ, nlbufsiz, _BE32),
        (NFULA_CFG_FLAGS, flags, _BE16),
    ):
        if value is not None:
            attrs.append(nla(typ, fmt.pack(value)))
    return _config(b"".join(attrs), group=group, seq=seq)
