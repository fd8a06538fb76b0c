"""verify_file: an intact chain verifies; each kind of tampering is found at the right line."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coi_watch.audit import GENESIS, AuditLog, line_hash, verify_file
from coi_watch.audit.chain import encode_record, parse_line
from coi_watch.audit.verify import verify_stream
from coi_watch.errors import AuditError, ChainError
from coi_watch.events import ProcExit


def write_log(directory: Path, n: int = 5) -> Path:
    log = AuditLog(directory, fsync=False)
    for pid in range(1, n + 1):
        log.event(ProcExit(ts_ns=time.monotonic_ns(), wall_ns=time.time_ns(),
                           container="c1", pid=pid, code=pid))
    log.flush_sync()
    return log.path_for("c1")


Edit = Callable[[list[bytes]], list[bytes]]


def rewrite(path: Path, edit: Edit) -> None:
    body = path.read_bytes().split(b"\n")[:-1]
    path.write_bytes(b"".join(line + b"\n" for line in edit(body)))


def test_an_intact_file_verifies(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    result = verify_file(path)
    assert result.ok and result.records == 5 and result.error is None
    assert result.head == line_hash(path.read_bytes().split(b"\n")[4])
    result.raise_for_error()


def test_an_empty_file_verifies(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_bytes(b"")
    result = verify_file(tmp_path / "e.jsonl")
    assert result.ok and result.records == 0 and result.head == GENESIS


def test_a_missing_file_is_an_audit_error_not_a_broken_chain(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="cannot read"):
        verify_file(tmp_path / "nope.jsonl")


def _edit_data(body: list[bytes], index: int) -> list[bytes]:
    obj = orjson.loads(body[index])
    obj["data"]["code"] = 99
    body[index] = orjson.dumps(obj)
    return body


@pytest.mark.parametrize(("name", "edit", "line", "words"), [
    ("edit a field of a middle record", lambda b: _edit_data(b, 2), 3, "record altered"),
    ("edit a field of the first record", lambda b: _edit_data(b, 0), 1, "record altered"),
    ("delete a line", lambda b: b[:2] + b[3:], 3, "seq 4, expected 3"),
    ("delete the first line", lambda b: b[1:], 1, "seq 2, expected 1"),
    ("swap two lines", lambda b: [b[0], b[2], b[1], *b[3:]], 2, "seq 3, expected 2"),
    ("repeat a line", lambda b: [*b[:3], b[2], *b[3:]], 4, "repeated or out of order"),
    ("break the JSON", lambda b: [*b[:1], b[1][:-1], *b[2:]], 2, "not valid JSON"),
    ("change the version", lambda b: [*b[:3], b[3].replace(b'"v":1', b'"v":9'), *b[4:]], 4,
     "unknown schema version v=9"),
    ("forge the genesis", lambda b: [b[0].replace(b'"prev":"0', b'"prev":"1'), *b[1:]], 1,
     "not the genesis hash"),
])
def test_tampering_is_reported_at_the_right_line(tmp_path: Path, name: str, edit: Edit,
                                                 line: int, words: str) -> None:
    path = write_log(tmp_path)
    rewrite(path, edit)
    result = verify_file(path)
    assert not result.ok, name
    assert isinstance(result.error, ChainError)
    assert (result.error.line, result.error.path) == (line, str(path)), result.error
    assert words in result.error.reason
    with pytest.raises(ChainError, match=f":{line}: "):
        result.raise_for_error()


def test_a_truncated_last_line_is_a_torn_record(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    path.write_bytes(path.read_bytes()[:-30])
    result = verify_file(path)
    assert result.error is not None and result.error.line == 5
    assert "torn record at the end of the file" in result.error.reason
    assert result.records == 4


def test_recomputed_hashes_cannot_hide_a_removed_middle_record(tmp_path: Path) -> None:
    # Deleting record 3 and fixing record 4's prev still leaves a seq gap.
    path = write_log(tmp_path)
    body = path.read_bytes().split(b"\n")[:-1]
    fourth = parse_line(body[3])
    forged = encode_record(seq=fourth["seq"], kind="event", wall_ns=fourth["wall_ns"],
                           ts_ns=fourth["ts_ns"], container="c1",
                           data=orjson.dumps(fourth["data"]), prev=line_hash(body[1]))
    path.write_bytes(b"\n".join([body[0], body[1], forged, body[4]]) + b"\n")
    result = verify_file(path)
    assert result.error is not None and result.error.line == 3


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_verify_never_raises_on_garbage(data: bytes) -> None:
    result = verify_stream(io.BytesIO(data), "fuzz")
    assert result.ok == (data == b"")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([b"{", b"}", b'"v":1', b",", b'"seq":1', b"\n", b"[]",
                                 b'"prev":"' + GENESIS.encode() + b'"', b'"data":{}']),
                max_size=30))
def test_verify_never_raises_on_near_records(parts: list[bytes]) -> None:
    verify_stream(io.BytesIO(b"".join(parts)), "fuzz")
