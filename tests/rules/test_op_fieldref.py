"""``|fieldref``: compare one field with another (equality, or with contains/startswith/
endswith)."""

from __future__ import annotations

from typing import Any

import yaml

from coi_watch.events import Ancestor, ProcExec
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


def child(exe: str, parent_exe: str, argv: tuple[str, ...] = ("x",)) -> ProcExec:
    return ProcExec(ts_ns=1, wall_ns=1, container="c", pid=3, exe=exe, argv=argv,
                    ancestry=(Ancestor(pid=1, exe=parent_exe, cmdline=parent_exe),))


def test_equal_fields() -> None:
    r = rule({"sel": {"Image|fieldref": "ParentImage"}, "condition": "sel"})
    assert r.match(child("/bin/bash", "/bin/bash"))
    assert not r.match(child("/bin/bash", "/bin/sh"))
    assert not r.match(proc("x"))  # ParentImage absent: no match


def test_fieldref_with_contains() -> None:
    r = rule({"sel": {"CommandLine|fieldref|contains": "ParentImage"}, "condition": "sel"})
    assert r.match(child("/bin/x", "/bin/bash", ("x", "/BIN/BASH", "-c")))
    assert not r.match(child("/bin/x", "/bin/bash", ("x", "-c")))


def test_fieldref_to_unknown_field_does_not_load() -> None:
    doc = {"title": "t", "id": "0b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
           "logsource": {"category": "process_creation"},
           "detection": {"sel": {"Image|fieldref": "Nope"}, "condition": "sel"}}
    assert [d.code for d in load_text(yaml.safe_dump(doc)).errors] == ["E003"]
