"""``|lt``, ``|lte``, ``|gt``, ``|gte``: numeric comparisons."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from coi_watch.events import ProcExec
from coi_watch.rules.compile import CompiledRule
from coi_watch.rules.load import load_text


def rule(detection: dict[str, Any], **load: Any) -> CompiledRule:
    doc = {"title": "t", "id": "0b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "level": "high",
           "logsource": {"category": "process_creation", "product": "linux"},
           "detection": detection}
    res = load_text(yaml.safe_dump(doc, sort_keys=False), **load)
    assert not res.errors, res.errors
    return res.rules[0]


def proc(*argv: str, exe: str = "/usr/bin/x", cwd: str = "/", pid: int = 2,
         ppid: int = 1) -> ProcExec:
    return ProcExec(ts_ns=1, wall_ns=1, container="c", pid=pid, ppid=ppid, exe=exe, argv=argv,
                    cwd=cwd)


@pytest.mark.parametrize(("mod", "bound", "hits"), [
    ("lt", 100, {50}), ("lte", 100, {50, 100}), ("gt", 100, {150}), ("gte", 100, {100, 150}),
])
def test_comparisons(mod: str, bound: int, hits: set[int]) -> None:
    r = rule({"sel": {f"ProcessId|{mod}": bound}, "condition": "sel"})
    for pid in (50, 100, 150):
        assert r.match(proc("x", pid=pid)) == (pid in hits), (mod, pid)


def test_text_field_compared_as_number() -> None:
    r = rule({"sel": {"CommandLine|gt": 10}, "condition": "sel"})
    assert r.match(proc("11"))
    assert not r.match(proc("9"))
    assert not r.match(proc("eleven"))


def test_non_numeric_bound_does_not_load() -> None:
    doc = {"title": "t", "id": "0b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
           "logsource": {"category": "process_creation"},
           "detection": {"sel": {"ProcessId|lt": "many"}, "condition": "sel"}}
    assert [d.code for d in load_text(yaml.safe_dump(doc)).errors] == ["E005"]
