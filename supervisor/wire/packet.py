"""IPv4/IPv6 packets as NFLOG hands them over: network header, then TCP/UDP/ICMP header.

Strategy: sans-I/O, one pass with ``struct.unpack_from``, no copies (``l4_payload`` is a
``memoryview`` into the caller's bytes). NFLOG cuts packets at ``copy_range``, so a packet
shorter than its header says is normal: :func:`parse_ip` returns what is there and sets
``truncated``. Bytes that cannot be an IP packet at all (wrong version, header length below
the minimum, total length shorter than the header, fewer than the fixed 20/40 header bytes,
a TCP data offset below 5, a UDP length below 8, more than :data:`MAX_EXT_HEADERS` IPv6
extension headers) raise :class:`~coi_watch.errors.WireError`.

Invariant (h11's, tested with hypothesis on random and mutated captured packets): whatever
bytes arrive, :func:`parse_ip` either returns an :class:`IpPacket` or raises ``WireError``,
never another exception; the IPv6 extension-header walk is bounded.

Fast path: :func:`peek_ip` returns only the 5-tuple and the transport payload as a plain
tuple, for the NFLOG source's hot loop. It decodes the common shapes itself (IPv4 without
options and IPv6 without extension headers, unfragmented, carrying TCP or UDP with a whole
transport header) with one ``unpack_from`` per header, and hands everything else to
:func:`parse_ip`; it agrees with :func:`parse_ip` (a hypothesis property over captured,
built and mutated packets): the same fields, or both raise ``WireError``.

Details:

* IPv4 ``tot_len == 0`` (BIG TCP / GSO on the output path) means "as captured".
* Trailing bytes beyond the IP total length (link-layer padding) are not L4 payload.
* A non-first fragment (IPv4 offset != 0, or an IPv6 fragment header with offset != 0) has
  no L4 header: ports and flags stay 0, ``fragment`` is true.
* IPv6 extension headers (hop-by-hop 0, routing 43, fragment 44, destination options 60,
  AH 51, mobility 135, HIP 139, shim6 140) are skipped; ESP (50) and "no next header" (59)
  end the walk with no L4 header.
* Addresses are ``inet_ntop`` text (RFC 5952), as ``conntrack``, ``ss`` and
  :mod:`coi_watch.wire.conntrack` print them.

Sources: RFC 791 (IPv4), RFC 8200 (IPv6 and extension headers), RFC 4302 (AH length in
32-bit words), RFC 9293 (TCP), RFC 768 (UDP), RFC 792/4443 (ICMP/ICMPv6).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeAlias

from coi_watch.errors import WireError

__all__ = (
    "MAX_EXT_HEADERS",
    "PROTO_NAMES",
    "TCP_FLAGS",
    "IpPacket",
    "IpPeek",
    "parse_ip",
    "peek_ip",
    "proto_name",
    "tcp_flag_names",
)

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58

PROTO_NAMES: Mapping[int, str] = MappingProxyType(
    {IPPROTO_ICMP: "icmp", IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_ICMPV6: "icmpv6"}
)
"""The protocol names events use; any other protocol is its number as a string."""

# RFC 9293 section 3.1 (plus RFC 3168 ECE/CWR and RFC 3540 NS, the low bit of byte 12).
TCP_FLAGS: Mapping[int, str] = MappingProxyType(
    {
        0x001: "FIN",
        0x002: "SYN",
        0x004: "RST",
        0x008: "PSH",
        0x010: "ACK",
        0x020: "URG",
        0x040: "ECE",
        0x080: "CWR",
        0x100: "NS",
    }
)

# RFC 8200 section 4 and the IANA "IPv6 Extension Header Types" registry: next-header value
# -> how to get the header length from its second byte (8-octet units beyond the first 8,
# or for AH, RFC 4302, 4-octet units minus 2).
_EXT_LEN_UNIT: Mapping[int, tuple[int, int]] = MappingProxyType(
    {
        0: (8, 8),  # Hop-by-Hop Options: (hdr_ext_len + 1) * 8
        43: (8, 8),  # Routing
        60: (8, 8),  # Destination Options
        135: (8, 8),  # Mobility
        139: (8, 8),  # HIP
        140: (8, 8),  # Shim6
        51: (4, 8),  # AH: (payload_len + 2) * 4
    }
)
_IPV6_FRAGMENT = 44  # fixed 8 bytes: next header, reserved, be16 offset<<3 | flags, id
_IPV6_NO_L4 = frozenset({50, 59})  # ESP (encrypted from here), No Next Header

MAX_EXT_HEADERS = 16
"""More IPv6 extension headers than this in one packet is treated as garbage (WireError)."""

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_PORTS = struct.Struct("!HH")
_BE16 = struct.Struct("!H")
_V4_PEEK = struct.Struct("!2xH2xH1xB")  # IPv4 tot_len, frag_off, protocol (RFC 791)
_V6_PEEK = struct.Struct("!4xHB")  # IPv6 payload length, next header (RFC 8200)
_UDP_PEEK = struct.Struct("!HHH")  # source port, destination port, length (RFC 768)
_TCP_PEEK = struct.Struct("!HH8xB")  # source port, destination port, data offset (RFC 9293)


@dataclass(frozen=True, slots=True)
class IpPacket:
    """One parsed IP packet.

    ``l4_offset`` is where the transport header starts (it may lie beyond a truncated
    capture; -1 when it could not be located: IPv6 extension headers cut off, ESP, No Next
    Header). ``l4_payload`` is a
    view of the transport payload (TCP/UDP data; for other protocols everything after the
    extension headers) that is actually present. ``length`` is the packet length the IP
    header claims; ``truncated`` says the capture holds less than that, or less than the
    transport header. ``icmp_type``/``icmp_code`` are -1 unless ``proto`` is ICMP/ICMPv6.
    """

    family: int
    src: str
    dst: str
    proto: int
    ttl: int
    length: int
    l4_offset: int
    l4_payload: memoryview
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0
    icmp_type: int = -1
    icmp_code: int = -1
    fragment: bool = False
    truncated: bool = False

    @property
    def proto_name(self) -> str:
        """``tcp``, ``udp``, ``icmp``, ``icmpv6`` or the protocol number as a string."""
        return proto_name(self.proto)

    @property
    def is_syn(self) -> bool:
        """A TCP SYN without ACK: the first packet of a connection attempt."""
        return self.proto == IPPROTO_TCP and self.tcp_flags & 0x12 == 0x02


def proto_name(proto: int) -> str:
    """The event name of an IP protocol number (see :data:`PROTO_NAMES`)."""
    return PROTO_NAMES.get(proto) or str(proto)


def tcp_flag_names(flags: int) -> tuple[str, ...]:
    """``("SYN", "ACK")`` for ``0x012``: the set bits, lowest first."""
    return tuple(name for bit, name in TCP_FLAGS.items() if flags & bit)


def parse_ip(payload: bytes | memoryview) -> IpPacket:
    """Parse an IPv4 or IPv6 packet starting at its network header.

    Raises:
        WireError: the bytes cannot be an IP packet (see the module docstring).
    """
    view = memoryview(payload)
    if not view:
        raise WireError("empty packet")
    version = view[0] >> 4
    if version == 4:
        return _parse_v4(view)
    if version == 6:
        return _parse_v6(view)
    raise WireError(f"IP version {version}")


IpPeek: TypeAlias = tuple[int, int, str, str, int, int, bytes]
"""What :func:`peek_ip` returns: ``(family, proto, src, dst, sport, dport, l4_payload)``,
each as :class:`IpPacket` has it (``l4_payload`` as ``bytes``)."""


# Address text by raw address (4 or 16 bytes): a container talks to few peers, so the hot
# path mostly skips inet_ntop. Bounded: emptied when full.
_ADDR_TEXT: dict[bytes, str] = {}
_ADDR_TEXT_MAX = 4096


def _addr_text(raw: bytes) -> str:
    text = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
    if len(_ADDR_TEXT) >= _ADDR_TEXT_MAX:
        _ADDR_TEXT.clear()
    _ADDR_TEXT[raw] = text
    return text


def peek_ip(payload: bytes) -> IpPeek:
    """The 5-tuple and transport payload of an IP packet (see :data:`IpPeek`); agrees with
    :func:`parse_ip`.

    Raises:
        WireError: exactly when :func:`parse_ip` does.
    """
    cap = len(payload)
    family = proto = l4 = end = 0
    if cap >= 28 and payload[0] == 0x45:  # IPv4 without options
        tot_len, frag, proto = _V4_PEEK.unpack_from(payload)
        if tot_len >= 20 and not frag & 0x1FFF:  # tot_len 0 (GSO), fragments: parse_ip
            family, l4, end = 4, 20, min(tot_len, cap)
            src, dst = payload[12:16], payload[16:20]
    elif cap >= 48 and payload[0] >> 4 == 6:  # IPv6; extension headers: parse_ip
        plen, proto = _V6_PEEK.unpack_from(payload)
        if plen:  # 0: jumbogram
            family, l4, end = 6, 40, min(40 + plen, cap)
            src, dst = payload[8:24], payload[24:40]
    data = None
    if family:
        if proto == IPPROTO_UDP and end - l4 >= 8:
            sport, dport, ulen = _UDP_PEEK.unpack_from(payload, l4)
            if ulen >= 8:  # 0 (IPv6 jumbogram) and garbage: parse_ip
                data = payload[l4 + 8 : min(end, l4 + ulen)]
        elif proto == IPPROTO_TCP and end - l4 >= 14:
            sport, dport, doff = _TCP_PEEK.unpack_from(payload, l4)
            if doff >= 0x50:  # a data offset below 5 words: parse_ip raises
                data = payload[l4 + (doff >> 4) * 4 : end]
    if data is not None:
        text = _ADDR_TEXT.get
        src_text = text(src) or _addr_text(src)
        dst_text = text(dst) or _addr_text(dst)
        return family, proto, src_text, dst_text, sport, dport, data
    ip = parse_ip(payload)  # options, extension headers, ICMP, fragments, cut headers...
    return ip.family, ip.proto, ip.src, ip.dst, ip.sport, ip.dport, bytes(ip.l4_payload)


def _parse_v4(view: memoryview) -> IpPacket:
    cap = len(view)
    if cap < 20:
        raise WireError(f"IPv4 header truncated ({cap} bytes)")
    vihl, _tos, tot_len, _id, frag, ttl, proto, _csum, src, dst = _IPV4.unpack_from(view)
    ihl = (vihl & 0x0F) * 4
    if ihl < 20:
        raise WireError(f"IPv4 header length {ihl}")
    if tot_len == 0:  # BIG TCP / GSO super-packet: length is what was captured
        tot_len = cap
    if tot_len < ihl:
        raise WireError(f"IPv4 total length {tot_len} < header length {ihl}")
    end = min(tot_len, cap)
    return _transport(
        4,
        socket.inet_ntop(socket.AF_INET, src),
        socket.inet_ntop(socket.AF_INET, dst),
        proto,
        ttl,
        tot_len,
        view,
        ihl,
        end,
        fragment=bool(frag & 0x1FFF),
        truncated=tot_len > cap,
    )


def _parse_v6(view: memoryview) -> IpPacket:
    cap = len(view)
    if cap < 40:
        raise WireError(f"IPv6 header truncated ({cap} bytes)")
    _vtcfl, plen, nxt, hlim, src, dst = _IPV6.unpack_from(view)
    length = 40 + plen if plen else cap  # payload length 0: jumbogram / BIG TCP
    end = min(length, cap)
    truncated = length > cap
    off, fragment = 40, False
    for _ in range(MAX_EXT_HEADERS + 1):
        unit = _EXT_LEN_UNIT.get(nxt)
        if unit is None and nxt != _IPV6_FRAGMENT:
            break
        if off + 8 > end:  # the extension header itself is missing
            if not truncated:
                raise WireError("IPv6 extension header runs past the packet")
            return _opaque(6, src, dst, nxt, hlim, length, view, fragment, truncated=True)
        if unit is None:  # fragment header: 8 bytes, offset in the upper 13 bits of +2
            fragment = fragment or bool(_BE16.unpack_from(view, off + 2)[0] & 0xFFF8)
            nxt, off = view[off], off + 8
        else:
            nxt, off = view[off], off + view[off + 1] * unit[0] + unit[1]
    else:
        raise WireError(f"more than {MAX_EXT_HEADERS} IPv6 extension headers")
    if nxt in _IPV6_NO_L4:
        return _opaque(6, src, dst, nxt, hlim, length, view, fragment, truncated=truncated)
    if off > end:
        if not truncated:
            raise WireError("IPv6 extension headers run past the packet")
        return _opaque(6, src, dst, nxt, hlim, length, view, fragment, truncated=True)
    return _transport(
        6,
        socket.inet_ntop(socket.AF_INET6, src),
        socket.inet_ntop(socket.AF_INET6, dst),
        nxt,
        hlim,
        length,
        view,
        off,
        end,
        fragment=fragment,
        truncated=truncated,
    )


def _opaque(
    family: int,
    src: bytes,
    dst: bytes,
    proto: int,
    ttl: int,
    length: int,
    view: memoryview,
    fragment: bool,
    *,
    truncated: bool,
) -> IpPacket:
    """A packet whose transport header we cannot reach."""
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    return IpPacket(
        family=family,
        src=socket.inet_ntop(af, src),
        dst=socket.inet_ntop(af, dst),
        proto=proto,
        ttl=ttl,
        length=length,
        l4_offset=-1,
        l4_payload=view[0:0],
        fragment=fragment,
        truncated=truncated,
    )


def _transport(
    family: int,
    src: str,
    dst: str,
    proto: int,
    ttl: int,
    length: int,
    view: memoryview,
    l4: int,
    end: int,
    *,
    fragment: bool,
    truncated: bool,
) -> IpPacket:
    """Decode the transport header at ``l4`` (data present up to ``end``)."""
    avail = end - l4
    sport = dport = flags = 0
    icmp_type = icmp_code = -1
    data_off = l4
    if fragment:
        pass  # a non-first fragment carries no transport header
    elif proto == IPPROTO_TCP:
        if avail >= 4:
            sport, dport = _PORTS.unpack_from(view, l4)
        if avail >= 14:
            doff = (view[l4 + 12] >> 4) * 4
            if doff < 20:
                raise WireError(f"TCP data offset {doff}")
            flags = _BE16.unpack_from(view, l4 + 12)[0] & 0x1FF
        else:
            doff = 20
        data_off = l4 + doff
        truncated = truncated or data_off > end
    elif proto == IPPROTO_UDP:
        if avail >= 4:
            sport, dport = _PORTS.unpack_from(view, l4)
        if avail >= 8:
            ulen = _BE16.unpack_from(view, l4 + 4)[0]
            if ulen < 8 and not (ulen == 0 and family == 6):  # 0: IPv6 jumbogram (RFC 2675)
                raise WireError(f"UDP length {ulen}")
            if ulen:
                end = min(end, l4 + ulen)
        data_off = l4 + 8
        truncated = truncated or data_off > end
    elif proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        if avail >= 2:
            icmp_type, icmp_code = view[l4], view[l4 + 1]
        data_off = min(l4 + 4, end)  # type, code, checksum
        truncated = truncated or avail < 4
    return IpPacket(
        family=family,
        src=src,
        dst=dst,
        proto=proto,
        ttl=ttl,
        length=length,
        l4_offset=l4,
        l4_payload=view[data_off:end] if data_off < end else view[0:0],
        sport=sport,
        dport=dport,
        tcp_flags=flags,
        icmp_type=icmp_type,
        icmp_code=icmp_code,
        fragment=fragment,
        truncated=truncated,
    )
