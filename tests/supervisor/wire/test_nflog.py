"""Tests for coi_watch.wire.nflog: golden kernel datagrams, builders, fuzzing, a live socket."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.wire_fixtures import load_module, read_hex

from coi_watch.errors import WireError
from coi_watch.wire import dns, nflog, packet
from coi_watch.wire.netlink import NLMSG_DONE, iter_messages
from coi_watch.wire.nfnetlink import (
    Nested,
    NetlinkAck,
    be32,
    decode_into,
    group_mask,
    nfgen_header,
    nla,
    parse_acks,
    split_type,
)

WIRE = Path(__file__).resolve().parents[2] / "fixtures" / "wire"
FIXTURES = WIRE / "nflog"
GOLDEN = sorted(p.stem for p in FIXTURES.glob("*.hex"))




CAPTURE = load_module("coi_fixture_nflog_capture", FIXTURES / "capture.py")


def frame(name: str) -> bytes:
    return read_hex(FIXTURES / f"{name}.hex")


FRAMES = [frame(n) for n in GOLDEN]


def _header(length: int, typ: int, flags: int = 0, seq: int = 0) -> bytes:
    return struct.pack("=IHHII", length, typ, flags, seq, 0)


def packet_message(attrs: bytes, *, family: int = 2, group: int = 5) -> bytes:
    body = struct.pack("!BBH", family, 0, group) + attrs
    return _header(16 + len(body), 0x0400) + body


HDR = nla(1, struct.pack("!HBx", 0x0800, 3))


# --------------------------------------------------------------------------- golden files


def test_enough_golden_captures() -> None:
    assert len(GOLDEN) >= 15
    assert {"batch_qthresh4", "config_ack", "dns_in_v4", "syn_v6", "icmp_echo_v4"} <= set(GOLDEN)


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_datagram_parses_to_expected_records(name: str) -> None:
    assert CAPTURE.document("", frame(name))["records"] == _expected(name)["records"]
    assert [list(a) for a in parse_acks(frame(name))] == _expected(name)["acks"]


def _expected(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return doc


def test_golden_output_hook_fields() -> None:
    (p,) = nflog.parse(frame("dns_a_v4"))
    assert (p.family, p.group, p.hook, p.hw_protocol) == (socket.AF_INET, 5, 3, 0x0800)
    assert (p.prefix, p.mark, p.uid, p.gid, p.indev) == ("dns", 0x2A, 0, 0, 0)
    assert p.outdev > 0 and p.seq is not None and p.seq_global is not None
    assert p.wall_ns == 0  # locally generated skbs carry no timestamp on the output hook


def test_golden_input_hook_fields() -> None:
    (p,) = nflog.parse(frame("dns_in_v4"))
    assert (p.hook, p.prefix, p.uid, p.outdev) == (1, "in-dns", None, 0)
    assert p.indev > 0 and p.hwtype == 1 and len(p.hwaddr) == 17
    assert 1_600_000_000 * 10**9 < p.wall_ns < 4_000_000_000 * 10**9


def test_golden_batch_holds_four_packets_and_done() -> None:
    buf = frame("batch_qthresh4")
    pkts = nflog.parse(buf)
    assert len(pkts) == 4
    assert [p.seq for p in pkts] == list(range(pkts[0].seq or 0, (pkts[0].seq or 0) + 4))
    kinds = [m.type for m in iter_messages(buf)]
    assert kinds == [0x0400] * 4 + [NLMSG_DONE]  # the kernel closes a batch with DONE
    names = [dns.parse_query(packet.parse_ip(p.payload).l4_payload).qname for p in pkts]
    assert names == [f"b{i}.example" for i in range(4)]


def test_golden_acks() -> None:
    assert nflog.parse(frame("config_ack")) == []
    assert parse_acks(frame("config_ack")) == [NetlinkAck(seq=2, errno=0)]
    assert parse_acks(frame("config_nack_eperm")) == [NetlinkAck(seq=9, errno=1)]


def test_golden_copy_range_cut() -> None:
    (p,) = nflog.parse(frame("dns_copy_range_60"))
    ip = packet.parse_ip(p.payload)
    assert len(p.payload) == 60 and ip.truncated and ip.length > 60
    with pytest.raises(WireError):
        dns.parse_query(ip.l4_payload)


# --------------------------------------------------------------------------- synthetic


def test_minimal_packet_defaults() -> None:
    (p,) = nflog.parse(packet_message(HDR))
    assert p == nflog.NflogPacket(family=2, group=5, hw_protocol=0x0800, hook=3, payload=b"")
    assert p.seq is None and p.uid is None


def test_unknown_attributes_and_nested_flag_are_tolerated() -> None:
    attrs = HDR + nla(99, b"future") + nla(12, struct.pack("!I", 7)) + nla(16, b"\xaa" * 14)
    attrs += nla(20, nla(1, b"\x81\x00") + nla(2, b"\x00\x05"), nested=True)
    (p,) = nflog.parse(packet_message(attrs))
    assert (p.seq, p.vlan_proto, p.vlan_tci) == (7, 0x8100, 5)


def test_prefix_is_decoded_safely() -> None:
    (p,) = nflog.parse(packet_message(HDR + nla(10, b"a\xff\x00junk")))
    assert p.prefix == "a\\xff"


def test_timestamp_is_wall_ns() -> None:
    (p,) = nflog.parse(packet_message(HDR + nla(3, struct.pack("!QQ", 1_700_000_000, 250_000))))
    assert p.wall_ns == 1_700_000_000_250_000_000


def test_other_messages_are_skipped() -> None:
    done = _header(20, 3) + b"\0" * 4
    ct = _header(20, 0x0100) + b"\x02\0\0\0"
    assert nflog.parse(done + ct + packet_message(HDR))[0].hook == 3


@pytest.mark.parametrize(
    ("attrs", "why"),
    [
        (b"", "no NFULA_PACKET_HDR"),
        (HDR + nla(12, b"\0\0\1"), "3-byte NFULA_SEQ"),
        (HDR + nla(3, b"\0" * 8), "short NFULA_TIMESTAMP"),
        (nla(1, b"\x08\x00"), "short NFULA_PACKET_HDR"),
        (HDR + b"\x03\x00\x09\x00", "attribute shorter than its header"),
    ],
)
def test_malformed_messages_raise_wire_error(attrs: bytes, why: str) -> None:
    with pytest.raises(WireError):
        nflog.parse(packet_message(attrs))


def test_truncated_nfgenmsg_raises() -> None:
    with pytest.raises(WireError):
        nflog.parse(_header(18, 0x0400) + b"\x02\x00\x00\x00")


# --------------------------------------------------------------------------- builders


def test_bind_message_layout() -> None:
    msg = nflog.bind_message(5, seq=2)
    # nlmsghdr: len 28, type ULOG<<8|CONFIG, REQUEST|ACK; nfgenmsg AF_UNSPEC, v0, be16 group
    assert msg[:16] == struct.pack("=IHHII", 28, 0x0401, 0x5, 2, 0)
    assert msg[16:20] == b"\x00\x00\x00\x05"
    assert msg[20:] == struct.pack("=HH", 5, 1) + b"\x01\0\0\0"  # NFULA_CFG_CMD BIND + pad


def test_pf_and_unbind_messages() -> None:
    assert nflog.pf_bind_message(socket.AF_INET6)[16:] == b"\x0a\0\0\0" + nla(1, b"\x03")
    assert nflog.pf_unbind_message(socket.AF_INET)[16:] == b"\x02\0\0\0" + nla(1, b"\x04")
    assert nflog.unbind_message(9)[16:] == b"\0\0\0\x09" + nla(1, b"\x02")


def test_config_message_attributes() -> None:
    msg = nflog.config_message(
        7, copy_range=512, qthresh=64, timeout_cs=1, flags=nflog.NFULNL_CFG_F_SEQ, nlbufsiz=65536
    )
    assert struct.unpack_from("=I", msg)[0] == len(msg)
    assert msg[16:20] == b"\0\0\0\x07"
    assert msg[20:] == (
        nla(2, struct.pack("!IBx", 512, nflog.NFULNL_COPY_PACKET))
        + nla(5, struct.pack("!I", 64))
        + nla(4, struct.pack("!I", 1))
        + nla(3, struct.pack("!I", 65536))
        + nla(6, struct.pack("!H", 1))
    )
    assert nflog.config_message(7)[20:] == nla(2, struct.pack("!IBx", 0xFFFF, 2))
    with pytest.raises(ValueError):
        nflog.config_message(7, copy_range=-1)


# --------------------------------------------------------------------------- nfnetlink helpers


def test_parse_acks_and_nfgen_helpers() -> None:
    err = struct.pack("=IHHII", 36, 2, 0, 77, 0) + struct.pack("=i", -13) + b"\0" * 16
    assert parse_acks(err + packet_message(HDR)) == [NetlinkAck(seq=77, errno=13)]
    with pytest.raises(WireError):
        parse_acks(struct.pack("=IHHII", 18, 2, 0, 1, 0) + b"\0\0")
    assert nfgen_header(memoryview(b"\x0a\x00\x00\x07")) == (10, 0, 7)
    with pytest.raises(WireError):
        nfgen_header(memoryview(b"\x0a\x00"))
    assert split_type(0x0401) == (4, 1)
    assert group_mask(1, 2, 3) == 0b111
    with pytest.raises(ValueError):
        group_mask(33)


def test_nested_build_missing_field_is_a_wire_error() -> None:
    table = {1: ("inner", Nested({1: ("a", be32)}, lambda d: (d["a"],)))}
    ok = nla(1, nla(1, b"\0\0\0\x05"), nested=True)
    assert decode_into({}, memoryview(ok), table) == {"inner": (5,)}
    strict = {1: ("inner", Nested({1: ("a", be32)}, NetlinkAck._make))}
    with pytest.raises(WireError):
        decode_into({}, memoryview(ok), strict)


# --------------------------------------------------------------------------- fuzzing
# Invariant: any bytes -> a list of NflogPacket, or WireError; never another exception.


def _survives(buf: bytes) -> list[nflog.NflogPacket]:
    try:
        return nflog.parse(buf)
    except WireError:
        return []


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(buf: bytes) -> None:
    _survives(buf)


@settings(max_examples=600)
@given(st.data())
def test_fuzz_mutated_golden(data: st.DataObject) -> None:
    buf = bytearray(data.draw(st.sampled_from(FRAMES)))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] ^= 1 << data.draw(st.integers(0, 7))
    for p in _survives(bytes(buf)):
        assert isinstance(p.payload, bytes)


@settings(max_examples=300)
@given(st.data())
def test_fuzz_spliced_attributes(data: st.DataObject) -> None:
    # Valid framing around random attribute payloads reaches every decoder.
    attrs = b"".join(
        nla(data.draw(st.integers(0, 25)), data.draw(st.binary(max_size=20)))
        for _ in range(data.draw(st.integers(0, 6)))
    )
    _survives(packet_message(HDR + attrs))


@pytest.mark.parametrize("name", GOLDEN)
def test_every_truncation_of_every_fixture(name: str) -> None:
    buf = frame(name)
    for n in range(len(buf)):
        _survives(buf[:n])


# --------------------------------------------------------------------------- fast path
# peek agrees with parse: the same fields, or both WireError; through the attribute walk
# (empty layout cache) and through a layout learnt from an intact datagram of the same kind.


def _rich(buf: bytes) -> list[nflog.NflogPeek] | None:
    try:
        return [(p.prefix, p.payload, p.wall_ns, p.seq, p.indev, p.physindev, p.outdev,
                 p.physoutdev) for p in nflog.parse(buf)]  # fmt: skip
    except WireError:
        return None


def _fast(buf: bytes) -> list[nflog.NflogPeek] | None:
    try:
        return nflog.peek(buf)
    except WireError:
        return None


def _agree(buf: bytes, *, learn_from: bytes | None = None) -> list[nflog.NflogPeek] | None:
    """Compare walk and (when ``learn_from`` is given) layout reads against parse()."""
    want = _rich(buf)
    nflog._LAYOUTS.clear()
    assert _fast(buf) == want, buf.hex()  # the walk
    if learn_from is not None:
        nflog._LAYOUTS.clear()
        nflog.peek(learn_from)  # learn its layout (it parses: a fixture or built datagram)
        assert _fast(buf) == want, buf.hex()
    return want


def bridge_datagram(payload: bytes, *, seq: int = 1, prefix: bytes = b"coi-dns\0",
                    extra: bytes = b"", after: bytes = b"") -> bytes:  # fmt: skip
    """A packet as the kernel logs it from a bridge rule on Linux 6.18 (the attributes and
    their order as captured there); ``extra`` attributes before the payload, ``after``
    after it."""
    mac = bytes.fromhex("c6a75103b6f1927cb3d3b3b50800")
    attrs = (HDR + nla(10, prefix) + nla(6, struct.pack("!I", 5))
             + nla(4, struct.pack("!I", 2)) + nla(8, struct.pack("!H2x8s", 6, mac[6:12]))
             + nla(15, b"\x00\x01") + nla(17, b"\x00\x0e") + nla(16, mac)
             + nla(3, struct.pack("!QQ", 1_795_917_022, 568_844)) + nla(11, bytes(4))
             + nla(14, bytes(4)) + nla(12, struct.pack("!I", seq)) + nla(21, mac) + extra
             + nla(9, payload) + after)  # fmt: skip
    return packet_message(attrs, family=7, group=9)


DNS_IP_PAYLOAD = bytes.fromhex(_expected("dns_in_v4")["records"][0]["payload"])
BRIDGE = bridge_datagram(DNS_IP_PAYLOAD)
PEEK_FRAMES = [*FRAMES, BRIDGE]


@pytest.mark.parametrize("name", GOLDEN)
def test_peek_agrees_with_parse_on_golden(name: str) -> None:
    buf = frame(name)
    _agree(buf, learn_from=buf)
    for n in range(len(buf)):
        _agree(buf[:n], learn_from=buf)


def test_peek_reads_a_learnt_layout_with_new_values() -> None:
    nflog._LAYOUTS.clear()
    wall = 1_795_917_022_568_844_000
    assert nflog.peek(BRIDGE) == [("coi-dns", DNS_IP_PAYLOAD, wall, 1, 2, 5, 0, 0)]
    assert len(nflog._LAYOUTS) == 1
    # Same shape, other values: read through the layout, and right.
    other = bridge_datagram(b"\x45" + bytes(40), seq=77, prefix=b"coi-new\0")
    assert nflog.peek(other) == [("coi-new", b"\x45" + bytes(40), wall, 77, 2, 5, 0, 0)]
    assert nflog.peek(other) == _rich(other) and len(nflog._LAYOUTS) == 1
    # A datagram of four such packets.
    four = b"".join(bridge_datagram(b"\x45" + bytes(i), seq=i) for i in range(4))
    assert [p[3] for p in nflog.peek(four)] == [0, 1, 2, 3] and nflog.peek(four) == _rich(four)
    # The same headers, then more after the payload (a later seq wins): the walk decides.
    more = bridge_datagram(b"\x45", seq=3, after=nla(12, struct.pack("!I", 9)))
    assert nflog.peek(more) == _rich(more) and nflog.peek(more)[0][3] == 9
    nflog._LAYOUTS.clear()


def test_layouts_are_learnt_only_from_plain_messages_and_are_bounded() -> None:
    nflog._LAYOUTS.clear()
    vlan = nla(20, nla(1, b"\x81\x00") + nla(2, b"\x00\x05"), nested=True)
    nflog.peek(bridge_datagram(b"\x45", extra=vlan))  # a nest: never learnt
    nflog.peek(packet_message(HDR + nla(9, b"\x45") + nla(12, b"\0\0\0\1")))  # payload not last
    nflog.peek(packet_message(HDR))  # no payload
    assert nflog._LAYOUTS == []
    for n in range(nflog._LAYOUTS_MAX + 4):  # prefixes of every length: layouts galore
        nflog.peek(bridge_datagram(b"\x45", prefix=b"p" * (4 * n + 1) + b"\0"))
    assert len(nflog._LAYOUTS) == nflog._LAYOUTS_MAX
    late = bridge_datagram(b"\x45", prefix=b"late" * 20 + b"\0")
    assert nflog.peek(late) == _rich(late)  # not remembered, still right
    nflog._LAYOUTS.clear()


@settings(max_examples=800)
@given(st.data())
def test_fuzz_peek_agrees_on_mutated_datagrams(data: st.DataObject) -> None:
    original = data.draw(st.sampled_from(PEEK_FRAMES))
    buf = bytearray(original)
    for _ in range(data.draw(st.integers(0, 6))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        if data.draw(st.booleans()):
            buf[pos] ^= 1 << data.draw(st.integers(0, 7))
        else:
            buf[pos] = data.draw(st.integers(0, 255))
    _agree(bytes(buf[: data.draw(st.integers(0, len(buf)))]), learn_from=original)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_fuzz_peek_agrees_on_random_bytes(buf: bytes) -> None:
    _agree(buf, learn_from=BRIDGE)


@settings(max_examples=600)
@given(st.data())
def test_fuzz_peek_agrees_on_spliced_attributes(data: st.DataObject) -> None:
    # Valid framing around random attributes (every known type, every size near the right
    # one, nests, flag bits) reaches every check of both paths.
    def attribute() -> bytes:
        typ = data.draw(st.integers(0, 25)) | data.draw(st.sampled_from([0, 0x4000, 0x8000]))
        size = data.draw(st.sampled_from([0, 1, 2, 3, 4, 5, 8, 12, 16, 20]))
        return nla(typ, data.draw(st.binary(min_size=size, max_size=size)))

    attrs = [attribute() for _ in range(data.draw(st.integers(0, 6)))]
    body = (HDR if data.draw(st.booleans()) else b"") + b"".join(attrs)
    buf = packet_message(body + nla(9, data.draw(st.binary(max_size=30))))
    twin = packet_message(body + nla(9, b"\x45" * 7))  # same layout, another payload
    _agree(buf + data.draw(st.sampled_from([b"", b"\0\0", b"\1", _header(16, 3)])),
           learn_from=twin if _rich(twin) is not None else None)  # fmt: skip


# The whole fast path (peek, peek_ip, peek_query) agrees with the rich one (parse, parse_ip,
# parse_query) on every field the NFLOG source reads: per packet, the same tuple, or the
# same stage raising WireError.


def _pipeline(buf: bytes, fast: bool) -> object:
    try:
        pkts = nflog.peek(buf) if fast else _rich(buf)
    except WireError:
        return "nflog"
    if pkts is None:
        return "nflog"
    out: list[object] = []
    for prefix, payload, wall, seq, indev, physindev, outdev, physoutdev in pkts:
        try:
            if fast:
                ip = packet.peek_ip(payload)
            else:
                r = packet.parse_ip(payload)
                ip = (r.family, r.proto, r.src, r.dst, r.sport, r.dport, bytes(r.l4_payload))
        except WireError:
            out.append((prefix, seq, "ip"))
            continue
        l4, tcp = ip[6], ip[1] == 6
        try:
            if fast:
                q: object = dns.peek_tcp_query(l4) if tcp else dns.peek_query(l4)
            else:
                d = dns.parse_tcp_query(l4) if tcp else dns.parse_query(l4)
                q = (d.qid, d.qname, d.qtype)
        except WireError:
            q = "dns"
        out.append((prefix, wall, seq, indev, physindev, outdev, physoutdev, ip, q))
    return out


@settings(max_examples=800)
@given(st.data())
def test_fuzz_fast_pipeline_agrees_with_the_rich_one(data: st.DataObject) -> None:
    original = data.draw(st.sampled_from(PEEK_FRAMES))
    buf = bytearray(original)
    for _ in range(data.draw(st.integers(0, 4))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    cut = bytes(buf[: data.draw(st.integers(len(buf) // 2, len(buf)))])
    nflog._LAYOUTS.clear()
    nflog.peek(original)
    assert _pipeline(cut, True) == _pipeline(cut, False)


@pytest.mark.parametrize("buf", PEEK_FRAMES)
def test_fast_pipeline_agrees_on_every_fixture(buf: bytes) -> None:
    nflog._LAYOUTS.clear()
    assert _pipeline(buf, True) == _pipeline(buf, False)
    assert _pipeline(buf, True) == _pipeline(buf, False)  # through the learnt layout


# --------------------------------------------------------------------------- live


@pytest.mark.privileged
def test_live_nflog_socket_in_a_throwaway_netns() -> None:
    netlab = load_module("coi_fixture_netlab", WIRE / "netlab.py")
    with netlab.NetLab() as lab:
        lab.nft(lab.ns_a, CAPTURE.RULES_A)
        with lab.nflog(lab.ns_a, CAPTURE.GROUP_A) as (sock, acks):
            assert [parse_acks(a)[0].errno for a in acks] == [0, 0, 0]
            udp = lab.socket(lab.ns_a, socket.AF_INET, socket.SOCK_DGRAM)
            for i in range(3):
                udp.sendto(netlab.dns_query(i, [b"live", f"n{i}".encode()], 1), (lab.b4, 53))
            got = netlab.recv_until(sock, lambda g: sum(len(nflog.parse(d)) for d in g) >= 3)
            udp.close()
    pkts = [p for d in got for p in nflog.parse(d)]
    assert len(pkts) == 3
    assert [p.prefix for p in pkts] == ["dns"] * 3
    assert all(p.hook == 3 and p.uid == 0 and p.mark == 0x2A for p in pkts)
    seqs = [p.seq for p in pkts]
    assert seqs == list(range(seqs[0] or 0, (seqs[0] or 0) + 3))  # no gaps: nothing lost
    ips = [packet.parse_ip(p.payload) for p in pkts]
    assert {(ip.src, ip.dst, ip.dport) for ip in ips} == {(lab.a4, lab.b4, 53)}
