"""Tests for coi_watch.wire.dns: hostile names, bounds, TCP framing, fuzzing, a live query."""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.wire_fixtures import load_module, read_hex

from coi_watch.errors import WireError
from coi_watch.wire import nflog, packet
from coi_watch.wire.dns import (
    MAX_ANSWERS,
    MAX_POINTER_HOPS,
    MAX_QUESTIONS,
    DnsQuestion,
    DnsResponse,
    escape_label,
    parse_query,
    parse_response,
    parse_tcp_query,
    parse_tcp_response,
    peek_query,
    peek_tcp_query,
    read_name,
)

WIRE = Path(__file__).resolve().parents[2] / "fixtures" / "wire"
NFLOG = WIRE / "nflog"




def _captured_dns(name: str) -> bytes:
    (pkt,) = nflog.parse(read_hex(NFLOG / f"{name}.hex"))
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


# --------------------------------------------------------------------------- fast path
# peek_query agrees with parse_query: the same (qid, qname, qtype), or both WireError.


def _rich(buf: bytes, tcp: bool = False) -> tuple[int, str, int] | None:
    try:
        q = parse_tcp_query(buf) if tcp else parse_query(buf)
    except WireError:
        return None
    return q.qid, q.qname, q.qtype


def _agree(buf: bytes, tcp: bool = False) -> None:
    try:
        fast = peek_tcp_query(buf) if tcp else peek_query(buf)
    except WireError:
        fast = None
    assert fast == _rich(buf, tcp), buf.hex()


@pytest.mark.parametrize("msg", [*CAPTURED_QUERIES, _captured_dns("dns_aaaa_mixedcase")])
def test_peek_query_agrees_on_captured_queries_and_every_cut(msg: bytes) -> None:
    for n in range(len(msg) + 1):
        _agree(msg[:n])
        _agree(struct.pack("!H", n) + msg[:n], tcp=True)
        _agree(struct.pack("!H", len(msg)) + msg[:n], tcp=True)


def test_peek_query_plain_names_skip_the_careful_path(monkeypatch: pytest.MonkeyPatch) -> None:
    import coi_watch.wire.dns as dns

    def refuse(payload: bytes) -> DnsQuestion:
        raise AssertionError("parse_query called")

    monkeypatch.setattr(dns, "parse_query", refuse)
    plain = query([b"WWW", b"Example-1", b"com"], 28)
    assert peek_query(plain) == (0xBEEF, "www.example-1.com", 28)
    assert peek_query(query([], 2)) == (0xBEEF, "", 2)
    msg = query([b"tcp", b"example"], 16)
    assert peek_tcp_query(struct.pack("!H", len(msg)) + msg) == (0xBEEF, "tcp.example", 16)


@pytest.mark.parametrize(
    "labels",
    [
        [b"a.b", b"c"],  # a dot inside a label
        [b"back\\slash"],
        [b"sp ace"],
        [b"\x2e"],
        [b"\x01\x02", b"x"],
        [b"b" * 63] * 3 + [b"c" * 61],  # exactly 255 octets
        [b"b" * 63] * 3 + [b"c" * 62],  # one too many
        [b"-", b"0", b"9"],  # label bytes that look like lengths
    ],
)
def test_peek_query_agrees_on_unusual_labels(labels: list[bytes]) -> None:
    _agree(query(labels))


@settings(max_examples=600)
@given(st.lists(st.one_of(st.binary(min_size=1, max_size=63),
                          st.text("abcXYZ019-_.\\", min_size=1, max_size=63).map(str.encode)),
                max_size=12), st.integers(0, 0xFFFF))  # fmt: skip
def test_fuzz_peek_query_agrees_on_names(labels: list[bytes], qtype: int) -> None:
    _agree(query([lab[:63] for lab in labels], qtype))


@settings(max_examples=600)
@given(st.binary(max_size=300), st.booleans())
def test_fuzz_peek_query_agrees_on_random_bytes(buf: bytes, tcp: bool) -> None:
    _agree(buf, tcp)
    _agree(HEADER + buf, tcp)


@settings(max_examples=600)
@given(st.data())
def test_fuzz_peek_query_agrees_on_hostile_structures(data: st.DataObject) -> None:
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
    _agree(HEADER + b"".join(parts) + data.draw(st.binary(max_size=8)))


@settings(max_examples=500)
@given(st.data())
def test_fuzz_peek_query_agrees_on_mutated_captures(data: st.DataObject) -> None:
    buf = bytearray(data.draw(st.sampled_from(CAPTURED_QUERIES)))
    for _ in range(data.draw(st.integers(1, 6))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    _agree(bytes(buf))
    _agree(len(buf).to_bytes(2, "big") + bytes(buf), tcp=True)


# --------------------------------------------------------------------------- responses
# No resolver's capture is among the fixtures: responses are built here, byte by byte, and
# the builder is pinned to a hand-assembled message (RESPONSE_A) first.

QNAME = b"\xc0\x0c"  # a compression pointer to the question name (offset 12)


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes, rclass: int = 1) -> bytes:
    """One resource record (RFC 1035 4.1.3): owner name in wire form, then the fixed part."""
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def response(qid: int, labels: list[bytes], qtype: int, answers: list[bytes], *,
             rcode: int = 0, flags: int = 0x8180, questions: int = 1,
             ancount: int | None = None) -> bytes:  # fmt: skip
    """A response as a recursive resolver writes it: header, ``questions`` copies of the
    question, the answer records given."""
    counts = (questions, len(answers) if ancount is None else ancount, 0, 0)
    question = wire_name(labels) + struct.pack("!HH", qtype, 1)
    return (struct.pack("!HH4H", qid, flags | rcode, *counts) + question * questions
            + b"".join(answers))  # fmt: skip


# a.example. A? -> 192.0.2.1, TTL 300; the answer's owner compressed to the question name.
RESPONSE_A = bytes.fromhex(
    "1234 8180 0001 0001 0000 0000"  # id, QR RD RA, 1 question, 1 answer
    "0161 076578616d706c65 00 0001 0001"  # a.example. IN A
    "c00c 0001 0001 0000012c 0004 c0000201"  # -> IN A, TTL 300, 192.0.2.1
)


def test_builder_matches_the_hand_assembled_response() -> None:
    assert response(0x1234, [b"a", b"example"], 1,
                    [rr(QNAME, 1, 300, bytes([192, 0, 2, 1]))]) == RESPONSE_A  # fmt: skip
    assert parse_response(RESPONSE_A) == DnsResponse(
        qid=0x1234, rcode=0, qname="a.example", qtype=1, addresses=("192.0.2.1",), ttl=300)


def cname_chain() -> bytes:
    """www.Example.com CNAME cdn.example.net (target compressed into its own rdata's
    suffix), two A and one AAAA for it, and a TXT that does not count."""
    cdn = b"\x03cdn\x07example\x03net\x00"
    at_cdn = 12 + len(wire_name([b"www", b"Example", b"com"])) + 4 + 2 + 10  # its rdata
    return response(0x0707, [b"www", b"Example", b"com"], 1, [
        rr(QNAME, 5, 3600, cdn),
        rr(struct.pack("!H", 0xC000 | at_cdn), 1, 60, bytes([198, 18, 0, 7])),
        rr(struct.pack("!H", 0xC000 | at_cdn), 1, 120, bytes([198, 18, 0, 8])),
        rr(struct.pack("!H", 0xC000 | at_cdn), 28, 90,
           socket.inet_pton(socket.AF_INET6, "2001:2::7")),
        rr(QNAME, 16, 5, b"\x03txt"),
    ])  # fmt: skip


def test_response_with_a_cname_chain() -> None:
    ans = parse_response(cname_chain())
    assert (ans.qid, ans.rcode, ans.qname, ans.qtype) == (0x0707, 0, "www.example.com", 1)
    assert ans.cnames == ("cdn.example.net",)
    assert ans.addresses == ("198.18.0.7", "198.18.0.8", "2001:2::7")
    assert ans.ttl == 60  # the smallest among A/AAAA/CNAME; the TXT's 5 is not counted


def test_response_rcode_and_empty_answers() -> None:
    nx = parse_response(response(9, [b"nope", b"example"], 28, [], rcode=3))
    assert (nx.rcode, nx.addresses, nx.cnames, nx.ttl, nx.qtype) == (3, (), (), 0, 28)
    servfail = parse_response(struct.pack("!HHHHHH", 5, 0x8182, 0, 0, 0, 0))  # no question
    assert (servfail.rcode, servfail.qname, servfail.qtype) == (2, "", 0)


def test_response_skips_other_types_classes_and_odd_sizes() -> None:
    ans = parse_response(response(1, [b"x"], 1, [
        rr(QNAME, 1, 10, bytes([192, 0, 2, 1]), rclass=3),  # CHAOS class: not an address
        rr(QNAME, 1, 11, bytes([192, 0, 2, 2, 0])),  # A of 5 bytes
        rr(QNAME, 28, 12, bytes(4)),  # AAAA of 4 bytes
        rr(QNAME, 15, 13, b"\x00\x0a" + QNAME),  # MX
        rr(QNAME, 1, 400, bytes([192, 0, 2, 3])),
    ]))  # fmt: skip
    assert (ans.addresses, ans.ttl) == (("192.0.2.3",), 400)


def test_response_ttl_with_the_top_bit_set_means_zero() -> None:
    ans = parse_response(response(1, [b"x"], 1, [
        rr(QNAME, 1, 0x80000000, bytes([192, 0, 2, 1])),
        rr(QNAME, 1, 30, bytes([192, 0, 2, 2]))]))  # fmt: skip
    assert ans.ttl == 0  # RFC 2181 section 8
    assert parse_response(response(1, [b"x"], 1, [rr(QNAME, 1, 0xFFFFFFFF, bytes(4))])).ttl == 0


def test_response_cut_anywhere_in_the_answers_keeps_what_was_read() -> None:
    msg = cname_chain()
    question_end = 12 + len(wire_name([b"www", b"Example", b"com"])) + 4
    full = parse_response(msg)
    for n in range(len(msg)):
        if n < question_end:
            with pytest.raises(WireError):
                parse_response(msg[:n])
            continue
        cut = parse_response(msg[:n])
        assert full.addresses[: len(cut.addresses)] == cut.addresses
        assert full.cnames[: len(cut.cnames)] == cut.cnames
        assert (cut.qid, cut.qname) == (full.qid, full.qname)


def test_response_refusals() -> None:
    with pytest.raises(WireError, match="not a DNS response"):
        parse_response(query([b"a", b"example"]))
    with pytest.raises(WireError, match="questions"):
        parse_response(response(1, [b"x"], 1, [], questions=MAX_QUESTIONS + 1))
    with pytest.raises(WireError):  # claims two questions, carries one
        parse_response(response(1, [b"x"], 1, [], questions=1)[:4] + b"\x00\x02"
                       + response(1, [b"x"], 1, [])[6:])  # fmt: skip
    two = response(1, [b"x"], 1, [rr(QNAME, 1, 7, bytes(4))], questions=2)
    assert parse_response(two).addresses == ("0.0.0.0",)  # answers after both questions
    for bad in (b"", b"\x00\x01", RESPONSE_A[:11]):
        with pytest.raises(WireError):
            parse_response(bad)


def test_response_answer_count_is_bounded() -> None:
    many = [rr(QNAME, 1, 60, bytes([198, 18, i // 256, i % 256])) for i in range(200)]
    ans = parse_response(response(1, [b"x"], 1, many))
    assert len(ans.addresses) == MAX_ANSWERS
    assert ans.addresses[-1] == f"198.18.0.{MAX_ANSWERS - 1}"


def test_response_lies_about_its_answer_count() -> None:
    msg = response(1, [b"x"], 1, [rr(QNAME, 1, 60, bytes(4))], ancount=0xFFFF)
    assert parse_response(msg).addresses == ("0.0.0.0",)
    assert parse_response(response(1, [b"x"], 1, [rr(QNAME, 1, 60, bytes(4))],
                                   ancount=0)).addresses == ()  # fmt: skip


def test_response_hostile_names() -> None:
    start = 12 + len(wire_name([b"x"])) + 4  # where the answer section begins
    self_loop = struct.pack("!H", 0xC000 | start)  # an owner pointing at itself
    ans = parse_response(response(1, [b"x"], 1, [rr(QNAME, 1, 9, bytes(4)),
                                                 self_loop + bytes(10)]))  # fmt: skip
    assert ans.addresses == ("0.0.0.0",)  # the walk ends at the broken owner
    at_rdata = start + 2 + 10
    loop_cname = rr(QNAME, 5, 9, struct.pack("!H", 0xC000 | at_rdata))  # points to itself
    past = rr(QNAME, 5, 9, b"\x05abcdefghij\x00")  # runs past its 6-byte rdata
    cname = parse_response(response(1, [b"x"], 1, [loop_cname, rr(QNAME, 5, 9, b"\x01y\x00")]))
    assert cname.cnames == ("y",)
    fixed = rr(QNAME, 5, 9, b"\x05abcde\x00")
    assert parse_response(response(1, [b"x"], 1, [past[:10] + b"\x00\x06" + past[12:]]
                                   )).cnames == ()  # fmt: skip
    assert parse_response(response(1, [b"x"], 1, [fixed])).cnames == ("abcde",)


def test_response_worst_case_cost_is_bounded() -> None:
    # 64 KiB: a question, then records whose owners are 16-hop pointer chains to a maximal
    # name, and CNAMEs pointing into the chain: every read stops at the bounds.
    name = (b"\x3f" + b"z" * 63) * 3 + b"\x3d" + b"z" * 61 + b"\x00"  # 255 octets
    hdr = struct.pack("!HHHHHH", 1, 0x8180, 1, 0xFFFF, 0, 0)
    body = hdr + name + b"\x00\x01\x00\x01"
    records = b""
    for _ in range(300):
        records += rr(QNAME, 5, 60, QNAME) + rr(QNAME, 1, 60, bytes(4))
    msg = (body + records)[:65535]
    t0 = time.perf_counter()
    for _ in range(200):
        ans = parse_response(msg)
    assert len(ans.cnames) + len(ans.addresses) <= MAX_ANSWERS
    assert time.perf_counter() - t0 < 2.0


def test_tcp_response_framing() -> None:
    framed = struct.pack("!H", len(RESPONSE_A)) + RESPONSE_A
    assert parse_tcp_response(framed) == parse_response(RESPONSE_A)
    assert parse_tcp_response(framed + b"next").addresses == ("192.0.2.1",)
    for bad in (b"", b"\x00", struct.pack("!H", 11) + RESPONSE_A):
        with pytest.raises(WireError):
            parse_tcp_response(bad)


# Invariant: any bytes -> a DnsResponse, or WireError; never another exception; and what
# comes out is bounded and safe to print.


def _response_survives(buf: bytes, tcp: bool = False) -> DnsResponse | None:
    try:
        ans = parse_tcp_response(buf) if tcp else parse_response(buf)
    except WireError:
        return None
    for addr in ans.addresses:
        assert str(ipaddress.ip_address(addr)) == addr
    for name in (ans.qname, *ans.cnames):
        assert name.isascii() and name.isprintable() and len(name) <= 4 * 255
    assert len(ans.addresses) + len(ans.cnames) <= MAX_ANSWERS
    assert 0 <= ans.ttl < 1 << 31 and 0 <= ans.rcode <= 15
    return ans


BUILT_RESPONSES = [RESPONSE_A, cname_chain(),
                   response(2, [b"x"], 1, [rr(QNAME, 5, 1, b"\x01y" + QNAME)])]  # fmt: skip


@settings(max_examples=600)
@given(st.binary(max_size=300), st.booleans())
def test_fuzz_response_random_bytes(buf: bytes, tcp: bool) -> None:
    _response_survives(buf, tcp)
    _response_survives(struct.pack("!HHHHHH", 1, 0x8180, 1, 8, 0, 0) + buf)


@settings(max_examples=800)
@given(st.data())
def test_fuzz_response_mutated(data: st.DataObject) -> None:
    buf = bytearray(data.draw(st.sampled_from(BUILT_RESPONSES)))
    for _ in range(data.draw(st.integers(1, 6))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    buf[2] |= 0x80  # keep QR set, so the answer walk is reached
    cut = bytes(buf[: data.draw(st.integers(0, len(buf)))])
    _response_survives(cut)
    _response_survives(struct.pack("!H", len(buf)) + cut, tcp=True)


@settings(max_examples=600)
@given(st.data())
def test_fuzz_response_hostile_answer_sections(data: st.DataObject) -> None:
    # Valid header and question, then records of random owners (labels and pointers,
    # mostly into the message), random types among the interesting ones, random rdata.
    owner = st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=20).map(lambda b: bytes([len(b)]) + b),
            st.integers(0, 200).map(lambda p: struct.pack("!H", 0xC000 | p)),
            st.just(b"\0"),
        ),
        max_size=4,
    ).map(b"".join)
    records = data.draw(st.lists(st.tuples(owner, st.sampled_from([1, 5, 28, 16, 39]),
                                           st.integers(0, 0xFFFFFFFF),
                                           st.binary(max_size=24)), max_size=20))  # fmt: skip
    msg = response(3, [b"q", b"example"], 1, [rr(o, t, ttl, rd) for o, t, ttl, rd in records],
                   ancount=data.draw(st.integers(0, 0xFFFF)))  # fmt: skip
    _response_survives(msg)


# --------------------------------------------------------------------------- live


@pytest.mark.privileged
def test_live_query_names_through_nflog() -> None:
    netlab = load_module("coi_fixture_netlab", WIRE / "netlab.py")
    capture = load_module("coi_fixture_nflog_capture", NFLOG / "capture.py")
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


@pytest.mark.privileged
def test_live_response_through_nflog() -> None:
    # A response sent by a socket in ``a`` and logged where it arrives in ``b``: the bytes
    # parse_response reads are the ones the kernel copied.
    netlab = load_module("coi_fixture_netlab", WIRE / "netlab.py")
    capture = load_module("coi_fixture_nflog_capture", NFLOG / "capture.py")
    group = capture.GROUP_B + 100
    rules = f"""
table inet coi_fx_ans {{
  chain in {{
    type filter hook input priority 0; policy accept;
    udp sport 53 log group {group} prefix "ans"
  }}
}}
"""
    with netlab.NetLab() as lab:
        lab.nft(lab.ns_b, rules)
        with lab.nflog(lab.ns_b, group) as (sock, _):
            srv = lab.socket(lab.ns_a, socket.AF_INET, socket.SOCK_DGRAM)
            srv.bind((lab.a4, 53))
            srv.sendto(cname_chain(), (lab.b4, 40053))
            srv.sendto(RESPONSE_A, (lab.b4, 40053))
            got = netlab.recv_until(sock, lambda g: sum(len(nflog.parse(d)) for d in g) >= 2)
            srv.close()
    answers = [parse_response(packet.parse_ip(p.payload).l4_payload)
               for d in got for p in nflog.parse(d)]  # fmt: skip
    assert answers == [parse_response(cname_chain()), parse_response(RESPONSE_A)]
    assert answers[0].addresses == ("198.18.0.7", "198.18.0.8", "2001:2::7")
