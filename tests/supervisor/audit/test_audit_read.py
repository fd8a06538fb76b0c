"""Reading back: filters, time parsing, merged timelines, payload decoding, safe lines."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from coi_watch.audit import (
    AuditLog,
    AuditRecord,
    RecordFilter,
    expand_paths,
    format_record,
    iter_records,
    merge_records,
    parse_time,
)
from coi_watch.errors import AuditError
from coi_watch.events import DnsQuery, NetConnect, ProcExec
from coi_watch.verdicts import Action, ActionRecord, Severity, Verdict

T0 = 1_771_410_225_000_000_000  # 2026-02-18T10:23:45Z
MIN = 60 * 10**9


def verdict(container: str, sev: Severity, wall_ns: int) -> Verdict:
    return Verdict(ts_ns=1, wall_ns=wall_ns, container=container, detector="d",
                   title=f"{sev} thing", severity=sev)


@pytest.fixture
def audit_dir(tmp_path: Path) -> Path:
    log = AuditLog(tmp_path, fsync=False)
    log.event(ProcExec(ts_ns=1, wall_ns=T0, container="a", pid=7, argv=("curl", "x")))
    log.verdict(verdict("a", Severity.WARNING, T0 + 1 * MIN))
    log.verdict(verdict("b", Severity.CRITICAL, T0 + 2 * MIN))
    log.action(ActionRecord(ts_ns=1, wall_ns=T0 + 3 * MIN, container="b", action=Action.KILL,
                            status="failed", error="not running"))
    log.verdict(verdict("a", Severity.HIGH, T0 + 4 * MIN))
    log.flush_sync()
    return tmp_path


def seqs(recs: list[AuditRecord]) -> list[tuple[str, int]]:
    return [(r.container, r.seq) for r in recs]


def test_merge_is_a_timeline_across_files(audit_dir: Path) -> None:
    recs = list(merge_records(expand_paths([audit_dir])))
    assert seqs(recs) == [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("a", 3)]
    assert [r.line for r in recs] == [1, 2, 1, 2, 3]


@pytest.mark.parametrize(("filt", "expected"), [
    (RecordFilter(containers=frozenset({"b"})), [("b", 1), ("b", 2)]),
    (RecordFilter(kinds=frozenset({"event", "action"})), [("a", 1), ("b", 2)]),
    (RecordFilter(level=Severity.HIGH), [("b", 1), ("a", 3)]),
    (RecordFilter(level=Severity.HIGH, kinds=frozenset({"verdict", "action"})),
     [("b", 1), ("b", 2), ("a", 3)]),
    (RecordFilter(level=Severity.INFO), [("a", 2), ("b", 1), ("a", 3)]),
    (RecordFilter(since_ns=T0 + 2 * MIN, until_ns=T0 + 3 * MIN), [("b", 1), ("b", 2)]),
    (RecordFilter(containers=frozenset({"a"}), level=Severity.CRITICAL), []),
])
def test_filters(audit_dir: Path, filt: RecordFilter, expected: list[tuple[str, int]]) -> None:
    assert seqs(list(merge_records(expand_paths([audit_dir]), filt))) == expected


def test_parse_time() -> None:
    now = T0
    assert parse_time("10m", now_ns=now) == now - 10 * MIN
    assert parse_time("2h", now_ns=now) == now - 120 * MIN
    assert parse_time("1d", now_ns=now) == now - 24 * 60 * MIN
    assert parse_time("1.5s", now_ns=now) == now - 1_500_000_000
    assert parse_time("now", now_ns=now) == now
    assert parse_time("2026-02-18T10:23:45Z") == T0
    assert parse_time("2026-02-18T11:23:45.5+01:00") == T0 + 500_000_000
    local = datetime(2026, 2, 18, 10, 23, 45).astimezone()
    assert parse_time("2026-02-18T10:23:45") == int(local.timestamp()) * 10**9
    assert parse_time("2026-02-18") == int(datetime(2026, 2, 18).astimezone().timestamp()) \
        * 10**9
    for bad in ("yesterday", "10 parsecs", "", "-5m"):
        with pytest.raises(ValueError, match="not a time"):
            parse_time(bad)
    assert abs(parse_time("0s") - time.time_ns()) < 10**9


def test_bad_lines_raise_or_go_to_the_handler(audit_dir: Path) -> None:
    path = audit_dir / "a.jsonl"
    with open(path, "ab") as fh:
        fh.write(b"not json\n")
    with pytest.raises(AuditError, match=r"a\.jsonl:4: not valid JSON"):
        list(iter_records(path))
    seen: list[tuple[int, str]] = []
    recs = list(iter_records(path, on_bad_line=lambda p, n, why: seen.append((n, why))))
    assert len(recs) == 3 and seen == [(4, "not valid JSON")]
    with pytest.raises(AuditError, match="cannot read"):
        list(iter_records(audit_dir / "missing.jsonl"))


def test_format_record_summaries(audit_dir: Path) -> None:
    text = [format_record(r) for r in merge_records(expand_paths([audit_dir]))]
    assert text[0] == "2026-02-18T10:23:45.000Z a event   proc.exec pid=7 curl x"
    assert text[1] == "2026-02-18T10:24:45.000Z a verdict warning d: warning thing"
    assert text[3] == "2026-02-18T10:26:45.000Z b action  kill failed: not running"


def test_format_record_network_and_system(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, fsync=False)
    log.event(NetConnect(ts_ns=1, wall_ns=T0, container="c", family=6, proto="tcp",
                         src="fd42::2", sport=40000, dst="2001:db8::1", dport=443))
    log.event(DnsQuery(ts_ns=1, wall_ns=T0, container="c", family=4, proto="udp",
                       src="10.0.0.2", dst="10.0.0.1", qname="example.com"))
    log.system("", "started", {"version": "0.1", "sources": ["proc", "nflog"]})
    log.flush_sync()
    out = [format_record(r) for r in merge_records(expand_paths([tmp_path]))]
    assert "net.connect tcp [fd42::2]:40000 -> [2001:db8::1]:443" in out[0]
    assert "net.dns example.com type=1 via 10.0.0.1:53" in out[1]
    assert out[2].endswith(' - system  started version=0.1 sources=["proc","nflog"]')


def test_format_record_escapes_terminal_controls(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, fsync=False)
    log.event(ProcExec(ts_ns=1, wall_ns=T0, container="c", pid=1,
                       argv=("echo", "\x1b]0;pwned\x07", "\u202egnp.exe", "a\nb")))
    log.flush_sync()
    (rec,) = iter_records(tmp_path / "c.jsonl")
    line = format_record(rec)
    assert "\x1b" not in line and "\u202e" not in line and "\n" not in line
    assert "\\x1b]0;pwned\\x07 \\u202egnp.exe a\\x0ab" in line


def test_payload_decoding(audit_dir: Path) -> None:
    recs = list(iter_records(audit_dir / "b.jsonl"))
    assert isinstance(recs[0].payload(), Verdict)
    act = recs[1].payload()
    assert isinstance(act, ActionRecord) and act.action is Action.KILL
    bad = AuditRecord(v=1, seq=1, kind="event", wall_ns=0, ts_ns=0, container="c",
                      data={"kind": "nope"}, prev="")
    with pytest.raises(ValueError, match="bad event payload"):
        bad.payload()


def test_records_remember_where_they_came_from(audit_dir: Path) -> None:
    rec = next(iter_records(audit_dir / "b.jsonl"))
    assert rec.path == str(audit_dir / "b.jsonl") and rec.line == 1
    assert AuditRecord.from_line(rec.raw) == AuditRecord.from_line(rec.raw)
    assert datetime.fromtimestamp(rec.wall_ns / 1e9, UTC).minute == 25
