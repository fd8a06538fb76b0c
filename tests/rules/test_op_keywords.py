"""Keyword detections: a bare value list searches the log source's keyword fields."""

from __future__ import annotations

from typing import Any

import yaml

from coi_watch.events import Ancestor, ProcExec
from coi_watch.rules.compile import CompiledRule
from coi_watch.rules.load import load_text


def rule(detection: dict[str, Any]) -> CompiledRule:
    doc = {"title": "t", "id": "0b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "level": "high",
           "logsource": {"category": "process_creation", "product": "linux"},
           "detection": detection}
    res = load_text(yaml.safe_dump(doc, sort_keys=False))
    assert not res.errors, res.errors
    return res.rules[0]


def proc(*argv: str, exe: str = "/usr/bin/x", parent: str = "") -> ProcExec:
    anc = (Ancestor(pid=1, exe="/bin/sh", cmdline=parent),) if parent else ()
    return ProcExec(ts_ns=1, wall_ns=1, container="c", pid=2, exe=exe, argv=argv, ancestry=anc)


def test_keywords_search_anywhere_in_any_keyword_field() -> None:
    r = rule({"keywords": ["mimikatz", "LaZagne"], "condition": "keywords"})
    assert r.match(proc("./run", "MIMIKATZ.exe"))
    assert r.match(proc("x", exe="/opt/lazagne"))
    assert r.match(proc("y", parent="sh -c lazagne all"))
    assert not r.match(proc("ls"))


def test_keywords_with_explicit_wildcards() -> None:
    r = rule({"keywords": ["rm -rf */"], "condition": "keywords"})
    assert r.match(proc("rm", "-rf", "/var/log/"))
