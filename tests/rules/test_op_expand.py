"""``|expand``: ``%placeholder%`` values come from the loader's placeholders mapping; one
without values is refused (the Sigma spec requires it)."""

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



def test_placeholder_expands_to_every_value() -> None:
    r = rule({"sel": {"Image|expand": "%shells%"}, "condition": "sel"},
             placeholders={"shells": ["/bin/sh", "/bin/*ash"]})
    assert r.match(proc("sh", exe="/bin/sh"))
    assert r.match(proc("bash", exe="/bin/bash"))
    assert not r.match(proc("zsh", exe="/bin/zsh"))


def test_placeholder_inside_a_value() -> None:
    r = rule({"sel": {"CommandLine|expand|contains": "--host %hosts%"}, "condition": "sel"},
             placeholders={"hosts": ["evil.example"]})
    assert r.match(proc("tool", "--host", "evil.example"))


def test_missing_placeholder_is_an_error() -> None:
    doc = {"title": "t", "id": "0b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
           "logsource": {"category": "process_creation"},
           "detection": {"sel": {"Image|expand": "%nope%"}, "condition": "sel"}}
    errors = load_text(yaml.safe_dump(doc)).errors
    assert [d.code for d in errors] == ["E005"]
    assert "%nope%" in errors[0].message
