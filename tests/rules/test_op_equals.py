"""Plain values: whole-field equality, ``*``/``?`` wildcards, escapes, null, numbers, bools."""

from __future__ import annotations

from typing import Any

import yaml

from coi_watch.events import NetConnect, ProcExec
from coi_watch.rules.compile import CompiledRule
from coi_watch.rules.load import load_text


def rule(detection: dict[str, Any], category: str = "process_creation") -> CompiledRule:
    doc = {"title": "t", "id": "0b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "level": "high",
           "logsource": {"category": category, "product": "linux"}, "detection": detection}
    res = load_text(yaml.safe_dump(doc, sort_keys=False))
    assert not res.errors, res.errors
    return res.rules[0]


def proc(*argv: str, exe: str = "/usr/bin/x", cwd: str = "/") -> ProcExec:
    return ProcExec(ts_ns=1, wall_ns=1, container="c", pid=2, exe=exe, argv=argv, cwd=cwd)


def conn(dport: int, dst: str = "198.18.0.1") -> NetConnect:
    return NetConnect(ts_ns=1, wall_ns=1, container="c", family=4, proto="tcp",
                      src="10.0.0.2", dst=dst, dport=dport)


def test_exact_whole_value_case_insensitive() -> None:
    r = rule({"sel": {"Image": "/usr/bin/CURL"}, "condition": "sel"})
    assert r.match(proc("curl", exe="/usr/bin/curl"))
    assert not r.match(proc("curl", exe="/usr/bin/curl2"))


def test_star_and_question_mark() -> None:
    r = rule({"sel": {"Image": "/usr/bin/python?.*"}, "condition": "sel"})
    assert r.match(proc("p", exe="/usr/bin/python3.11"))
    assert not r.match(proc("p", exe="/usr/bin/python311"))
    star = rule({"sel": {"CommandLine": "*"}, "condition": "sel"})
    assert star.match(proc("anything"))
    assert not star.match(proc())  # absent: no value at all


def test_wildcard_matches_across_newlines() -> None:
    r = rule({"sel": {"CommandLine": "a*b"}, "condition": "sel"})
    assert r.match(proc("a\nb"))


def test_escaped_question_mark_is_literal() -> None:
    r = rule({"sel": {"CommandLine": "what\\?"}, "condition": "sel"})
    assert r.match(proc("what?"))
    assert not r.match(proc("whatx"))


def test_null_matches_an_absent_field() -> None:
    r = rule({"sel": {"ParentImage": None}, "condition": "sel"})
    assert r.match(proc("x"))  # no ancestry


def test_number_against_integer_field() -> None:
    r = rule({"sel": {"DestinationPort": [4444, 1337]}, "condition": "sel"},
             "network_connection")
    assert r.match(conn(4444))
    assert not r.match(conn(443))


def test_quoted_number_against_integer_field() -> None:
    r = rule({"sel": {"DestinationPort": "4444"}, "condition": "sel"}, "network_connection")
    assert r.match(conn(4444))


def test_bool_value_matches_true_text() -> None:
    r = rule({"sel": {"Initiated": True, "DestinationPort": 22}, "condition": "sel"},
             "network_connection")
    assert r.match(conn(22))
