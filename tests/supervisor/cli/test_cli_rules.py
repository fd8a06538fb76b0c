"""``coi-watch rules``: lint, list, explain, test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml
from typer.testing import CliRunner

from coi_watch.cli.main import app
from coi_watch.cli.rules import rules_app
from coi_watch.events import Ancestor, ProcExec, event_to_json

runner = CliRunner()
NC_ID = "0b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


def rule_text(detection: dict[str, Any] | None = None, rid: str = NC_ID, **top: Any) -> str:
    doc = {"title": "Netcat with -e", "id": rid, "level": "high",
           "logsource": {"category": "process_creation", "product": "linux"},
           "detection": detection or {"img": {"Image|endswith": "/nc"},
                                      "flag": {"CommandLine|contains": " -e "},
                                      "condition": "img and flag"}, **top}
    return yaml.safe_dump(doc, sort_keys=False)


def write_event(tmp: Path, *argv: str, exe: str = "/bin/busybox") -> Path:
    ev = ProcExec(ts_ns=1, wall_ns=1, container="c", pid=9, exe=exe, argv=argv,
                  ancestry=(Ancestor(pid=1, exe="/bin/bash", cmdline="bash"),))
    path = tmp / "ev.json"
    path.write_bytes(event_to_json(ev))
    return path


def test_mounted_on_the_main_app() -> None:
    res = runner.invoke(app, ["rules", "--help"])
    assert res.exit_code == 0
    for cmd in ("lint", "list", "explain", "test"):
        assert cmd in res.output


def test_lint_clean_file_exits_0(tmp_path: Path) -> None:
    (tmp_path / "ok.yml").write_text(rule_text())
    res = runner.invoke(rules_app, ["lint", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "1 rules and 0 correlations loaded from 1 files; 0 errors, 0 warnings" in res.output


def test_lint_warnings_only_exits_0(tmp_path: Path) -> None:
    f = tmp_path / "warn.yml"
    f.write_text(rule_text(extra_key="x"))
    res = runner.invoke(rules_app, ["lint", str(f)])
    assert res.exit_code == 0
    assert f"{f}:" in res.output and " W104 warning unknown key 'extra_key'" in res.output


def test_lint_errors_exit_1_with_file_line_code(tmp_path: Path) -> None:
    f = tmp_path / "bad.yml"
    f.write_text(rule_text({"sel": {"Imgae": "/nc"}, "condition": "sel"}))
    res = runner.invoke(rules_app, ["lint", str(f)])
    assert res.exit_code == 1
    line = next(i for i, t in enumerate(f.read_text().splitlines(), 1) if "Imgae" in t)
    assert f"{f}:{line}: E003 error field 'Imgae'" in res.output
    assert "did you mean 'Image'" in res.output


def test_lint_packs() -> None:
    res = runner.invoke(rules_app, ["lint", "--packs", "/nonexistent-dir-for-lint"])
    assert res.exit_code == 1  # the missing path is an E010
    assert "E010" in res.output


def test_list(tmp_path: Path) -> None:
    (tmp_path / "r.yml").write_text(rule_text(**{"coi.action": "kill", "coi.mode": "monitor"}))
    res = runner.invoke(rules_app, ["list", "--rules", str(tmp_path), "--no-packs"])
    assert res.exit_code == 0
    header, row = res.output.splitlines()
    assert header.split() == ["ID", "TITLE", "LEVEL", "ACTION", "MODE", "FILE"]
    assert row.startswith(NC_ID)
    for cell in ("Netcat with -e", "high", "kill", "monitor", f"{tmp_path / 'r.yml'}:1"):
        assert cell in row
    packs = runner.invoke(rules_app, ["list"])
    assert "Crypto Miner Started" in packs.output


def test_explain_match(tmp_path: Path) -> None:
    (tmp_path / "r.yml").write_text(rule_text())
    ev = write_event(tmp_path, "nc", "-e", "/bin/sh", "h", "1")
    res = runner.invoke(rules_app, ["explain", NC_ID, str(ev), "-r", str(tmp_path)])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "MATCH  selection img" in out and "MATCH  selection flag" in out
    assert "yes  Image|endswith: '/nc'" in out
    assert "event: '/bin/nc'" in out
    assert out.rstrip().endswith("result    MATCH")


def test_explain_no_match_says_which_item_failed(tmp_path: Path) -> None:
    f = tmp_path / "r.yml"
    f.write_text(rule_text())
    ev = write_event(tmp_path, "nc", "-l", "80")
    res = runner.invoke(rules_app, ["explain", str(f), str(ev)])  # a rule file works too
    assert res.exit_code == 1
    assert "no     selection flag" in res.output
    assert "no   CommandLine|contains: ' -e '" in res.output
    assert "event: 'nc -l 80'" in res.output


def test_explain_wrong_kind_and_unknown_rule(tmp_path: Path) -> None:
    (tmp_path / "r.yml").write_text(rule_text())
    dns = tmp_path / "dns.json"
    dns.write_bytes(orjson.dumps({"kind": "net.dns", "ts_ns": 1, "wall_ns": 1,
                                  "container": "c", "family": 4, "proto": "udp", "src": "a",
                                  "dst": "b", "qname": "x"}))
    res = runner.invoke(rules_app, ["explain", NC_ID, str(dns), "-r", str(tmp_path)])
    assert res.exit_code == 1 and "applies to proc.exec events, not net.dns" in res.output
    res = runner.invoke(rules_app, ["explain", "no-such-rule", str(dns), "--no-packs"])
    assert res.exit_code == 2 and "no loaded rule" in res.output


def test_explain_bad_event(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "nope"}')
    res = runner.invoke(rules_app, ["explain", NC_ID, str(bad)])
    assert res.exit_code == 2 and "unknown event kind" in res.output


def test_test_command_runs_rule_tests(tmp_path: Path) -> None:
    res = runner.invoke(rules_app, ["test", str(tmp_path)])
    assert res.exit_code == 1
    assert "no rule tests" in res.output
