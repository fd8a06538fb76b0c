"""Properties: any JSON-able payload round-trips through the writer and reader and the file
verifies; reopening a file with any tail never breaks the writer."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from coi_watch.audit import AuditLog, Redactor, iter_records, verify_file

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=25,
)
records = st.lists(
    st.tuples(st.sampled_from(["", "c1", "coi-agent-2"]), st.text(min_size=1, max_size=20),
              st.dictionaries(st.text(max_size=10), json_values, max_size=5)),
    min_size=1, max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(records, st.integers(min_value=0, max_value=8))
def test_any_json_payload_round_trips_and_verifies(
        recs: list[tuple[str, str, dict[str, Any]]], reopen_after: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = AuditLog(tmp, redactor=Redactor.disabled(), fsync=False)
        for i, (container, what, detail) in enumerate(recs):
            if i == reopen_after:  # a restart in the middle: seq and chain continue
                log.flush_sync()
                log = AuditLog(tmp, redactor=Redactor.disabled(), fsync=False)
            log.system(container, what, detail)
        log.flush_sync()

        read: dict[str, list[dict[str, Any]]] = {}
        for path in sorted(Path(tmp).glob("*.jsonl")):
            assert verify_file(path).ok
            for rec in iter_records(path):
                assert rec.kind == "system"
                read.setdefault(rec.container, []).append(rec.data)
        expected: dict[str, list[dict[str, Any]]] = {}
        for container, what, detail in recs:
            expected.setdefault(container, []).append(
                {"what": what, **{k: v for k, v in detail.items() if k != "what"}})
        assert read == expected


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_reopening_any_tail_keeps_new_records_readable(tail: bytes, with_good: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if with_good:
            first = AuditLog(tmp, fsync=False)
            first.system("c1", "before", {})
            first.flush_sync()
        with open(Path(tmp) / "c1.jsonl", "ab") as fh:
            fh.write(tail)
        log = AuditLog(tmp, fsync=False)
        log.system("c1", "after", {"n": 1})
        log.flush_sync()
        (path,) = Path(tmp).glob("*.jsonl")
        last = list(iter_records(path, on_bad_line=lambda *_: None))[-1]
        assert last.data == {"what": "after", "n": 1}
        assert (path.read_bytes().endswith(b"\n"))
