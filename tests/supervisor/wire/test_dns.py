"""Tests for coi_watch.wire.dns: hostile names, bounds, TCP framing, fuzzing, a live query."""

from __future__ import annotations

import importlib.util
import socket
import struct
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coi_watch.errors import WireError
from coi_watch.wire import nflog, packet
from coi_watch.wire.dns import (
    MAX_POINTER_HOPS,
    DnsQuestion,
    escape_label,
    parse_query,
    parse_tcp_query,
    read_name,
)

WIRE = Path(__file__).resolve().parents[2] / "fixtures" / "wire"
NFLOG = WIRE / "nflog"


def _module(name: str, path: Path) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _captured_dns(name: str) -> bytes:
    lines = (NFLOG / f"{name}.hex").read_text().splitlines()
    (pkt,) = nflog.parse(bytes.fromhex("".join(ln for ln in lines if not ln.startswith("#"))))
    return bytes(packet.parse_ip(pkt.payload).l4_payload)


HEADER = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0)


def wire_name(labels: list[bytes]) -> bytes:
    return b"".join(bytes([len(lab)]) + lab for lab in labels) + b"\0"


def query(labels: list[bytes], qtype: int = 1) -> bytes:
    return HEADER + wire_name(labels) + struct.pack("!HH", qtype, 1)


def reference_escape(label: bytes) -> str:
    """An independent, byte-by-byte statement of the presentation rules."""
    out = []
    for b in label:
        c = chr(b)
        if c in ".\\":
            out.append("\\" + c)
        elif 0x21 <= b <= 0x7E:
            out.append(c.lower())
        else:
            out.append(f"\\{b:03d}")
    return "".join(out)


# --------------------------------------------------------------------------- captured queries


def test_captured_queries() -> None:
    q = parse_query(_captured_dns("dns_a_v4"))
    assert (q.qid, q.qname, q.qtype_name, q.qclass, q.qdcount) == (
        0x1234, "www.example.com", "A", 1, 1)  # fmt: skip
    assert not q.is_response and q.opcode == 0 and q.flags == 0x0100
    assert parse_query(_captured_dns("dns_aaaa_mixedcase")).qname == "mixed.case.example"
    assert parse_query(_captured_dns("dns_aaaa_v6")).qtype_name == "AAAA"
    two = parse_query(_captured_dns("dns_qdcount2"))
    assert (two.qdcount, two.qname) == (2, "first.example")


def test_captured_binary_labels() -> None:
    q = parse_query(_captured_dns("dns_txt_binary"))
    assert q.qtype_name == "TXT"
    assert q.qname == (
        "\\000\\001bin\\255.dot\\.inside.back\\\\slash.sp\\032ace.\\195\\169t\\195\\169."
        + "x" * 63
        + ".tunnel.example"
    )
    assert q.qname.isprintable() and q.qname.isascii()


def test_captured_tcp_query_and_pointer_loop() -> None:
    assert parse_tcp_query(_captured_dns("dns_tcp")).qname == "tcp.example"
    with pytest.raises(WireError, match="compression pointers"):
        parse_query(_captured_dns("dns_pointer_loop"))


# --------------------------------------------------------------------------- labels


def test_every_byte_value_is_escaped_safely() -> None:
    for b in range(256):
        text = escape_label(bytes([b]))
        assert text.isascii() and text.isprintable() and " " not in text
        assert text == reference_escape(bytes([b]))
    assert escape_label(b"A.b\\C") == "a\\.b\\\\c"
    assert escape_label(bytes(range(256))).count("\\") > 150


@given(st.binary(max_size=63), st.binary(max_size=63))
def test_escaping_is_injective_up_to_ascii_case(a: bytes, b: bytes) -> None:
    lower = bytes.maketrans(bytes(range(65, 91)), bytes(range(97, 123)))
    assert (escape_label(a) == escape_label(b)) == (a.translate(lower) == b.translate(lower))


@settings(max_examples=300)
@given(st.lists(st.binary(min_size=1, max_size=63), max_size=12))
def test_names_match_reference(labels: list[bytes]) -> None:
    msg = query(labels)
    if sum(len(lab) + 1 for lab in labels) + 1 > 255:
        with pytest.raises(WireError, match="longer than 255"):
            parse_query(msg)
    else:
        assert parse_query(msg).qname == ".".join(reference_escape(lab) for lab in labels)


def test_label_and_name_limits() -> None:
    assert parse_query(query([b"a" * 63])).qname == "a" * 63
    with pytest.raises(WireError, match="label type"):  # 64 = 0x40: an extended label type
        parse_query(HEADER + b"\x40" + b"a" * 64 + b"\0\0\1\0\1")
    with pytest.raises(WireError, match="label type"):
        parse_query(HEADER + b"\x80" + b"\0" * 8)
    exactly = [b"b" * 63] * 3 + [b"c" * 61]  # 3*64 + 62 + 1 = 255 octets
    assert len(parse_query(query(exactly)).qname) == 253
    with pytest.raises(WireError, match="longer than 255"):
        parse_query(query([b"b" * 63] * 3 + [b"c" * 62]))


def test_root_name() -> None:
    q = parse_query(query([], 2))
    assert (q.qname, q.qtype_name) == ("", "NS")


# --------------------------------------------------------------------------- compression


def test_backward_pointer_is_followed() -> None:
    msg = HEADER + wire_name([b"example", b"com"]) + b"\x03www\xc0\x0c"
    second = len(HEADER) + 13
    assert read_name(msg, second) == ("www.example.com", len(msg))
    assert read_name(msg, 12) == ("example.com", 25)


@pytest.mark.parametrize(
    ("name_bytes", "why"),
    [
        (b"\xc0\x0c", "pointer to itself"),
        (b"\x01a\xc0\x0c", "loop through its own labels"),
        (b"\xc0\x20", "forward pointer"),
        (b"\xff\xff", "pointer far beyond the buffer"),
        (b"\xc0\x02", "pointer into the header"),
        (b"\xc0", "pointer cut in half"),
        (b"\x05abc", "label runs past the end"),
        (b"\x03abc", "no terminating zero"),
    ],
)
def test_hostile_pointers_and_cuts(name_bytes: bytes, why: str) -> None:
    with pytest.raises(WireError):
        parse_query(HEADER + name_bytes)
    if why.startswith("pointer"):  # with plenty of bytes after it, a pointer is still refused
        with pytest.raises(WireError):
            parse_query(HEADER + name_bytes + b"\0\x01\0\x01" * 8)


def test_pointer_chain_is_bounded() -> None:
    # "a" at 12, then pointers at 15, 17, 19, ... each to the one before (the first to 12):
    # starting at pointer k takes k + 1 hops.
    targets = [12] + [15 + 2 * k for k in range(39)]
    msg = HEADER + b"\x01a\0" + b"".join(struct.pack("!H", 0xC000 | t) for t in targets)
    assert read_name(msg, 12) == ("a", 15)
    last_ok = 15 + 2 * (MAX_POINTER_HOPS - 1)
    assert read_name(msg, last_ok) == ("a", last_ok + 2)
    with pytest.raises(WireError, match="compression pointers"):
        read_name(msg, last_ok + 2)


def test_worst_case_cost_is_bounded() -> None:
    # 64 KiB of self-referencing pointers and maximal labels: each parse stops early.
    loops = HEADER + (b"\x3f" + b"z" * 63) * 3 + b"\xc0\x0c" + b"\0" * 65000
    t0 = time.perf_counter()
    for _ in range(2000):
        with pytest.raises(WireError):
            parse_query(loops)
    assert time.perf_counter() - t0 < 2.0


# --------------------------------------------------------------------------- header, TCP


def test_qdcount_zero_and_counts() -> None:
    msg = struct.pack("!HHHHHH", 7, 0x8180, 0, 1, 2, 3)
    assert parse_query(msg) == DnsQuestion(7, 0x8180, 0, "", 0, 0, 1, 2, 3)
    assert parse_query(msg).is_response
    assert DnsQuestion(1, 0x2800, 1, "x", 6, 1).opcode == 5
    assert DnsQuestion(1, 0, 1, "x", 4242, 1).qtype_name == "TYPE4242"


def test_short_messages() -> None:
    for bad in (b"", HEADER[:11], query([b"a"])[:-1], query([b"a"])[:-4]):
        with pytest.raises(WireError):
            parse_query(bad)


def test_tcp_framing() -> None:
    msg = query([b"tcp", b"example"], 16)
    framed = struct.pack("!H", len(msg)) + msg
    assert parse_tcp_query(framed).qname == "tcp.example"
    assert parse_tcp_query(framed + b"next message").qname == "tcp.example"
    cut = struct.pack("!H", len(msg) + 100) + msg  # first segment of a longer message
    assert parse_tcp_query(cut).qtype == 16
    for bad in (b"", b"\x00", struct.pack("!H", 11) + msg, struct.pack("!H", 14) + msg):
        with pytest.raises(WireError):
            parse_tcp_query(bad)


# --------------------------------------------------------------------------- fuzzing
# Invariant: any bytes -> a DnsQuestion, or WireError; never another exception.


def _survives(buf: bytes, tcp: bool = False) -> None:
    try:
        q = parse_tcp_query(buf) if tcp else parse_query(buf)
    except WireError:
        return
    assert q.qname.isascii() and q.qname.isprintable()
    assert len(q.qname) <= 4 * 255


@settings(max_examples=600)
@given(st.binary(max_size=300), st.booleans())
def test_fuzz_random_bytes(buf: bytes, tcp: bool) -> None:
    _survives(buf, tcp)


@settings(max_examples=600)
@given(st.data())
def test_fuzz_hostile_structures(data: st.DataObject) -> None:
    # Random runs of labels, length bytes and pointers (mostly into the message).
    parts = data.draw(
        st.lists(
            st.one_of(
                st.binary(min_size=1, max_size=64).map(lambda b: bytes([len(b) % 64]) + b),
                st.integers(0, 0x3FFF).map(lambda p: struct.pack("!H", 0xC000 | (p % 300))),
                st.sampled_from([b"\0", b"\x40", b"\x80", b"\x3f"]),
            ),
            max_size=30,
        )
    )
    _survives(HEADER + b"".join(parts) + data.draw(st.binary(max_size=8)))


CAPTURED_QUERIES = [
    _captured_dns(n)
    for n in ("dns_a_v4", "dns_txt_binary", "dns_qdcount2", "dns_pointer_loop", "dns_aaaa_v6")
]


@settings(max_examples=500)
@given(st.data())
def test_fuzz_mutated_captured_queries(data: st.DataObject) -> None:
    buf = bytearray(data.draw(st.sampled_from(CAPTURED_QUERIES)))
    for _ in range(data.draw(st.integers(1, 6))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    _survives(bytes(buf))
    _survives(len(buf).to_bytes(2, "big") + bytes(buf), tcp=True)


@pytest.mark.parametrize(
    ("name", "question_end"),
    [("dns_txt_binary", None), ("dns_qdcount2", 12 + 15 + 4), ("dns_aaaa_v6", None)],
)
def test_every_truncation_of_captured_queries(name: str, question_end: int | None) -> None:
    msg = _captured_dns(name)
    end = len(msg) if question_end is None else question_end
    for n in range(len(msg)):
        if n < end:
            with pytest.raises(WireError):
                parse_query(msg[:n])
        else:  # only the first question is read: cutting later ones does not matter
            assert parse_query(msg[:n]) == parse_query(msg)
    loop = _captured_dns("dns_pointer_loop")
    for n in range(len(loop)):
        with pytest.raises(WireError):
            parse_query(loop[:n])


# --------------------------------------------------------------------------- live


@pytest.mark.privileged
def test_live_query_names_through_nflog() -> None:
    netlab = _module("coi_fixture_netlab", WIRE / "netlab.py")
    capture = _module("coi_fixture_nflog_capture", NFLOG / "capture.py")
    sent = [[b"Live", b"EXAMPLE"], capture.BINARY_LABELS, [b"\xff" * 63, b"q"]]
    with netlab.NetLab() as lab:
        lab.nft(lab.ns_a, capture.RULES_A)
        with lab.nflog(lab.ns_a, capture.GROUP_A) as (sock, _):
            udp = lab.socket(lab.ns_a, socket.AF_INET6, socket.SOCK_DGRAM)
            for i, labels in enumerate(sent):
                udp.sendto(netlab.dns_query(i, labels, 16), (lab.b6, 53))
            got = netlab.recv_until(sock, lambda g: sum(len(nflog.parse(d)) for d in g) >= 3)
            udp.close()
    qs = [parse_query(packet.parse_ip(p.payload).l4_payload) for d in got for p in nflog.parse(d)]
    assert [q.qname for q in qs] == [
        "live.example",
        capture.BINARY_QNAME,
        "\\255" * 63 + ".q",
    ]
    assert [q.qid for q in qs] == [0, 1, 2]
