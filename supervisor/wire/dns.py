"""The question of a DNS query (UDP, or TCP with its 2-byte length prefix).

Strategy: sans-I/O; the name is read label by label with every length checked against the
message, and written in RFC 4343 presentation form so that *any* bytes give a safe,
unambiguous ``str``: printable ASCII is kept (lower-cased), ``.`` and ``\\`` inside a label
are escaped as ``\\.`` and ``\\\\``, and every other byte (controls, space, DEL, >= 0x80)
becomes ``\\DDD`` (decimal). No trailing dot; the root name is ``""``.

Bounds, so that hostile names cost O(255) at most and never loop:

* a compression pointer must point backward (below its own offset) and past the 12-byte
  header, and at most :data:`MAX_POINTER_HOPS` pointers are followed (pointer loops and
  pointers to self raise);
* the name may not exceed :data:`MAX_NAME_WIRE` (255) octets on the wire, counted as they
  are read, pointers included;
* label types 0x40 and 0x80 (RFC 6891 obsolete extended labels) are refused.

A query may carry no question (``qdcount == 0``: ``qname`` is ``""``, ``qtype`` and
``qclass`` 0) or several (only the first is read; ``qdcount`` says how many there were).
Responses parse too: ``is_response`` tells them apart.

Invariant (h11's, tested with hypothesis on random bytes and hostile names): whatever bytes
arrive, :func:`parse_query` and :func:`parse_tcp_query` either return a
:class:`DnsQuestion` or raise :class:`~coi_watch.errors.WireError`, never another exception.

Sources: RFC 1035 sections 4.1.1-4.1.4 (header, question, compression), RFC 4343 section 2.1
(escapes), RFC 7766 section 8 (TCP length prefix).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from coi_watch.errors import WireError

__all__ = (
    "MAX_NAME_WIRE",
    "MAX_POINTER_HOPS",
    "QTYPE_NAMES",
    "DnsQuestion",
    "escape_label",
    "parse_query",
    "parse_tcp_query",
    "read_name",
)

MAX_NAME_WIRE = 255  # RFC 1035 2.3.4: names are 255 octets or less
MAX_POINTER_HOPS = 16
_HEADER = struct.Struct("!HHHHHH")  # id, flags, qdcount, ancount, nscount, arcount
_QTAIL = struct.Struct("!HH")  # qtype, qclass
_TCP_LEN = struct.Struct("!H")

# IANA "Resource Record (RR) TYPEs" (the ones worth naming in an alert).
QTYPE_NAMES: Mapping[int, str] = MappingProxyType(
    {
        1: "A",
        2: "NS",
        5: "CNAME",
        6: "SOA",
        10: "NULL",
        12: "PTR",
        15: "MX",
        16: "TXT",
        28: "AAAA",
        33: "SRV",
        35: "NAPTR",
        43: "DS",
        46: "RRSIG",
        47: "NSEC",
        48: "DNSKEY",
        64: "SVCB",
        65: "HTTPS",
        99: "SPF",
        252: "AXFR",
        255: "ANY",
        257: "CAA",
    }
)

# Label bytes kept as they are: printable ASCII without space, "." and "\" (RFC 4343 2.1).
_SAFE = bytes(b for b in range(0x21, 0x7F) if b not in b".\\")
_LOWER = bytes.maketrans(bytes(range(0x41, 0x5B)), bytes(range(0x61, 0x7B)))
_ESCAPE: tuple[str, ...] = tuple(
    chr(b).lower() if b in _SAFE else ("\\" + chr(b) if b in b".\\" else f"\\{b:03d}")
    for b in range(256)
)


def escape_label(label: bytes) -> str:
    """One label in presentation form (see the module docstring); never fails."""
    if not label.translate(None, _SAFE):  # the common case: nothing to escape
        return label.translate(_LOWER).decode("ascii")
    return "".join([_ESCAPE[b] for b in label])


@dataclass(frozen=True, slots=True)
class DnsQuestion:
    """The first question of a DNS message and its header fields."""

    qid: int
    flags: int
    qdcount: int
    qname: str
    qtype: int
    qclass: int
    ancount: int = 0
    nscount: int = 0
    arcount: int = 0

    @property
    def is_response(self) -> bool:
        """The QR bit."""
        return bool(self.flags & 0x8000)

    @property
    def opcode(self) -> int:
        """0 QUERY, 4 NOTIFY, 5 UPDATE, ..."""
        return (self.flags >> 11) & 0xF

    @property
    def qtype_name(self) -> str:
        """``AAAA``, ``TXT``, ... or ``TYPE<n>`` (RFC 3597)."""
        return QTYPE_NAMES.get(self.qtype) or f"TYPE{self.qtype}"


def read_name(msg: bytes, pos: int) -> tuple[str, int]:
    """The name at offset ``pos`` of a whole DNS message, and the offset just past it
    (past its first compression pointer, if any); bounded as the module docstring says.

    Raises:
        WireError: truncated, too long, an unknown label type, or a bad or looping pointer.
    """
    labels: list[str] = []
    end = len(msg)
    wire = 1  # the root label's zero byte
    hops = 0
    after = -1  # offset after the name where it started: set at the first pointer or root
    while True:
        if pos >= end:
            raise WireError("name runs past the message")
        n = msg[pos]
        if n == 0:
            return ".".join(labels), (pos + 1 if after < 0 else after)
        kind = n & 0xC0
        if kind == 0xC0:
            if pos + 1 >= end:
                raise WireError("truncated compression pointer")
            target = ((n & 0x3F) << 8) | msg[pos + 1]
            if after < 0:
                after = pos + 2
            hops += 1
            if hops > MAX_POINTER_HOPS:
                raise WireError(f"more than {MAX_POINTER_HOPS} compression pointers")
            if not 12 <= target < pos:
                raise WireError(f"compression pointer at {pos} to {target}: not backward")
            pos = target
            continue
        if kind:
            raise WireError(f"label type 0x{kind:02x}")
        wire += n + 1
        if wire > MAX_NAME_WIRE:
            raise WireError(f"name longer than {MAX_NAME_WIRE} octets")
        start = pos + 1
        pos = start + n
        if pos > end:
            raise WireError("label runs past the message")
        labels.append(escape_label(msg[start:pos]))


def parse_query(payload: bytes | memoryview) -> DnsQuestion:
    """The header and first question of a DNS message (a UDP payload).

    Raises:
        WireError: shorter than a header, or a first question that is cut off or malformed.
    """
    msg = bytes(payload)
    if len(msg) < _HEADER.size:
        raise WireError(f"DNS header truncated ({len(msg)} bytes)")
    qid, flags, qd, an, ns, ar = _HEADER.unpack_from(msg)
    if qd == 0:
        return DnsQuestion(qid, flags, 0, "", 0, 0, an, ns, ar)
    qname, off = read_name(msg, _HEADER.size)
    if off + _QTAIL.size > len(msg):
        raise WireError("question truncated after the name")
    qtype, qclass = _QTAIL.unpack_from(msg, off)
    return DnsQuestion(qid, flags, qd, qname, qtype, qclass, an, ns, ar)


def parse_tcp_query(payload: bytes | memoryview) -> DnsQuestion:
    """Like :func:`parse_query` for the first DNS message of a TCP stream segment.

    The 2-byte length prefix is checked (a message is at least a header); a segment that
    holds only the start of the message still parses if the question is complete.

    Raises:
        WireError: see :func:`parse_query`.
    """
    view = memoryview(payload)
    if len(view) < _TCP_LEN.size:
        raise WireError("DNS-over-TCP length prefix truncated")
    (n,) = _TCP_LEN.unpack_from(view)
    if n < _HEADER.size:
        raise WireError(f"DNS-over-TCP message length {n}")
    return parse_query(view[_TCP_LEN.size : _TCP_LEN.size + n])
