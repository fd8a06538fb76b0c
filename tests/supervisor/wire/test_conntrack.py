"""Tests for coi_watch.wire.conntrack: golden kernel datagrams, pyroute2 as an independent
oracle, hand-built edge cases, fuzzing and a live transfer of known size."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg
from support.wire_fixtures import load_module, read_hex

from coi_watch.errors import WireError
from coi_watch.wire import conntrack
from coi_watch.wire.conntrack import CtEvent, CtTuple, dump_request, parse
from coi_watch.wire.nfnetlink import nla

WIRE = Path(__file__).resolve().parents[2] / "fixtures" / "wire"
FIXTURES = WIRE / "conntrack"
GOLDEN = sorted(p.stem for p in FIXTURES.glob("*.hex"))
STREAM = [bytes.fromhex(ln) for ln in (FIXTURES / "stream.hexl").read_text().split()]




CAPTURE = load_module("coi_fixture_conntrack_capture", FIXTURES / "capture.py")


def frame(name: str) -> bytes:
    return read_hex(FIXTURES / f"{name}.hex")


FRAMES = [frame(n) for n in GOLDEN] + STREAM


def expected(name: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads((FIXTURES / f"{name}.json").read_text())["records"]
    return records


def message(attrs: bytes, *, typ: int = 0x0100, flags: int = 0, family: int = 2) -> bytes:
    body = struct.pack("!BBH", family, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), typ, flags, 0, 0) + body


def tuple_attr(kind: int, src: str, dst: str, proto: int, sport: int, dport: int) -> bytes:
    ip = nla(1, socket.inet_aton(src)) + nla(2, socket.inet_aton(dst))
    pr = (
        nla(1, bytes([proto])) + nla(2, struct.pack("!H", sport)) + nla(3, struct.pack("!H", dport))
    )
    return nla(kind, nla(1, ip, nested=True) + nla(2, pr, nested=True), nested=True)


ORIG = tuple_attr(1, "198.18.0.1", "198.18.0.2", 17, 1000, 53)


# --------------------------------------------------------------------------- golden files


def test_enough_golden_captures() -> None:
    kinds = {r["event"] for n in GOLDEN for r in expected(n)}
    assert kinds == {"new", "update", "destroy", "dump"}
    assert len(GOLDEN) >= 14


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_datagram_parses_to_expected_records(name: str) -> None:
    assert CAPTURE.document("", frame(name))["records"] == expected(name)


def test_golden_destroy_has_counters_of_the_transfer() -> None:
    (ev,) = parse(frame("destroy_tcp_v4"))
    assert ev.event == "destroy" and ev.proto_name == "tcp" and ev.mark == CAPTURE.CT_MARK
    assert ev.orig.dport == CAPTURE.TCP_PORT and ev.reply is not None
    assert (ev.reply.src, ev.reply.sport) == (ev.orig.dst, ev.orig.dport)
    assert ev.bytes_orig is not None and ev.packets_orig is not None
    assert CAPTURE.SENT_ORIG <= ev.bytes_orig <= CAPTURE.SENT_ORIG + 80 * ev.packets_orig
    assert ev.bytes_reply is not None and ev.bytes_reply >= CAPTURE.SENT_REPLY
    assert ev.start_ns is not None and ev.stop_ns is not None and ev.start_ns <= ev.stop_ns
    assert {"SEEN_REPLY", "ASSURED", "CONFIRMED", "DYING"} <= set(ev.status_names)
    (new,) = parse(frame("tcp_new_v4"))
    assert new.id == ev.id and new.event == "new" and new.tcp_state_name == "SYN_SENT"
    assert new.bytes_orig is None and new.start_ns is None  # counters only at destroy


def test_golden_icmp_zone_and_v6() -> None:
    (icmp,) = parse(frame("icmpv6_new"))
    assert icmp.family == socket.AF_INET6 and icmp.proto_name == "icmpv6"
    assert icmp.reply is not None and icmp.reply.icmp_type == 129
    assert parse(frame("udp_new_zone"))[0].zone == CAPTURE.CT_ZONE
    assert parse(frame("dump_done")) == []


def test_captured_stream_parses_in_full() -> None:
    events = [e for d in STREAM for e in parse(d)]
    assert len(events) == len(STREAM)  # the kernel sends one event per datagram
    by_id: dict[int, list[str]] = {}
    for e in events:
        by_id.setdefault(e.id, []).append(e.event)
    tcp = next(e for e in events if e.orig.dport == CAPTURE.TCP_PORT)
    assert by_id[tcp.id][0] == "new" and by_id[tcp.id][-1] == "destroy"
    assert by_id[tcp.id].count("update") >= 3


def _pyroute2_view(msg_bytes: bytes) -> dict[str, Any]:
    m = nfct_msg(msg_bytes)
    m.decode()
    orig = m.get_attr("CTA_TUPLE_ORIG")
    ip, pr = orig.get_attr("CTA_TUPLE_IP"), orig.get_attr("CTA_TUPLE_PROTO")
    counters = m.get_attr("CTA_COUNTERS_ORIG"), m.get_attr("CTA_COUNTERS_REPLY")
    stamps = m.get_attr("CTA_TIMESTAMP")
    return {
        "src": ip.get_attr("CTA_IP_V4_SRC") or ip.get_attr("CTA_IP_V6_SRC"),
        "dst": ip.get_attr("CTA_IP_V4_DST") or ip.get_attr("CTA_IP_V6_DST"),
        "proto": pr.get_attr("CTA_PROTO_NUM"),
        "sport": pr.get_attr("CTA_PROTO_SRC_PORT") or 0,
        "dport": pr.get_attr("CTA_PROTO_DST_PORT") or 0,
        "id": m.get_attr("CTA_ID"),
        "status": m.get_attr("CTA_STATUS"),
        "mark": m.get_attr("CTA_MARK") or 0,
        "bytes": tuple(c.get_attr("CTA_COUNTERS_BYTES") if c else None for c in counters),
        "packets": tuple(c.get_attr("CTA_COUNTERS_PACKETS") if c else None for c in counters),
        "start": stamps.get_attr("CTA_TIMESTAMP_START") if stamps else None,
    }


def _ours(e: CtEvent) -> dict[str, Any]:
    return {
        "src": e.orig.src,
        "dst": e.orig.dst,
        "proto": e.orig.proto,
        "sport": e.orig.sport,
        "dport": e.orig.dport,
        "id": e.id,
        "status": e.status,
        "mark": e.mark,
        "bytes": (e.bytes_orig, e.bytes_reply),
        "packets": (e.packets_orig, e.packets_reply),
        "start": e.start_ns,
    }


def test_pyroute2_agrees_on_every_captured_message() -> None:
    compared = 0
    for buf in FRAMES:
        ours = parse(buf)
        off, i = 0, 0
        while off < len(buf):
            ln, typ = struct.unpack_from("=IH", buf, off)
            if typ in (0x0100, 0x0102):
                assert _ours(ours[i]) == _pyroute2_view(buf[off : off + ln])
                i, compared = i + 1, compared + 1
            off += (ln + 3) & ~3
        assert i == len(ours)
    assert compared >= 35


# --------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize(
    ("typ", "flags", "kind"),
    [
        (0x0100, 0x0600, "new"),  # NLM_F_CREATE | NLM_F_EXCL
        (0x0100, 0x0400, "new"),
        (0x0100, 0x0000, "update"),
        (0x0100, 0x0002, "dump"),  # NLM_F_MULTI
        (0x0102, 0x0000, "destroy"),
    ],
)
def test_event_kind_from_type_and_flags(typ: int, flags: int, kind: str) -> None:
    (ev,) = parse(message(ORIG, typ=typ, flags=flags))
    assert ev.event == kind
    assert ev.orig == CtTuple("198.18.0.1", "198.18.0.2", 17, 1000, 53)


def test_minimal_event_defaults() -> None:
    (ev,) = parse(message(ORIG))
    assert ev == CtEvent(event="update", family=2, orig=ev.orig)
    assert ev.reply is None and ev.bytes_orig is None and ev.tcp_state_name == ""
    assert ev.status_names == ()


def test_unknown_attributes_and_messages_are_skipped() -> None:
    attrs = ORIG + nla(99, b"future") + nla(22, b"\xff" * 16) + nla(11, struct.pack("!I", 1))
    other = message(ORIG, typ=0x0201)  # an expectation message (CTNETLINK_EXP)
    done = struct.pack("=IHHII", 20, 3, 2, 0, 0) + b"\0" * 4
    assert len(parse(other + message(attrs) + done)) == 1


def test_helper_protoinfo_and_counters32() -> None:
    attrs = ORIG + nla(5, nla(1, b"ftp\0"), nested=True)
    attrs += nla(4, nla(1, nla(1, b"\x03") + nla(2, b"\x07"), nested=True), nested=True)
    attrs += nla(9, nla(3, struct.pack("!I", 5)) + nla(4, struct.pack("!I", 300)), nested=True)
    (ev,) = parse(message(attrs))
    assert (ev.helper, ev.tcp_state_name, ev.packets_orig, ev.bytes_orig) == (
        "ftp", "ESTABLISHED", 5, 300)  # fmt: skip
    assert CtEvent(event="new", family=2, orig=ev.orig, tcp_state=42).tcp_state_name == "42"


@pytest.mark.parametrize(
    ("attrs", "why"),
    [
        (b"", "no CTA_TUPLE_ORIG"),
        (nla(1, nla(2, nla(1, b"\x06"), nested=True), nested=True), "tuple without addresses"),
        (ORIG + nla(12, b"\0\0\0"), "3-byte CTA_ID"),
        (ORIG + nla(9, nla(2, b"\0" * 4), nested=True), "32-bit CTA_COUNTERS_BYTES"),
        (tuple_attr(1, "1.2.3.4", "5.6.7.8", 6, 1, 2)[:-4], "truncated nest"),
        (nla(1, nla(1, nla(1, b"\x01\x02\x03"), nested=True), nested=True), "3-byte IPv4"),
    ],
)
def test_malformed_messages_raise_wire_error(attrs: bytes, why: str) -> None:
    with pytest.raises(WireError):
        parse(message(attrs))


def test_deep_unknown_nests_are_skipped() -> None:
    inner = ORIG
    for _ in range(12):
        inner = nla(4, inner, nested=True)  # CTA_PROTOINFO -> its table has no type 4: skipped
    assert parse(message(ORIG + inner))[0].tcp_state is None


# --------------------------------------------------------------------------- builders


def test_dump_request_layout() -> None:
    msg = dump_request(socket.AF_INET, seq=42)
    assert msg == struct.pack("=IHHII", 20, 0x0101, 0x0301, 42, 0) + b"\x02\x00\x00\x00"
    assert dump_request(zero_counters=True)[4:6] == struct.pack("=H", 0x0103)
    assert conntrack.EVENT_GROUPS == 0b111


# --------------------------------------------------------------------------- fuzzing
# Invariant: any bytes -> a list of CtEvent, or WireError; never another exception.


def _survives(buf: bytes) -> list[CtEvent]:
    try:
        return parse(buf)
    except WireError:
        return []


@settings(max_examples=400)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(buf: bytes) -> None:
    _survives(buf)


@settings(max_examples=600)
@given(st.data())
def test_fuzz_mutated_golden(data: st.DataObject) -> None:
    buf = bytearray(data.draw(st.sampled_from(FRAMES)))
    for _ in range(data.draw(st.integers(1, 8))):
        buf[data.draw(st.integers(0, len(buf) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    for ev in _survives(bytes(buf)):
        assert isinstance(ev.orig, CtTuple)


@settings(max_examples=300)
@given(st.data())
def test_fuzz_random_attributes_in_valid_nests(data: st.DataObject) -> None:
    def attrs(depth: int) -> bytes:
        out = b""
        for _ in range(data.draw(st.integers(0, 4))):
            typ = data.draw(st.integers(0, 28))
            if depth < 3 and data.draw(st.booleans()):
                out += nla(typ, attrs(depth + 1), nested=True)
            else:
                out += nla(typ, data.draw(st.binary(max_size=17)))
        return out

    _survives(message(ORIG + attrs(0), typ=data.draw(st.sampled_from([0x0100, 0x0102]))))


@pytest.mark.parametrize("name", GOLDEN)
def test_every_truncation_of_every_fixture(name: str) -> None:
    buf = frame(name)
    for n in range(len(buf)):
        _survives(buf[:n])


# --------------------------------------------------------------------------- live


@pytest.mark.privileged
def test_live_destroy_counts_a_transfer_of_known_size() -> None:
    netlab = load_module("coi_fixture_netlab", WIRE / "netlab.py")
    size = 250_000
    with netlab.NetLab() as lab:
        lab.sysctl(lab.ns_b, nf_conntrack_acct=1, nf_conntrack_timestamp=1)
        lab.nft(lab.ns_b, CAPTURE.RULES_B)
        with lab.ctevents(lab.ns_b) as sock:
            lsn = lab.socket(lab.ns_b, socket.AF_INET, socket.SOCK_STREAM)
            lsn.bind((lab.b4, 7777))
            lsn.listen(1)
            cli = lab.socket(lab.ns_a, socket.AF_INET, socket.SOCK_STREAM)
            cli.settimeout(5)
            cli.connect((lab.b4, 7777))
            srv, _ = lsn.accept()
            srv.settimeout(5)
            cli.sendall(b"\xa5" * size)
            got = 0
            while got < size:
                got += len(srv.recv(1 << 16))
            for s in (cli, srv, lsn):
                s.close()
            lab.exec(lab.ns_b, "conntrack", "-F")

            def destroyed(g: list[bytes]) -> bool:
                return any(e.event == "destroy" for d in g for e in parse(d))

            datagrams = netlab.recv_until(sock, destroyed)
    events = [e for d in datagrams for e in parse(d) if e.orig.dport == 7777]
    assert events[0].event == "new" and events[0].orig.src == lab.a4
    (gone,) = [e for e in events if e.event == "destroy"]
    assert gone.id == events[0].id
    assert gone.bytes_orig is not None and gone.packets_orig is not None
    assert size <= gone.bytes_orig <= size + 80 * gone.packets_orig
    assert gone.start_ns is not None and gone.stop_ns is not None
    assert 0 <= gone.stop_ns - gone.start_ns < 60 * 10**9
