"""Netlink framing shared by every wire parser: message headers and attribute (TLV) walks.

Strategy: two generators over a ``bytes``/``memoryview`` that never copy payloads and raise
only :class:`~coi_watch.errors.WireError`. One ``recv()`` on a netlink socket can hold many
messages; each message body may hold nested attributes. Lengths come from the peer, so every
length is checked against what is really there before it is used.

Sources: ``linux/netlink.h`` (``struct nlmsghdr``: ``__u32 nlmsg_len; __u16 nlmsg_type;
__u16 nlmsg_flags; __u32 nlmsg_seq; __u32 nlmsg_pid``; ``NLMSG_ALIGNTO = 4``;
``struct nlattr``: ``__u16 nla_len; __u16 nla_type``; ``NLA_F_NESTED = 1 << 15``,
``NLA_F_NET_BYTEORDER = 1 << 14``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from coi_watch.errors import WireError

__all__ = (
    "NLMSG_DONE",
    "NLMSG_ERROR",
    "NLMSG_HDRLEN",
    "NLMSG_NOOP",
    "NLMSG_OVERRUN",
    "NlMsg",
    "align4",
    "iter_attrs",
    "iter_messages",
)

# linux/netlink.h
NLMSG_NOOP = 0x1
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLMSG_OVERRUN = 0x4
NLMSG_HDRLEN = 16
NLA_TYPE_MASK = ~((1 << 15) | (1 << 14)) & 0xFFFF

_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")


class NlMsg(NamedTuple):
    """One netlink message: header fields and its payload (after the 16-byte header)."""

    type: int
    flags: int
    seq: int
    pid: int
    payload: memoryview


def align4(n: int) -> int:
    """Round ``n`` up to the netlink alignment (``NLMSG_ALIGN``/``NLA_ALIGN``)."""
    return (n + 3) & ~3


def iter_messages(buf: bytes | memoryview) -> Iterator[NlMsg]:
    """Yield every message in one netlink datagram.

    Raises:
        WireError: a header is truncated or its ``nlmsg_len`` is impossible.
    """
    view = memoryview(buf)
    off, end = 0, len(view)
    while off < end:
        if end - off < NLMSG_HDRLEN:
            raise WireError(f"truncated nlmsghdr at offset {off} ({end - off} bytes)")
        ln, typ, flags, seq, pid = _NLMSGHDR.unpack_from(view, off)
        if ln < NLMSG_HDRLEN or ln > end - off:
            raise WireError(f"bad nlmsg_len {ln} at offset {off} ({end - off} bytes left)")
        yield NlMsg(typ, flags, seq, pid, view[off + NLMSG_HDRLEN : off + ln])
        off += align4(ln)


def iter_attrs(buf: bytes | memoryview, start: int = 0) -> Iterator[tuple[int, memoryview]]:
    """Yield ``(type, value)`` for each attribute from ``start``; flag bits are masked off.

    Raises:
        WireError: an attribute header is truncated or its length is impossible.
    """
    view = memoryview(buf)
    off, end = start, len(view)
    while off < end:
        if end - off < _NLATTR.size:
            # Trailing padding shorter than a header is legal only as alignment slack.
            if any(view[off:end]):
                raise WireError(f"truncated nlattr at offset {off}")
            return
        ln, typ = _NLATTR.unpack_from(view, off)
        if ln < _NLATTR.size or ln > end - off:
            raise WireError(f"bad nla_len {ln} at offset {off} ({end - off} bytes left)")
        yield typ & NLA_TYPE_MASK, view[off + _NLATTR.size : off + ln]
        off += align4(ln)
