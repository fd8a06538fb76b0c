"""``|base64`` and ``|base64offset``: match the encoded form of a value."""

from __future__ import annotations

import base64
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


def b64_at(prefix: str, secret: str) -> str:
    return base64.b64encode((prefix + secret).encode()).decode()


def test_base64_contains() -> None:
    r = rule({"sel": {"CommandLine|base64|contains": "/bin/sh -i"}, "condition": "sel"})
    encoded = base64.b64encode(b"/bin/sh -i").decode()
    assert r.match(proc("sh", "-c", f"echo {encoded} | base64 -d | sh"))
    assert not r.match(proc("sh", "-c", "echo aGVsbG8= | base64 -d"))


def test_base64offset_matches_at_every_offset() -> None:
    r = rule({"sel": {"CommandLine|base64offset|contains": "/dev/tcp/"}, "condition": "sel"})
    for prefix in ("", "x", "xy", "xyz", "bash -i >& "):
        assert r.match(proc("echo", b64_at(prefix, "/dev/tcp/10.0.0.1/4444"))), prefix


def test_base64_of_a_wildcard_does_not_load() -> None:
    doc = {"title": "t", "id": "0b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
           "logsource": {"category": "process_creation"},
           "detection": {"sel": {"CommandLine|base64": "a*"}, "condition": "sel"}}
    res = load_text(yaml.safe_dump(doc, sort_keys=False))
    assert [d.code for d in res.errors] == ["E005"]
