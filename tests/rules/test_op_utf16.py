"""``|utf16``, ``|utf16le``, ``|utf16be``, ``|wide``: match UTF-16 encodings (usually
under ``|base64``, as in encoded PowerShell-style payloads)."""

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


def encoded(text: str, codec: str) -> str:
    return base64.b64encode(text.encode(codec)).decode()


def test_wide_and_utf16le_are_the_same() -> None:
    payload = encoded("whoami", "utf-16-le")
    for mod in ("wide", "utf16le"):
        r = rule({"sel": {f"CommandLine|{mod}|base64offset|contains": "whoami"},
                  "condition": "sel"})
        assert r.match(proc("pwsh", "-enc", payload)), mod
        assert not r.match(proc("pwsh", "-enc", encoded("whoami", "utf-8"))), mod


def test_utf16be() -> None:
    r = rule({"sel": {"CommandLine|utf16be|base64offset|contains": "id"}, "condition": "sel"})
    assert r.match(proc("x", encoded("id", "utf-16-be")))


def test_utf16_with_byte_order_mark() -> None:
    r = rule({"sel": {"CommandLine|utf16|base64|contains": "ls"}, "condition": "sel"})
    bom = base64.b64encode(b"\xff\xfe" + "ls".encode("utf-16-le")).decode()
    assert r.match(proc("x", bom))
