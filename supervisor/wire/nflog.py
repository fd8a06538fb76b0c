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

``payload`` starts at the network header (also for the bridge family, ``family == 7``); decode
it with :func:`coi_watch.wire.packet.parse_ip`. It may be cut at the configured
``copy_range``. ``wall_ns`` is the packet's wall-clock stamp (``NFULA_TIMESTAMP``,
big-endian seconds and microseconds), 0 when the skb had none. ``seq`` counts packets per
instance (``NFULNL_CFG_F_SEQ``): gaps mean losses.

Source: ``linux/netfilter/nfnetlink_log.h``.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from coi_watch.errors import WireError
from coi_watch.wire.netlink import iter_messages
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
    "bind_message",
    "config_message",
    "parse",
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

_PACKET_HDR = struct.Struct("!HBx")  # struct nfulnl_msg_packet_hdr: __be16 hw_protocol; __u8 hook
_TIMESTAMP = struct.Struct("!QQ")  # struct nfulnl_msg_packet_timestamp: __be64 sec, usec
_HW = struct.Struct("!H2x8s")  # struct nfulnl_msg_packet_hw: __be16 hw_addrlen; pad; __u8 [8]


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
_BE32 = struct.Struct("!I")
_BE16 = struct.Struct("!H")


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
