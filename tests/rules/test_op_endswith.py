"""``|endswith``: the field ends with the value; the usual ``Image|endswith: '/nc'``."""

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


def proc(*argv: str, exe: str = "/usr/bin/x") -> ProcExec:
    return ProcExec(ts_ns=1, wall_ns=1, container="c", pid=2, exe=exe, argv=argv)


def test_suffix() -> None:
    r = rule({"sel": {"Image|endswith": ["/nc", "/ncat"]}, "condition": "sel"})
    assert r.match(proc("ncat", exe="/usr/bin/ncat"))
    assert not r.match(proc("ncat", exe="/usr/bin/ncat.bak"))


def test_busybox_applet_is_the_image() -> None:
    r = rule({"sel": {"Image|endswith": "/nc"}, "condition": "sel"})
    assert r.match(proc("nc", "-l", exe="/bin/busybox"))
    assert r.match(proc("busybox", "nc", "-l", exe="/bin/busybox"))
    assert not r.match(proc("ls", exe="/bin/busybox"))


def test_case_insensitive() -> None:
    r = rule({"sel": {"Image|endswith": "/NMAP"}, "condition": "sel"})
    assert r.match(proc("nmap", exe="/usr/bin/nmap"))
