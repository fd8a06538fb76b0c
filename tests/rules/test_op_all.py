"""``|all``: every value of the list must match (AND), on a field or on keywords."""

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


def proc(*argv: str) -> ProcExec:
    return ProcExec(ts_ns=1, wall_ns=1, container="c", pid=2, exe="/usr/bin/python3", argv=argv)


def test_contains_all() -> None:
    r = rule({"sel": {"CommandLine|contains|all": ["import", "pty", "spawn"]},
              "condition": "sel"})
    assert r.match(proc("python3", "-c", "import pty; pty.spawn('/bin/sh')"))
    assert not r.match(proc("python3", "-c", "import pty"))


def test_all_with_a_single_value() -> None:
    r = rule({"sel": {"CommandLine|contains|all": "pty"}, "condition": "sel"})
    assert r.match(proc("pty"))


def test_keywords_all() -> None:
    r = rule({"kw": {"|all": ["socket", "connect"]}, "condition": "kw"})
    assert r.match(proc("python3", "-c", "socket.connect()"))
    assert not r.match(proc("python3", "-c", "socket"))


def test_all_of_different_exact_values_cannot_load() -> None:
    doc = {"title": "t", "id": "0b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
           "logsource": {"category": "process_creation"},
           "detection": {"sel": {"Image|all": ["/a", "/b"]}, "condition": "sel"}}
    res = load_text(yaml.safe_dump(doc, sort_keys=False))
    assert [d.code for d in res.errors] == ["E007"]
