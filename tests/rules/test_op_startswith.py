"""``|startswith``: the field begins with the value (case-insensitive)."""

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


def proc(*argv: str, exe: str = "/usr/bin/x", cwd: str = "/") -> ProcExec:
    return ProcExec(ts_ns=1, wall_ns=1, container="c", pid=2, exe=exe, argv=argv, cwd=cwd)


def test_prefix() -> None:
    r = rule({"sel": {"Image|startswith": "/tmp/"}, "condition": "sel"})
    assert r.match(proc("x", exe="/tmp/payload"))
    assert not r.match(proc("x", exe="/usr/tmp/payload"))


def test_prefix_list_and_case() -> None:
    r = rule({"sel": {"CurrentDirectory|startswith": ["/DEV/SHM", "/var/tmp"]},
              "condition": "sel"})
    assert r.match(proc("x", cwd="/dev/shm/a"))
    assert r.match(proc("x", cwd="/var/tmp"))
    assert not r.match(proc("x", cwd="/home"))


def test_whole_value_is_a_prefix_of_itself() -> None:
    r = rule({"sel": {"Image|startswith": "/bin/sh"}, "condition": "sel"})
    assert r.match(proc("sh", exe="/bin/sh"))
