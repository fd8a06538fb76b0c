"""DNS messages as NFLOG copies them: the question of a query, the answers of a response
(UDP, or TCP with its 2-byte length prefix).

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

Responses (:func:`parse_response`): the first question, then the answer section, of which
A/AAAA addresses, CNAME targets and the smallest of their TTLs are kept. More work is
bounded too: at most :data:`MAX_QUESTIONS` questions (more is garbage, ``WireError``) and
:data:`MAX_ANSWERS` answer records are read, every name through :func:`read_name`. The
question section must be whole; an answer section cut off by the capture (``copy_range``)
or broken part-way keeps the records read before the damage.

Fast path: :func:`peek_query` returns ``(qid, qname, qtype)`` for the NFLOG source's hot
loop. A name of plain labels (no compression pointer, every byte printable ASCII other than
``.`` and ``\\``: what resolvers send) is read with one bounded copy and a length walk; any
other name, and every error, goes through :func:`parse_query`, so the two agree (a
hypothesis property): the same fields, or both raise ``WireError``.

Invariant (h11's, tested with hypothesis on random bytes, hostile names and mutated
messages): whatever bytes arrive, :func:`parse_query`, :func:`parse_tcp_query`,
:func:`parse_response` and :func:`parse_tcp_response` either return a result or raise
:class:`~coi_watch.errors.WireError`, never another exception.

Sources: RFC 1035 sections 3.2.2-3.2.4 (types, classes), 3.4.1 (A), 4.1.1-4.1.4 (header,
question, resource records, compression); RFC 3596 (AAAA); RFC 2181 section 8 (a TTL with
the top bit set means 0); RFC 4343 section 2.1 (escapes); RFC 7766 section 8 (TCP length
prefix).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from coi_watch.errors import WireError

__all__ = (
    "MAX_ANSWERS",
    "MAX_NAME_WIRE",
    "MAX_POINTER_HOPS",
    "MAX_QUESTIONS",
    "QTYPE_NAMES",
    "DnsQuestion",
    "DnsResponse",
    "escape_label",
    "parse_query",
    "parse_response",
    "parse_tcp_query",
    "parse_tcp_response",
    "peek_query",
    "peek_tcp_query",
    "read_name",
)

MAX_NAME_WIRE = 255  # RFC 1035 2.3.4: names are 255 octets or less
MAX_POINTER_HOPS = 16
MAX_QUESTIONS = 16
"""A response claiming more questions than this is refused (real ones carry one)."""
MAX_ANSWERS = 64
"""Answer records read per response; the rest are ignored (bounded work per packet)."""
_HEADER = struct.Struct("!HHHHHH")  # id, flags, qdcount, ancount, nscount, arcount
_ID_QDCOUNT = struct.Struct("!H2xH")  # id, qdcount
_QTAIL = struct.Struct("!HH")  # qtype, qclass
_QTYPE = struct.Struct("!H")
_TCP_LEN = struct.Struct("!H")
_RR = struct.Struct("!HHIH")  # type, class, ttl, rdlength (RFC 1035 4.1.3)
_TYPE_A, _TYPE_CNAME, _TYPE_AAAA = 1, 5, 28
_CLASS_IN = 1

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
_SAFE_OR_DOT = _SAFE + b"."
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


# --------------------------------------------------------------------------- fast path


def peek_query(payload: bytes) -> tuple[int, str, int]:
    """``(qid, qname, qtype)`` of :func:`parse_query` (see the module docstring).

    Raises:
        WireError: exactly when :func:`parse_query` does.
    """
    if len(payload) >= _HEADER.size:
        qid, qdcount = _ID_QDCOUNT.unpack_from(payload)
        if not qdcount:
            return qid, "", 0
        # The name in wire form, at most 255 octets: lengths become dots as they are walked.
        name = bytearray(payload[12 : 12 + MAX_NAME_WIRE])
        i = labels = 0
        try:
            while n := name[i]:  # IndexError: past the message or past 255 octets
                if n > 63:
                    break  # compression pointer or label type: the careful path
                name[i] = 0x2E
                i += n + 1
                labels += 1
            else:
                text = name[1:i]
                # Plain labels only: no byte to escape, and every dot is one of ours.
                if not text.translate(None, _SAFE_OR_DOT) and name.count(0x2E, 0, i) == labels:
                    qtail = 12 + i + 1
                    if qtail + 4 <= len(payload):
                        return (
                            qid,
                            text.decode("ascii").lower(),
                            _QTYPE.unpack_from(payload, qtail)[0],
                        )
        except IndexError:
            pass
    q = parse_query(payload)
    return q.qid, q.qname, q.qtype


def peek_tcp_query(payload: bytes) -> tuple[int, str, int]:
    """:func:`peek_query` of the first message of a DNS-over-TCP segment.

    Raises:
        WireError: exactly when :func:`parse_tcp_query` does.
    """
    if len(payload) >= _TCP_LEN.size:
        (n,) = _TCP_LEN.unpack_from(payload)
        if n >= _HEADER.size:
            return peek_query(payload[_TCP_LEN.size : _TCP_LEN.size + n])
    q = parse_tcp_query(payload)
    return q.qid, q.qname, q.qtype


# --------------------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True)
class DnsResponse:
    """What a DNS response resolved: its first question, the header ``rcode`` (0 NOERROR,
    3 NXDOMAIN, ...), the A/AAAA addresses (``inet_ntop`` text) and CNAME targets
    (presentation form, like ``qname``) of the answer section in order, and the smallest
    TTL among those records (0 when there are none)."""

    qid: int
    rcode: int
    qname: str
    qtype: int
    addresses: tuple[str, ...] = ()
    cnames: tuple[str, ...] = ()
    ttl: int = 0


def parse_response(payload: bytes | memoryview) -> DnsResponse:
    """The question and answers of a DNS response (a UDP payload); bounded as the module
    docstring says. Records of other types or classes are skipped; so is a CNAME whose
    target does not parse or runs past its record.

    Raises:
        WireError: not a response (QR clear), a header or question section that is cut off
            or malformed, or more than :data:`MAX_QUESTIONS` questions.
    """
    msg = bytes(payload)
    q = parse_query(msg)
    if not q.is_response:
        raise WireError("not a DNS response (QR bit clear)")
    if q.qdcount > MAX_QUESTIONS:
        raise WireError(f"{q.qdcount} questions in a response")
    end = len(msg)
    pos = _HEADER.size
    for _ in range(q.qdcount):
        pos = read_name(msg, pos)[1] + _QTAIL.size
        if pos > end:
            raise WireError("question section truncated")
    addresses: list[str] = []
    cnames: list[str] = []
    ttl = -1
    for _ in range(min(q.ancount, MAX_ANSWERS)):
        try:
            pos = read_name(msg, pos)[1]
        except WireError:
            break  # cut off by copy_range, or hostile: keep what was read
        rdata = pos + _RR.size
        if rdata > end:
            break
        rtype, rclass, rttl, rdlen = _RR.unpack_from(msg, pos)
        pos = rdata + rdlen
        if pos > end:
            break
        if rclass != _CLASS_IN:
            continue
        if rtype == _TYPE_A and rdlen == 4:
            addresses.append(socket.inet_ntop(socket.AF_INET, msg[rdata:pos]))
        elif rtype == _TYPE_AAAA and rdlen == 16:
            addresses.append(socket.inet_ntop(socket.AF_INET6, msg[rdata:pos]))
        elif rtype == _TYPE_CNAME:
            try:
                target, after = read_name(msg, rdata)
            except WireError:
                continue
            if after > pos:
                continue
            cnames.append(target)
        else:
            continue
        if rttl >= 0x80000000:  # RFC 2181 section 8
            rttl = 0
        ttl = rttl if ttl < 0 or rttl < ttl else ttl
    return DnsResponse(q.qid, q.flags & 0xF, q.qname, q.qtype, tuple(addresses),
                       tuple(cnames), max(ttl, 0))  # fmt: skip


def parse_tcp_response(payload: bytes | memoryview) -> DnsResponse:
    """Like :func:`parse_response` for the first message of a DNS-over-TCP segment (the
    2-byte length prefix first; a segment holding only the start of the message keeps the
    records it holds).

    Raises:
        WireError: see :func:`parse_response`; also a missing or impossible length prefix.
    """
    view = memoryview(payload)
    if len(view) < _TCP_LEN.size:
        raise WireError("DNS-over-TCP length prefix truncated")
    (n,) = _TCP_LEN.unpack_from(view)
    if n < _HEADER.size:
        raise WireError(f"DNS-over-TCP message length {n}")
    return parse_response(view[_TCP_LEN.size : _TCP_LEN.size + n])
