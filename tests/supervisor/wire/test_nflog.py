"""Tests for coi_watch.wire.nflog: golden kernel datagrams, builders, fuzzing, a live socket."""

from __future__ import annotations

import importlib.util
import json
import socket
import struct
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def _module(name: str, path: Path) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


CAPTURE = _module("coi_fixture_nflog_capture", FIXTURES / "capture.py")


def frame(name: str) -> bytes:
    lines = (FIXTURES / f"{name}.hex").read_text().splitlines()
    return bytes.fromhex("".join(ln for ln in lines if not ln.startswith("#")))


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


# --------------------------------------------------------------------------- live


@pytest.mark.privileged
def test_live_nflog_socket_in_a_throwaway_netns() -> None:
    netlab = _module("coi_fixture_netlab", WIRE / "netlab.py")
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
