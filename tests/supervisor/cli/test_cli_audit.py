"""``audit verify`` and ``audit show`` through typer, mounted the way the main CLI does."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
import typer
from typer.testing import CliRunner

from coi_watch.audit import AuditLog
from coi_watch.cli.audit import audit_app
from coi_watch.events import ProcExec
from coi_watch.verdicts import Action, ActionRecord, Severity, Verdict

app = typer.Typer()
app.add_typer(audit_app, name="audit")
runner = CliRunner()
T0 = 1_771_410_225_000_000_000  # 2026-02-18T10:23:45Z


@pytest.fixture
def audit_dir(tmp_path: Path) -> Path:
    now = time.time_ns()
    log = AuditLog(tmp_path / "audit", fsync=False)
    log.event(ProcExec(ts_ns=1, wall_ns=T0, container="c1", pid=42,
                       argv=("bash", "-c", "curl -H 'Authorization: Bearer s3cr3t' x")))
    log.verdict(Verdict(ts_ns=2, wall_ns=T0 + 10**9, container="c1", detector="reverse_shell",
                        title="Reverse shell", severity=Severity.CRITICAL))
    log.action(ActionRecord(ts_ns=3, wall_ns=T0 + 2 * 10**9, container="c1",
                            action=Action.KILL, status="done"))
    log.verdict(Verdict(ts_ns=4, wall_ns=now, container="c2", detector="dns_tunnel",
                        title="DNS tunnel", severity=Severity.WARNING))
    log.system("", "started", {"version": "0.1.0"})
    log.flush_sync()
    return tmp_path / "audit"


def test_verify_ok(audit_dir: Path) -> None:
    result = runner.invoke(app, ["audit", "verify", str(audit_dir / "c1.jsonl"), str(audit_dir)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"OK {audit_dir / 'c1.jsonl'} (3 records)",
        f"OK {audit_dir / '_supervisor.jsonl'} (1 records)",
        f"OK {audit_dir / 'c1.jsonl'} (3 records)",
        f"OK {audit_dir / 'c2.jsonl'} (1 records)",
    ]


def test_verify_broken_and_missing(audit_dir: Path) -> None:
    path = audit_dir / "c1.jsonl"
    body = path.read_bytes().split(b"\n")
    obj = orjson.loads(body[0])
    obj["data"]["pid"] = 1
    path.write_bytes(b"\n".join([orjson.dumps(obj), *body[1:]]))

    result = runner.invoke(app, ["audit", "verify", str(path), str(audit_dir / "c2.jsonl")])
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0].startswith(f"BROKEN {path}:1: record altered")
    assert f"OK {audit_dir / 'c2.jsonl'}" in result.stdout

    result = runner.invoke(app, ["audit", "verify", str(path), str(audit_dir / "nope.jsonl")])
    assert result.exit_code == 2
    assert "ERROR cannot read" in result.stderr and "nope.jsonl" in result.stderr


def test_verify_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["audit", "verify", str(tmp_path)])
    assert result.exit_code == 2 and "no *.jsonl files" in result.stderr


def test_show_prints_a_merged_human_timeline(audit_dir: Path) -> None:
    result = runner.invoke(app, ["audit", "show", str(audit_dir)])
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[0] == ("2026-02-18T10:23:45.000Z c1 event   proc.exec pid=42 bash -c curl -H "
                      "'Authorization: [REDACTED]' x")
    assert out[1] == "2026-02-18T10:23:46.000Z c1 verdict critical reverse_shell: Reverse shell"
    assert out[2] == "2026-02-18T10:23:47.000Z c1 action  kill done"
    assert {out[3].split()[1:4][0], out[4].split()[1]} == {"c2", "-"}
    assert "s3cr3t" not in result.stdout


@pytest.mark.parametrize(("args", "containers_kinds"), [
    (["--kind", "verdict"], [("c1", "verdict"), ("c2", "verdict")]),
    (["--level", "high"], [("c1", "verdict")]),
    (["--level", "HIGH", "--kind", "verdict", "--kind", "action"],
     [("c1", "verdict"), ("c1", "action")]),
    (["--container", "c2"], [("c2", "verdict")]),
    (["-C", "c1", "-k", "event"], [("c1", "event")]),
    (["--since", "1h"], None),  # the c2 verdict and the system record are recent
    (["--until", "2026-02-18T10:23:46Z"], [("c1", "event"), ("c1", "verdict")]),
])
def test_show_filters(audit_dir: Path, args: list[str],
                      containers_kinds: list[tuple[str, str]] | None) -> None:
    result = runner.invoke(app, ["audit", "show", str(audit_dir), "--json", *args])
    assert result.exit_code == 0, result.output
    recs = [orjson.loads(line) for line in result.stdout.splitlines()]
    got = [(r["container"], r["kind"]) for r in recs]
    if containers_kinds is None:
        assert sorted(got) == [("", "system"), ("c2", "verdict")]
    else:
        assert got == containers_kinds


def test_show_json_prints_the_raw_lines(audit_dir: Path) -> None:
    result = runner.invoke(app, ["audit", "show", str(audit_dir / "c1.jsonl"), "--json"])
    assert result.stdout.encode() == (audit_dir / "c1.jsonl").read_bytes()


@pytest.mark.parametrize(("args", "words"), [
    (["--level", "severe"], "'severe' is not one of info, warning, high, critical"),
    (["--kind", "events"], "'events' is not one of action, event, system, verdict"),
    (["--since", "last tuesday"], "not a time"),
])
def test_show_rejects_bad_options(audit_dir: Path, args: list[str], words: str) -> None:
    result = runner.invoke(app, ["audit", "show", str(audit_dir), *args])
    assert result.exit_code == 2
    assert words in " ".join(result.output.replace("│", " ").split())  # rich wraps the box


def test_show_skips_bad_lines_with_a_warning_and_reports_missing_files(audit_dir: Path) -> None:
    with open(audit_dir / "c2.jsonl", "ab") as fh:
        fh.write(b'{"torn')
    result = runner.invoke(app, ["audit", "show", str(audit_dir / "c2.jsonl"),
                                 str(audit_dir / "gone.jsonl")])
    assert result.exit_code == 2
    assert len(result.stdout.splitlines()) == 1
    assert "c2.jsonl:2: skipped, not a record (not valid JSON)" in result.stderr
    assert "ERROR cannot read" in result.stderr and "gone.jsonl" in result.stderr


def test_help_lists_both_commands() -> None:
    result = runner.invoke(app, ["audit", "--help"])
    assert result.exit_code == 0
    assert "verify" in result.stdout and "show" in result.stdout
