"""Tests for coi_watch.wire.proc_connector: golden kernel datagrams, framing errors, fuzzing."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coi_watch.errors import WireError
from coi_watch.wire.proc_connector import (
    LAYOUTS,
    PROC_CN_MCAST_IGNORE,
    PROC_CN_MCAST_LISTEN,
    PROC_EVENT_ALL,
    ProcRecord,
    decode_exit_status,
    parse,
    subscribe_message,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "wire" / "proc_connector"
GOLDEN = sorted(p.stem for p in FIXTURES.glob("*.hex"))
STREAM = [bytes.fromhex(line) for line in (FIXTURES / "stream.hexl").read_text().split()]


def frame(name: str) -> bytes:
    return bytes.fromhex((FIXTURES / f"{name}.hex").read_text().strip())


def expected(name: str) -> list[dict[str, object]]:
    doc = json.loads((FIXTURES / f"{name}.json").read_text())
    records: list[dict[str, object]] = doc["records"]
    return records


# --------------------------------------------------------------------------- golden files


def test_every_kind_has_a_golden_capture() -> None:
    kinds = {r["what"] for name in GOLDEN for r in expected(name)}
    assert kinds == {layout.what for layout in LAYOUTS.values()}
    assert len(GOLDEN) >= 14


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_datagram_parses_to_expected_records(name: str) -> None:
    got = [dataclasses.asdict(r) for r in parse(frame(name))]
    assert got == expected(name)


def test_golden_semantics() -> None:
    # What the capture script did, seen through the parser: a thread is pid != tgid, a process
    # fork is pid == tgid, and exit_code is a wait status.
    (thread,) = parse(frame("fork_thread"))
    (proc,) = parse(frame("fork"))
    assert thread.pid != thread.tgid
    assert proc.pid == proc.tgid and proc.parent_tgid != proc.pid
    assert decode_exit_status(parse(frame("exit_code3"))[0].exit_code) == (3, 0)
    assert decode_exit_status(parse(frame("exit_sigkill"))[0].exit_code) == (0, 9)
    assert parse(frame("comm_binary"))[0].comm == "coi-\\xff\\xfe-comm"
    uid = parse(frame("uid"))[0]
    assert (uid.ruid, uid.euid) == (1234, 1235)


def test_captured_stream_parses_in_full() -> None:
    records = [r for buf in STREAM for r in parse(buf)]
    assert len(records) == len(STREAM)  # the kernel sends one event per datagram
    kinds = {r.what for r in records}
    assert {"fork", "exec", "exit"} <= kinds
    assert "unknown" not in kinds
    assert all(r.ts_ns > 0 for r in records)


def test_several_messages_in_one_datagram() -> None:
    a, b = frame("fork"), frame("exec")
    got = parse(a + b)
    assert [r.what for r in got] == ["fork", "exec"]
    assert got == parse(a) + parse(b)


# --------------------------------------------------------------------------- errors


def _with_what(buf: bytes, what: int) -> bytes:
    out = bytearray(buf)
    struct.pack_into("=I", out, 16 + 20, what)  # nlmsghdr + cn_msg, then proc_event.what
    return bytes(out)


def test_unknown_what_is_kept_not_dropped() -> None:
    (rec,) = parse(_with_what(frame("exec"), 0x400))  # "next" per linux/cn_proc.h
    assert rec.what == "unknown" and rec.code == 0x400
    assert rec.ts_ns == parse(frame("exec"))[0].ts_ns


def test_every_truncation_is_a_wire_error() -> None:
    buf = frame("exit_code3")
    assert parse(b"") == []
    for n in range(1, len(buf)):
        with pytest.raises(WireError):
            parse(buf[:n])


def _patch_cn_len(buf: bytes, ln: int) -> bytes:
    out = bytearray(buf)
    struct.pack_into("=H", out, 16 + 16, ln)
    return bytes(out)


def test_cn_len_checks() -> None:
    buf = frame("exit_zero")
    with pytest.raises(WireError, match="exceeds"):
        parse(_patch_cn_len(buf, 41))
    with pytest.raises(WireError, match="shorter than a proc_event header"):
        parse(_patch_cn_len(buf, 15))
    # 16 + 24 (exit member) fits exactly; 16 + 23 does not.
    assert parse(_patch_cn_len(buf, 40))[0].what == "exit"
    with pytest.raises(WireError, match="event_data"):
        parse(_patch_cn_len(buf, 39))
    # A small member only needs its own bytes: exec is pid + tgid.
    assert parse(_patch_cn_len(frame("exec"), 24))[0].what == "exec"


def test_other_connector_users_are_refused() -> None:
    out = bytearray(frame("exec"))
    struct.pack_into("=I", out, 16, 7)  # CN_IDX_DM
    with pytest.raises(WireError, match="not proc events"):
        parse(bytes(out))


def _nlmsg(typ: int, payload: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), typ, 0, 0, 0) + payload


def test_netlink_control_messages() -> None:
    assert parse(_nlmsg(1, b"")) == []  # NLMSG_NOOP
    assert parse(_nlmsg(2, struct.pack("=i", 0) + bytes(16))) == []  # ack
    with pytest.raises(WireError, match="netlink error 105"):
        parse(_nlmsg(2, struct.pack("=i", -105) + bytes(16)))
    with pytest.raises(WireError):
        parse(_nlmsg(2, b"\0\0"))
    with pytest.raises(WireError, match="overrun"):
        parse(_nlmsg(4, b""))


# --------------------------------------------------------------------------- builders


def test_subscribe_message_layout() -> None:
    # The bytes the measured probe (notes/kernel-sources.md section 3) sent successfully.
    probe = (
        struct.pack("=IHHII", 40, 3, 0, 0, 0)
        + struct.pack("=IIIIHH", 1, 1, 0, 0, 4, 0)
        + struct.pack("=I", 1)
    )
    assert subscribe_message(PROC_CN_MCAST_LISTEN) == probe
    ign = subscribe_message(PROC_CN_MCAST_IGNORE, seq=7, ack=9)
    assert struct.unpack_from("=IIIIHH", ign, 16) == (1, 1, 7, 9, 4, 0)
    assert struct.unpack_from("=I", ign, 36) == (2,)
    filt = subscribe_message(PROC_CN_MCAST_LISTEN, events=PROC_EVENT_ALL)
    assert len(filt) == 44 and struct.unpack_from("=II", filt, 36) == (1, PROC_EVENT_ALL)
    with pytest.raises(ValueError):
        subscribe_message(3)


@given(st.integers(0, 255), st.integers(1, 127), st.booleans())
def test_decode_exit_status(code: int, sig: int, core: bool) -> None:
    assert decode_exit_status(code << 8) == (code, 0)
    assert decode_exit_status(sig | (0x80 if core else 0)) == (0, sig)


# --------------------------------------------------------------------------- fuzzing
# Invariant: whatever bytes arrive, parse() returns records or raises WireError, never any
# other exception (h11's contract for its own parser).


def _only_wire_errors(buf: bytes) -> list[ProcRecord] | None:
    try:
        return parse(buf)
    except WireError:
        return None


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(buf: bytes) -> None:
    got = _only_wire_errors(buf)
    if got is not None:
        assert all(isinstance(r, ProcRecord) for r in got)


@settings(max_examples=400)
@given(
    st.sampled_from(GOLDEN),
    st.lists(st.tuples(st.integers(0, 199), st.integers(0, 255)), max_size=6),
    st.integers(0, 200),
    st.binary(max_size=40),
)
def test_fuzz_mutated_real_datagrams(
    name: str, flips: list[tuple[int, int]], cut: int, tail: bytes
) -> None:
    buf = bytearray(frame(name) + frame("exec"))
    for pos, val in flips:
        if pos < len(buf):
            buf[pos] = val
    got = _only_wire_errors(bytes(buf[: len(buf) - cut % (len(buf) + 1)]) + tail)
    if got is not None:
        for rec in got:
            assert rec.what in {layout.what for layout in LAYOUTS.values()} | {"unknown"}
            json.dumps(dataclasses.asdict(rec))
