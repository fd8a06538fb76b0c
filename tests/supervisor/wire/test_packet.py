"""Tests for coi_watch.wire.packet: captured packets, hand-built edge cases, fuzzing, live SYNs."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.wire_fixtures import load_module, read_hex

from coi_watch.errors import WireError
from coi_watch.wire import nflog
from coi_watch.wire.packet import (
    MAX_EXT_HEADERS,
    IpPacket,
    IpPeek,
    parse_ip,
    peek_ip,
    proto_name,
    tcp_flag_names,
)

WIRE = Path(__file__).resolve().parents[2] / "fixtures" / "wire"
NFLOG = WIRE / "nflog"




def _frame(path: Path) -> bytes:
    return read_hex(path)


# Every captured packet with the IP view the capture recorded for it.
CAPTURED: list[tuple[str, bytes, dict[str, Any]]] = [
    (f"{p.stem}#{i}", bytes.fromhex(rec["payload"]), rec["ip"])
    for p in sorted(NFLOG.glob("*.json"))
    for i, rec in enumerate(json.loads(p.read_text())["records"])
]
PAYLOADS = [payload for _, payload, _ in CAPTURED]


def as_dict(ip: IpPacket) -> dict[str, Any]:
    d = {name: getattr(ip, name) for name in IpPacket.__dataclass_fields__}
    d["l4_payload"] = bytes(ip.l4_payload).hex()
    return d


def ipv4(payload: bytes, proto: int = 17, *, tot_len: int | None = None, ihl: int = 5,
         frag: int = 0, options: bytes = b"") -> bytes:  # fmt: skip
    total = 20 + len(options) + len(payload) if tot_len is None else tot_len
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, frag, 64, proto, 0,
                      bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]))  # fmt: skip
    return hdr + options + payload


def ipv6(payload: bytes, nxt: int, *, plen: int | None = None) -> bytes:
    src = socket.inet_pton(socket.AF_INET6, "2001:2::1")
    dst = socket.inet_pton(socket.AF_INET6, "2001:2::2")
    n = len(payload) if plen is None else plen
    return struct.pack("!IHBB16s16s", 0x60000000, n, nxt, 64, src, dst) + payload


def ext(nxt: int, length_units: int = 0) -> bytes:
    """A generic (8-octet unit) IPv6 extension header of (units+1)*8 bytes."""
    return bytes([nxt, length_units]) + b"\x01\x00" * (3 + 4 * length_units)


def udp(sport: int, dport: int, data: bytes, ulen: int | None = None) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data) if ulen is None else ulen, 0) + data


def tcp(sport: int, dport: int, flags: int, data: bytes = b"", doff: int = 5) -> bytes:
    hdr = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, doff << 4, flags, 1024, 0, 0)
    return hdr + b"\x01" * (doff * 4 - 20) + data


# --------------------------------------------------------------------------- captured packets


def test_captured_packets_cover_both_families_and_protocols() -> None:
    seen = {(ip["family"], ip["proto"]) for _, _, ip in CAPTURED if "error" not in ip}
    assert {(4, 17), (4, 6), (4, 1), (6, 17), (6, 6), (6, 58)} <= seen


@pytest.mark.parametrize(("name", "payload", "want"), CAPTURED, ids=[c[0] for c in CAPTURED])
def test_captured_packet_parses_as_recorded(
    name: str, payload: bytes, want: dict[str, Any]
) -> None:
    assert as_dict(parse_ip(payload)) == want


def test_captured_syn_flags() -> None:
    (pkt,) = nflog.parse(_frame(NFLOG / "syn_v4.hex"))
    ip = parse_ip(pkt.payload)
    assert ip.is_syn and tcp_flag_names(ip.tcp_flags) == ("SYN",)
    assert ip.proto_name == "tcp" and ip.dport == 53 and bytes(ip.l4_payload) == b""


@pytest.mark.parametrize("payload", PAYLOADS)
def test_every_prefix_is_truncated_or_refused(payload: bytes) -> None:
    full = parse_ip(payload)
    for n in range(len(payload)):
        try:
            cut = parse_ip(payload[:n])
        except WireError:
            assert n < (20 if full.family == 4 else 40)
            continue
        assert cut.truncated, n
        assert (cut.family, cut.src, cut.dst, cut.proto) == (
            full.family, full.src, full.dst, full.proto)  # fmt: skip
        assert bytes(cut.l4_payload) == bytes(full.l4_payload)[: len(cut.l4_payload)]


# --------------------------------------------------------------------------- IPv4


def test_ipv4_udp_basic() -> None:
    ip = parse_ip(ipv4(udp(5353, 53, b"query")))
    assert (ip.family, ip.src, ip.dst, ip.proto_name, ip.ttl) == (
        4, "198.18.0.1", "198.18.0.2", "udp", 64)  # fmt: skip
    assert (ip.sport, ip.dport, ip.l4_offset, bytes(ip.l4_payload)) == (5353, 53, 20, b"query")
    assert not ip.truncated and not ip.fragment and ip.icmp_type == -1


def test_ipv4_options_move_the_transport_header() -> None:
    ip = parse_ip(ipv4(tcp(1, 443, 0x02), 6, ihl=7, options=b"\x01" * 8))
    assert (ip.l4_offset, ip.dport, ip.is_syn) == (28, 443, True)


def test_ipv4_trailing_padding_is_not_payload() -> None:
    ip = parse_ip(ipv4(udp(1, 53, b"ab")) + b"\0" * 16)
    assert bytes(ip.l4_payload) == b"ab" and not ip.truncated


def test_ipv4_total_length_zero_means_as_captured() -> None:
    ip = parse_ip(ipv4(tcp(1, 2, 0x10, b"x" * 100), 6, tot_len=0))
    assert ip.length == 140 and len(ip.l4_payload) == 100 and not ip.truncated


def test_ipv4_non_first_fragment_has_no_ports() -> None:
    ip = parse_ip(ipv4(b"\x12\x34\x00\x35rest", 17, frag=0x2000 | 185))
    assert ip.fragment and (ip.sport, ip.dport) == (0, 0)
    first = parse_ip(ipv4(udp(1, 53, b"x"), frag=0x2000))  # MF set, offset 0: has ports
    assert not first.fragment and first.dport == 53


def test_icmp_fields() -> None:
    ip = parse_ip(ipv4(b"\x08\x00\x00\x00\x00\x07\x00\x01data", 1))
    assert (ip.proto_name, ip.icmp_type, ip.icmp_code, bytes(ip.l4_payload)) == (
        "icmp", 8, 0, b"\x00\x07\x00\x01data")  # fmt: skip


@pytest.mark.parametrize(
    ("buf", "why"),
    [
        (b"", "empty"),
        (b"\x45" + b"\0" * 18, "19 bytes"),
        (b"\x55" + b"\0" * 40, "version 5"),
        (ipv4(b"", ihl=4), "ihl 4"),
        (ipv4(b"x" * 8, tot_len=12), "total length below header"),
        (ipv4(tcp(1, 2, 2, doff=4), 6), "TCP data offset 4"),
        (ipv4(udp(1, 2, b"", ulen=7)), "UDP length 7"),
        (b"\x60" + b"\0" * 38, "39-byte IPv6"),
    ],
)
def test_garbage_raises_wire_error(buf: bytes, why: str) -> None:
    with pytest.raises(WireError):
        parse_ip(buf)


def test_short_transport_headers_are_truncated_not_errors() -> None:
    ip = parse_ip(ipv4(b"\x00\x01\x00\x35\x00", 6, tot_len=45))  # 5 bytes of TCP
    assert ip.truncated and ip.dport == 53 and ip.tcp_flags == 0
    assert parse_ip(ipv4(b"\x00\x01", 17, tot_len=22)).truncated


# --------------------------------------------------------------------------- IPv6


def test_ipv6_extension_headers_are_walked() -> None:
    # hop-by-hop (8 B) -> destination options (16 B) -> fragment (first, M set) -> TCP
    chain = ext(60) + ext(44, 1) + struct.pack("!BBHI", 6, 0, 0x0001, 9)
    buf = ipv6(chain + tcp(1234, 22, 0x02), 0)
    ip = parse_ip(buf)
    assert (ip.family, ip.proto, ip.dport, ip.is_syn, ip.fragment) == (6, 6, 22, True, False)
    assert ip.l4_offset == 40 + len(chain) and ip.src == "2001:2::1"


def test_ipv6_ah_length_is_in_four_octet_units() -> None:
    ah = bytes([17, 4]) + b"\0" * 22  # (4 + 2) * 4 = 24 bytes
    ip = parse_ip(ipv6(ah + udp(1, 53, b"q"), 51))
    assert (ip.proto, ip.l4_offset, bytes(ip.l4_payload)) == (17, 64, b"q")


def test_ipv6_non_first_fragment() -> None:
    frag = struct.pack("!BBHI", 17, 0, (100 << 3) | 1, 7)
    ip = parse_ip(ipv6(frag + b"\x00\x01\x00\x35", 44))
    assert ip.fragment and ip.dport == 0


def test_ipv6_esp_and_no_next_header_end_the_walk() -> None:
    for nxt in (50, 59):
        ip = parse_ip(ipv6(b"\x00" * 16, nxt))
        assert (ip.proto, ip.l4_offset, bytes(ip.l4_payload)) == (nxt, -1, b"")


def test_ipv6_extension_header_bound() -> None:
    ok = b"".join(ext(60) for _ in range(MAX_EXT_HEADERS - 1)) + ext(17)
    assert parse_ip(ipv6(ok + udp(1, 53, b""), 60)).dport == 53
    too_many = b"".join(ext(60) for _ in range(MAX_EXT_HEADERS)) + ext(17)
    with pytest.raises(WireError, match="extension headers"):
        parse_ip(ipv6(too_many + udp(1, 53, b""), 60))


def test_ipv6_cut_extension_header() -> None:
    buf = ipv6(ext(60, 2) + udp(1, 53, b""), 0)
    ip = parse_ip(buf[:44])
    assert ip.truncated and ip.l4_offset == -1 and ip.proto == 0
    with pytest.raises(WireError):  # not cut by capture: the header really is too long
        parse_ip(ipv6(ext(60, 2), 0))


def test_proto_names() -> None:
    assert [proto_name(p) for p in (1, 6, 17, 58, 132)] == ["icmp", "tcp", "udp", "icmpv6", "132"]
    assert tcp_flag_names(0x1FF) == ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")


# --------------------------------------------------------------------------- fuzzing
# Invariant: any bytes -> an IpPacket, or WireError; never another exception.


def _survives(buf: bytes) -> IpPacket | None:
    try:
        ip = parse_ip(buf)
    except WireError:
        return None
    assert len(ip.l4_payload) <= len(buf)
    return ip


@settings(max_examples=500)
@given(st.sampled_from([0x45, 0x46, 0x4F, 0x60, 0x00]), st.binary(max_size=200))
def test_fuzz_random_bytes(first: int, rest: bytes) -> None:
    _survives(bytes([first]) + rest)


@settings(max_examples=500)
@given(st.data())
def test_fuzz_mutated_captures(data: st.DataObject) -> None:
    buf = bytearray(data.draw(st.sampled_from(PAYLOADS)))
    for _ in range(data.draw(st.integers(1, 6))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    _survives(bytes(buf[: data.draw(st.integers(0, len(buf)))]))


@settings(max_examples=300)
@given(st.lists(st.sampled_from([0, 43, 44, 51, 60, 135, 139, 140, 6, 17, 50]), max_size=20),
       st.binary(max_size=64))  # fmt: skip
def test_fuzz_extension_chains(kinds: list[int], tail: bytes) -> None:
    body = b"".join(bytes([k, len(tail) % 3]) + tail[:6].ljust(6, b"\0") for k in kinds)
    _survives(ipv6(body + tail, kinds[0] if kinds else 59))


# --------------------------------------------------------------------------- fast path
# peek_ip agrees with parse_ip: the same 5-tuple and transport payload, or both WireError.


def _rich(buf: bytes) -> IpPeek | None:
    try:
        ip = parse_ip(buf)
    except WireError:
        return None
    return ip.family, ip.proto, ip.src, ip.dst, ip.sport, ip.dport, bytes(ip.l4_payload)


def _fast(buf: bytes) -> IpPeek | None:
    try:
        peeked = peek_ip(buf)
    except WireError:
        return None
    assert type(peeked[6]) is bytes
    return peeked


def _agree(buf: bytes) -> IpPeek | None:
    rich = _rich(buf)
    assert _fast(buf) == rich, buf.hex()
    return rich


SHAPES = [
    ipv4(udp(5353, 53, b"query")),
    ipv4(udp(5353, 53, b"query")) + b"\0" * 16,  # link-layer padding
    ipv4(udp(5353, 53, b"query", ulen=10)),  # UDP length shorter than the datagram
    ipv4(udp(5353, 53, b"query", ulen=300)),  # longer: cut at the IP length
    ipv4(udp(1, 2, b"", ulen=7)),
    ipv4(tcp(1, 443, 0x02), 6),
    ipv4(tcp(1, 443, 0x18, b"data", doff=8), 6),
    ipv4(tcp(1, 443, 0x18, b"data", doff=15), 6, tot_len=50),  # options past the capture
    ipv4(tcp(1, 2, 2, doff=4), 6),
    ipv4(tcp(1, 443, 0x02), 6, ihl=7, options=b"\x01" * 8),
    ipv4(tcp(1, 2, 0x10, b"x" * 100), 6, tot_len=0),
    ipv4(tcp(1, 2, 0x10, b"x" * 100), 6, tot_len=15),
    ipv4(b"\x12\x34\x00\x35rest", 17, frag=0x2000 | 185),
    ipv4(udp(1, 53, b"x"), frag=0x2000),
    ipv4(udp(1, 53, b"x"), frag=0x4000),
    ipv4(b"\x08\x00\x00\x00\x00\x07\x00\x01data", 1),
    ipv4(b"\x00\x01\x00\x35\x00", 6, tot_len=45),
    ipv6(udp(1, 53, b"q"), 17),
    ipv6(udp(1, 53, b"q", ulen=0), 17),
    ipv6(udp(1, 53, b"q"), 17, plen=0),
    ipv6(udp(1, 53, b"q"), 17, plen=500),
    ipv6(tcp(1, 22, 0x02, b"xyz"), 6),
    ipv6(tcp(1, 22, 0x02), 6, plen=10),
    ipv6(ext(60) + ext(44, 1) + struct.pack("!BBHI", 6, 0, 1, 9) + tcp(1234, 22, 0x02), 0),
    ipv6(bytes([17, 4]) + b"\0" * 22 + udp(1, 53, b"q"), 51),
    ipv6(b"\x00" * 16, 59),
    ipv6(b"\x08\x00\x00\x00", 58),
]


@pytest.mark.parametrize("buf", PAYLOADS + SHAPES)
def test_peek_ip_agrees_with_parse_ip(buf: bytes) -> None:
    _agree(buf)
    for n in range(len(buf)):  # and on every cut of it
        _agree(buf[:n])


def test_peek_ip_fast_shapes_skip_the_rich_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    # The common shapes never build an IpPacket (that is the point of the fast path).
    import coi_watch.wire.packet as packet

    def refuse(buf: bytes) -> IpPacket:
        raise AssertionError("parse_ip called")

    monkeypatch.setattr(packet, "parse_ip", refuse)
    assert peek_ip(ipv4(udp(5353, 53, b"query"))) == (
        4, 17, "198.18.0.1", "198.18.0.2", 5353, 53, b"query")  # fmt: skip
    assert peek_ip(ipv6(tcp(1, 22, 0x02, b"xyz"), 6)) == (
        6, 6, "2001:2::1", "2001:2::2", 1, 22, b"xyz")  # fmt: skip


@settings(max_examples=1000)
@given(st.sampled_from([0x45, 0x46, 0x4F, 0x60, 0x6F, 0x00]), st.binary(max_size=120))
def test_fuzz_peek_ip_agrees_on_random_bytes(first: int, rest: bytes) -> None:
    _agree(bytes([first]) + rest)


@settings(max_examples=1000)
@given(st.data())
def test_fuzz_peek_ip_agrees_on_mutated_packets(data: st.DataObject) -> None:
    buf = bytearray(data.draw(st.sampled_from(PAYLOADS + SHAPES)))
    for _ in range(data.draw(st.integers(0, 6))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    _agree(bytes(buf[: data.draw(st.integers(0, len(buf)))]))


@settings(max_examples=500)
@given(st.sampled_from([4, 6]), st.sampled_from([6, 17]), st.integers(0, 0xFFFF),
       st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.binary(max_size=40))  # fmt: skip
def test_fuzz_peek_ip_agrees_on_header_fields(
    family: int, proto: int, length: int, l4len: int, doff: int, data: bytes
) -> None:
    # Well-formed framing around hostile length, data-offset and fragment fields.
    l4 = (udp(1, 53, data, ulen=l4len) if proto == 17
          else tcp(1, 53, 2, data)[:12] + bytes([doff]) + tcp(1, 53, 2, data)[13:])  # fmt: skip
    if family == 4:
        _agree(ipv4(l4, proto, tot_len=length % 400, frag=length))
    else:
        _agree(ipv6(l4, proto, plen=length % 400))


# --------------------------------------------------------------------------- live


@pytest.mark.privileged
def test_live_syns_through_nflog() -> None:
    netlab = load_module("coi_fixture_netlab", WIRE / "netlab.py")
    capture = load_module("coi_fixture_nflog_capture", NFLOG / "capture.py")
    with netlab.NetLab() as lab:
        lab.nft(lab.ns_a, capture.RULES_A)
        with lab.nflog(lab.ns_a, capture.GROUP_A) as (sock, _):
            for family, dst, port in (
                (socket.AF_INET, lab.b4, 8081),
                (socket.AF_INET6, lab.b6, 8082),
            ):
                s = lab.socket(lab.ns_a, family, socket.SOCK_STREAM)
                s.setblocking(False)
                s.connect_ex((dst, port))
                s.close()
            got = netlab.recv_until(sock, lambda g: sum(len(nflog.parse(d)) for d in g) >= 2)
    ips = sorted((parse_ip(p.payload) for d in got for p in nflog.parse(d)), key=lambda i: i.family)
    assert [(i.family, i.src, i.dst, i.dport, i.is_syn) for i in ips] == [
        (4, lab.a4, lab.b4, 8081, True),
        (6, lab.a6, lab.b6, 8082, True),
    ]
