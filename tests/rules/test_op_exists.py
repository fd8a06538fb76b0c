"""``|exists``: the field is present (true) or absent (false)."""

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


def test_exists_true_and_false() -> None:
    present = rule({"sel": {"ParentImage|exists": True}, "condition": "sel"})
    absent = rule({"sel": {"ParentImage|exists": False}, "condition": "sel"})
    orphan = proc("x")
    child = ProcExec(ts_ns=1, wall_ns=1, container="c", pid=3, exe="/bin/x", argv=("x",),
                     ancestry=(Ancestor(pid=1, exe="/bin/bash", cmdline="bash"),))
    assert not present.match(orphan) and absent.match(orphan)
    assert present.match(child) and not absent.match(child)


def test_empty_string_counts_as_absent() -> None:
    r = rule({"sel": {"CurrentDirectory|exists": False}, "condition": "sel"})
    assert r.match(proc("x", cwd=""))
