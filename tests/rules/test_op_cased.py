"""``|cased``: case-sensitive string matching."""

from __future__ import annotations

from typing import Any

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



def test_cased_exact_and_contains() -> None:
    r = rule({"sel": {"CommandLine|cased|contains": "-O"}, "condition": "sel"})
    assert r.match(proc("wget", "-O", "x"))
    assert not r.match(proc("wget", "-o", "x"))
    e = rule({"sel": {"Image|cased": "/usr/bin/X"}, "condition": "sel"})
    assert e.match(proc("X", exe="/usr/bin/X"))
    assert not e.match(proc("x", exe="/usr/bin/x"))
