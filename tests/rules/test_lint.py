"""Diagnostic codes: every documented code, its severity, and the linter's output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from coi_watch.errors import RuleLocation
from coi_watch.rules import lint
from coi_watch.rules.lint import CODES, Diagnostic, diagnostic, format_diagnostics, lint_paths
from coi_watch.rules.load import load_text

ID = "0b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


def rule(detection: dict[str, Any], logsource: dict[str, str] | None = None,
         **top: Any) -> str:
    d = {"title": "t", "id": ID, "level": "high",
         "logsource": logsource or {"category": "process_creation", "product": "linux"},
         "detection": detection, **top}
    return yaml.safe_dump({k: v for k, v in d.items() if v is not None}, sort_keys=False)


def codes(text: str) -> list[str]:
    return sorted(d.code for d in load_text(text).diagnostics)


SEL = {"sel": {"Image|endswith": "/nc"}, "condition": "sel"}


@pytest.mark.parametrize(("text", "expected"), [
    ("a: [", ["E001"]),
    (rule({"sel": {"Image|nope": "x"}, "condition": "sel"}), ["E002"]),
    (rule({"sel": {"Nope": "x"}, "condition": "sel"}), ["E003"]),
    (rule(SEL, {"product": "linux", "service": "syslog"}), ["E004"]),
    (rule({"sel": {"CommandLine|re": "(?=x)"}, "condition": "sel"}), ["E005"]),
    (rule({"sel": {"Image": "x"}, "condition": "other"}), ["E006"]),
    (rule({"sel": {"Image|all": ["/a", "/b"]}, "condition": "sel"}), ["E007"]),
    (rule(SEL) + "---\n" + rule(SEL), ["E008"]),
    (rule({"sel": {"Image": "x"}, "other": {"Image": "y"}, "condition": "sel"}), ["W101"]),
    (rule({"s": {"TargetFilename": "/x"}, "f": {"Image": "/y"}, "condition": "s and not f"},
          {"category": "file_event"}), ["W103"]),
    (rule(SEL, owner="me"), ["W104"]),
    (rule(SEL, id=None), ["W105"]),
    (rule(SEL, level=None), ["W105"]),
    (rule({"sel": {"Initiated": "true"}, "condition": "sel"},
          {"category": "network_connection"}), ["W106", "W106"]),
])
def test_each_code(text: str, expected: list[str]) -> None:
    assert codes(text) == expected


def test_correlation_and_filter_codes() -> None:
    corr = yaml.safe_dump({"title": "c", "id": "1b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
                           "correlation": {"type": "event_count", "rules": ["missing-rule"],
                                           "group-by": ["Image"], "timespan": "1m",
                                           "condition": {"gte": 3}}})
    assert codes(rule(SEL) + "---\n" + corr) == ["E009"]
    flt = yaml.safe_dump({"title": "f", "id": "2b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
                          "logsource": {"category": "process_creation", "product": "linux"},
                          "filter": {"rules": ["not-a-rule"],
                                     "sel": {"CurrentDirectory": "/tmp"},
                                     "condition": "not sel"}})
    assert "W102" in codes(rule(SEL) + "---\n" + flt)


def test_io_code(tmp_path: Path) -> None:
    assert [d.code for d in lint_paths([tmp_path / "nope.yml"])] == ["E010"]


def test_every_code_is_documented_with_a_severity() -> None:
    doc = lint.__doc__ or ""
    for code, entry in CODES.items():
        assert f"{code} {entry.name}" in " ".join(doc.split()), code
        assert entry.severity == ("error" if code.startswith("E") else "warning")


def test_format_and_sorting() -> None:
    a = diagnostic("W101", "second", RuleLocation("b.yml", 3))
    b = diagnostic("E003", "first", RuleLocation("a.yml", 9))
    c = diagnostic("E001", "third", RuleLocation("b.yml", 10))
    assert format_diagnostics([a, b, c]) == [
        "a.yml:9: E003 error first", "b.yml:3: W101 warning second",
        "b.yml:10: E001 error third"]
    assert Diagnostic("E001", "error", "m", RuleLocation("x")).rule == ""


def test_lint_paths_sorts_by_location(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text(rule({"sel": {"Nope": "x"}, "condition": "sel"}))
    (tmp_path / "a.yml").write_text(rule({"sel": {"Image": "x"}, "unused": {"Image": "y"},
                                          "condition": "sel"}))
    found = lint_paths([tmp_path])
    assert [(Path(d.source.path).name, d.code) for d in found] == [("a.yml", "W101"),
                                                                   ("b.yml", "E003")]


def test_packs_lint_clean() -> None:
    assert lint_paths([], include_packs=True) == ()
