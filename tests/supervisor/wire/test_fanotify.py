"""Tests for coi_watch.wire.fanotify: real kernel buffers, framing errors, fuzzing.

The golden buffers were read from fanotify groups on the 6.18 test host (fd numbers and pids
inside them are whatever they were then); the live test at the end reads fresh ones.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coi_watch.errors import WireError
from coi_watch.wire.fanotify import (
    FAN_CLOSE_NOWRITE,
    FAN_CLOSE_WRITE,
    FAN_EVENT_METADATA_LEN,
    FAN_OPEN,
    FAN_OPEN_EXEC,
    FAN_Q_OVERFLOW,
    INFO_TYPES,
    FanEvent,
    iter_events,
    mask_of,
    ops_of,
    parse,
)

# Inode mark on a file: `cat FILE` (OPEN|CLOSE_NOWRITE merged), then our own append
# (OPEN|CLOSE_WRITE merged); FAN_REPORT_FD_ERROR group.
INODE_OPEN_CLOSE = bytes.fromhex(
    "18000000030018003000000000000000040000005a6b0000"
    "18000000030018002800000000000000050000001f6b0000"
)
# Mount mark on /proc: a child read /proc/self/environ and exited before the read, so the
# kernel could not open the file for us: fd = -ESRCH (FAN_REPORT_FD_ERROR).
PROC_FD_ERROR = bytes.fromhex("18000000030018002000000000000000fdffffff5b6b0000")
# FAN_REPORT_PIDFD group: a pidfd info record (type 4, len 8) follows the metadata.
PIDFD = bytes.fromhex("20000000030018002000000000000000040000001f6b00000400080005000000")
# FAN_REPORT_FID | FAN_REPORT_DFID_NAME, FAN_CREATE on a directory: "new-é.txt" created.
DFID_NAME = bytes.fromhex(
    "40000000030018000001000000000000ffffffff1f6b000002002800e6839230e1fef805"
    "080000000100000022e02000cc517ac76e65772dc3a92e7478740000"
)
# 17,000 queued opens of distinct files: the 16,385th record is the overflow marker. With
# FAN_REPORT_FD_ERROR its fd is -EBADF, not FAN_NOFD: test the mask, never the fd.
OVERFLOW = bytes.fromhex("18000000030018000040000000000000f7ffffff00000000")


def meta(mask: int, fd: int = -1, pid: int = 1, info: bytes = b"", *, vers: int = 3,
         meta_len: int = 24, event_len: int | None = None) -> bytes:
    """One record as the kernel lays it out."""
    ln = 24 + len(info) if event_len is None else event_len
    return struct.pack("=IBBHQii", ln, vers, 0, meta_len, mask, fd, pid) + info


def info(info_type: int, body: bytes) -> bytes:
    return struct.pack("=BBH", info_type, 0, 4 + len(body)) + body


# --------------------------------------------------------------------------- golden


def test_merged_open_and_close_of_one_file() -> None:
    cat, ours = parse(INODE_OPEN_CLOSE)
    assert cat == FanEvent(mask=FAN_OPEN | FAN_CLOSE_NOWRITE, fd=4, pid=0x6B5A)
    assert cat.ops == ("open", "close_nowrite")
    assert ours.ops == ("open", "close_write") and ours.fd == 5
    assert not cat.overflow and cat.fd_errno == 0


def test_fd_error_keeps_the_pid() -> None:
    (ev,) = parse(PROC_FD_ERROR)
    assert ev.ops == ("open",)
    assert ev.fd < 0 and ev.fd_errno == errno.ESRCH
    assert ev.pid == 0x6B5B


def test_pidfd_info_record() -> None:
    (ev,) = parse(PIDFD)
    assert ev.pidfd == 5 and ev.fd == 4 and ev.ops == ("open",)
    assert ev.fids == () and ev.unknown_info == ()


def test_dfid_name_info_record() -> None:
    (ev,) = parse(DFID_NAME)
    assert ev.fd == -1 and ev.mask == 0x100  # FAN_CREATE: no fd in FID mode
    (fid,) = ev.fids
    assert fid.kind == "dfid_name"
    assert fid.name == "new-é.txt"
    assert fid.handle_type == 1 and len(fid.handle) == 8


def test_overflow_is_told_by_the_mask() -> None:
    (ev,) = parse(OVERFLOW)
    assert ev.overflow and ev.mask == FAN_Q_OVERFLOW
    assert ev.pid == 0 and ev.ops == ()


def test_a_buffer_of_several_records() -> None:
    buf = INODE_OPEN_CLOSE + PIDFD + DFID_NAME + OVERFLOW
    got = parse(buf)
    assert [e.pid for e in got] == [0x6B5A, 0x6B1F, 0x6B1F, 0x6B1F, 0]
    assert got == parse(INODE_OPEN_CLOSE) + parse(PIDFD) + parse(DFID_NAME) + parse(OVERFLOW)
    assert parse(b"") == []


# --------------------------------------------------------------------------- ops


def test_ops_of_exec_is_one_operation() -> None:
    assert ops_of(FAN_OPEN | FAN_OPEN_EXEC) == ("open_exec",)
    assert ops_of(FAN_OPEN | FAN_OPEN_EXEC | FAN_CLOSE_NOWRITE) == ("open_exec", "close_nowrite")
    assert ops_of(FAN_CLOSE_WRITE | FAN_OPEN) == ("open", "close_write")
    assert ops_of(FAN_Q_OVERFLOW) == ()


def test_mask_of_inverts_ops_of() -> None:
    assert mask_of(["open", "close_write"]) == FAN_OPEN | FAN_CLOSE_WRITE
    assert ops_of(mask_of(["open_exec", "close_nowrite"])) == ("open_exec", "close_nowrite")
    with pytest.raises(ValueError, match="unknown fanotify op"):
        mask_of(["create"])


# --------------------------------------------------------------------------- info records


def test_error_range_and_mnt_records() -> None:
    body = (info(5, struct.pack("=iI", -5, 3)) + info(6, struct.pack("=IQQ", 0, 4096, 512))
            + info(7, struct.pack("=IQ", 0, 0x1234_5678_9ABC)))
    (ev,) = parse(meta(0x8000, info=body))
    assert (ev.error, ev.error_count) == (-5, 3)
    assert ev.range == (4096, 512)
    assert ev.mnt_id == 0x1234_5678_9ABC


def test_unknown_info_type_is_kept_not_dropped() -> None:
    (ev,) = parse(meta(FAN_OPEN, fd=3, info=info(99, b"abcd") + info(4, struct.pack("=i", 7))))
    assert ev.unknown_info == (99,)
    assert ev.pidfd == 7


def test_fid_without_name_and_bad_fids() -> None:
    handle = struct.pack("=iiIi", 1, 2, 4, 0x81) + b"\x01\x02\x03\x04"
    (ev,) = parse(meta(0x200, info=info(1, handle)))
    assert ev.fids[0].kind == "fid" and ev.fids[0].fsid == (1, 2)
    assert ev.fids[0].handle == b"\x01\x02\x03\x04" and ev.fids[0].name == ""
    with pytest.raises(WireError, match="handle_bytes"):
        parse(meta(0x200, info=info(1, struct.pack("=iiIi", 1, 2, 64, 1))))
    with pytest.raises(WireError, match="NUL"):
        parse(meta(0x200, info=info(2, handle + b"name")))
    with pytest.raises(WireError, match="file_handle"):
        parse(meta(0x200, info=info(3, struct.pack("=ii", 1, 2))))


# --------------------------------------------------------------------------- errors


def test_every_truncation_is_a_wire_error() -> None:
    for buf in (PIDFD, DFID_NAME, INODE_OPEN_CLOSE):
        for n in range(1, len(buf)):
            if n == FAN_EVENT_METADATA_LEN and buf is INODE_OPEN_CLOSE:
                continue  # a whole first record: valid on its own
            with pytest.raises(WireError):
                parse(buf[:n])


@pytest.mark.parametrize(
    ("record", "match"),
    [
        (meta(FAN_OPEN, vers=2), "version"),
        (meta(FAN_OPEN, event_len=8), "event_len"),
        (meta(FAN_OPEN, event_len=200), "event_len"),
        (meta(FAN_OPEN, meta_len=16), "metadata_len"),
        (meta(FAN_OPEN, meta_len=40, info=b"\0" * 8), "metadata_len"),
        (meta(FAN_OPEN, info=b"\x04\x00\x02\x00"), "bad len"),
        (meta(FAN_OPEN, info=b"\x04\x00\x20\x00abcd"), "bad len"),
        (meta(FAN_OPEN, info=b"\x04\x00"), "stray"),
        (meta(FAN_OPEN, info=info(5, b"\0\0\0\0")), "error info record"),
        (meta(FAN_OPEN, info=info(7, b"\0" * 8)), "mnt info record"),
    ],
)
def test_impossible_lengths(record: bytes, match: str) -> None:
    with pytest.raises(WireError, match=match):
        parse(record)


def test_events_before_a_bad_record_are_yielded_first() -> None:
    # The reader owns the fds of good events: it must see them before the error.
    it = iter_events(INODE_OPEN_CLOSE + meta(FAN_OPEN, vers=9))
    assert next(it).fd == 4
    assert next(it).fd == 5
    with pytest.raises(WireError):
        next(it)


# --------------------------------------------------------------------------- fuzzing


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_parse_or_raise_wire_error(data: bytes) -> None:
    try:
        events = parse(data)
    except WireError:
        return
    assert all(isinstance(e, FanEvent) for e in events)


_info_records = st.lists(
    st.tuples(st.sampled_from([*INFO_TYPES, 0, 8, 99, 255]), st.binary(max_size=48)),
    max_size=4,
)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(-(2**31), 2**31 - 1),
                          _info_records), max_size=6),
       st.integers(0, 40))
def test_well_framed_records_with_random_info(
    records: list[tuple[int, int, list[tuple[int, bytes]]]], cut: int
) -> None:
    buf = b"".join(meta(mask, fd=fd, info=b"".join(info(t, b) for t, b in infos))
                   for mask, fd, infos in records)
    for data in (buf, buf[: max(0, len(buf) - cut)]):
        try:
            events = parse(data)
        except WireError:
            continue
        assert len(events) <= len(records)
        for ev, (mask, fd, _infos) in zip(events, records, strict=False):
            assert (ev.mask, ev.fd) == (mask, fd)


# --------------------------------------------------------------------------- live kernel


@pytest.mark.privileged
def test_live_kernel_buffer(tmp_path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
    libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                   ctypes.c_char_p]
    target = tmp_path / "f"
    target.write_text("x")
    # FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_PIDFD; inode mark (FAN_MARK_ADD).
    group = libc.fanotify_init(0x1 | 0x2 | 0x80, os.O_RDONLY | os.O_CLOEXEC)
    assert group >= 0, os.strerror(ctypes.get_errno())
    try:
        assert libc.fanotify_mark(group, 0x1, FAN_OPEN | FAN_CLOSE_NOWRITE, -100,
                                  str(target).encode()) == 0
        target.read_text()
        events = parse(os.read(group, 4096))
    finally:
        os.close(group)
    for ev in events:
        for fd in (ev.fd, ev.pidfd):
            if fd >= 0:
                os.close(fd)
    assert [e.ops for e in events] in (
        [("open", "close_nowrite")], [("open",), ("close_nowrite",)])
    assert all(e.pid == os.getpid() and e.fd >= 0 and e.pidfd >= 0 for e in events)
