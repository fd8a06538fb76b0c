"""``|re``: RE2 regular expressions, searched (unanchored), flags ``i``, ``m``, ``s``.

RE2 matches in time linear in the input: a container-controlled command line cannot stall
the supervisor (the classic catastrophic-backtracking pattern is checked here), and
patterns RE2 cannot run that way (look-around, back-references) do not load.
"""

from __future__ import annotations

import time
from typing import Any

import yaml

from coi_watch.events import ProcExec
from coi_watch.rules.compile import CompiledRule
from coi_watch.rules.load import LoadResult, load_text


def text_of(detection: dict[str, Any]) -> str:
    doc = {"title": "t", "id": "0b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "level": "high",
           "logsource": {"category": "process_creation", "product": "linux"},
           "detection": detection}
    return yaml.safe_dump(doc, sort_keys=False)


def load(detection: dict[str, Any]) -> LoadResult:
    return load_text(text_of(detection))


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def rule(detection: dict[str, Any]) -> CompiledRule:
    res = load(detection)
    assert not res.errors, res.errors
    return res.rules[0]


def proc(*argv: str) -> ProcExec:
    return ProcExec(ts_ns=1, wall_ns=1, container="c", pid=2, exe="/usr/bin/x", argv=argv)


def test_search_is_unanchored() -> None:
    r = rule({"sel": {"CommandLine|re": "-D"}, "condition": "sel"})
    assert r.match(proc("mount", "-D", "/x"))


def test_case_sensitive_by_default() -> None:
    r = rule({"sel": {"CommandLine|re": r"\s-O\s"}, "condition": "sel"})
    assert r.match(proc("wget", "-O", "f"))
    assert not r.match(proc("wget", "-o", "f"))


def test_flag_i() -> None:
    r = rule({"sel": {"CommandLine|re|i": "CURL.*SH"}, "condition": "sel"})
    assert r.match(proc("curl", "x", "|", "sh"))


def test_flag_m_and_s() -> None:
    m = rule({"sel": {"CommandLine|re|m": "^b$"}, "condition": "sel"})
    assert m.match(proc("a\nb\nc"))
    assert not rule({"sel": {"CommandLine|re": "^b$"}, "condition": "sel"}).match(
        proc("a\nb\nc"))
    s = rule({"sel": {"CommandLine|re|s": "a.c"}, "condition": "sel"})
    assert s.match(proc("a\nc"))
    assert not rule({"sel": {"CommandLine|re": "a.c"}, "condition": "sel"}).match(proc("a\nc"))


def test_anchors_and_counted_repetition() -> None:
    r = rule({"sel": {"CommandLine|re": "(.){200,}"}, "condition": "sel"})
    assert r.match(proc("x" * 250))
    assert not r.match(proc("x" * 10))


def test_linear_time_on_hostile_input() -> None:
    r = rule({"sel": {"CommandLine|re": "(a+)+$"}, "condition": "sel"})
    hostile = proc("a" * 50_000 + "!")
    start = time.perf_counter()
    assert not r.match(hostile)
    assert time.perf_counter() - start < 1.0


def test_look_around_and_backreferences_do_not_load() -> None:
    for pattern in ("a(?=b)", "(?<!x)y", r"(a)\1"):
        text = text_of({"sel": {"CommandLine|re": pattern}, "condition": "sel"})
        res = load_text(text)
        assert [d.code for d in res.errors] == ["E005"], pattern
        assert "RE2" in res.errors[0].message
        assert res.errors[0].source.line == line_of(text, "CommandLine|re")


def test_invalid_regex_is_located() -> None:
    text = text_of({"sel": {"Image": "x", "CommandLine|re": "(unclosed"}, "condition": "sel"})
    res = load_text(text)
    assert res.errors[0].code == "E005"
    assert res.errors[0].source.line == line_of(text, "CommandLine|re")
