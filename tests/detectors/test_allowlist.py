"""Allowlist detector: names through the container's own DNS answers, TTLs, CIDRs, bounds."""

from __future__ import annotations

import time

import pytest

from coi_watch.detectors.allowlist import Allowlist
from coi_watch.events import DnsAnswer, NetConnect
from coi_watch.verdicts import Severity, Verdict

S = 1_000_000_000
# Distinct keys fed to the bounded-state tests: well past every cap (10x and more), and
# cheap enough for CI. The state must stay at its cap whatever the count.
N_DISTINCT = 200_000
ON = {"network_mode": "allowlist",
      "allow": ["pypi.org", "*.pythonhosted.org", "github.com", "*.github.com",
                "192.0.2.0/24", "2001:db8:1::/48"]}


def conn(dst: str, dport: int = 443, t_s: float = 1.0, proto: str = "tcp",
         container: str = "coi-1") -> NetConnect:
    ts = int(t_s * S)
    return NetConnect(ts_ns=ts, wall_ns=ts, container=container, family=6 if ":" in dst else 4,
                      proto=proto, src="10.10.0.5", sport=40000, dst=dst, dport=dport)


def answer(qname: str, addresses: tuple[str, ...], t_s: float = 0.5, ttl: int = 60,
           cnames: tuple[str, ...] = (), container: str = "coi-1", rcode: int = 0) -> DnsAnswer:
    ts = int(t_s * S)
    return DnsAnswer(ts_ns=ts, wall_ns=ts, container=container, family=4, proto="udp",
                     src="10.10.0.1", dst="10.10.0.5", qname=qname, addresses=addresses,
                     cnames=cnames, ttl=ttl, rcode=rcode)


def run(det: Allowlist, events: list[NetConnect | DnsAnswer]) -> list[Verdict]:
    out: list[Verdict] = []
    for ev in events:
        out.extend(det.feed(ev, ev.ts_ns))
    return out


# ----------------------------------------------------------------------------- attacks


def test_hard_coded_ip_is_high() -> None:
    verdicts = run(Allowlist(ON), [conn("203.0.113.66", 443)])
    assert len(verdicts) == 1
    v = verdicts[0]
    assert v.severity is Severity.HIGH
    assert v.title.startswith("Connection outside the allowlist")
    assert v.evidence["resolved_from"] == []
    assert v.dedup_key == "allowlist:coi-1:203.0.113.66:443"
    assert v.mitre == ("TA0011",)


def test_not_allowed_name_is_named_in_evidence() -> None:
    det = Allowlist(ON)
    verdicts = run(det, [answer("evil.example", ("203.0.113.7",)), conn("203.0.113.7")])
    assert verdicts[0].evidence["resolved_from"] == ["evil.example"]
    assert "evil.example" in verdicts[0].title


def test_lookalike_names_do_not_match() -> None:
    det = Allowlist(ON)
    events = [
        answer("pypi.org.evil.example", ("203.0.113.1",)),
        answer("evilpypi.org", ("203.0.113.2",)),
        answer("notgithub.com", ("203.0.113.3",)),
        answer("pythonhosted.org", ("203.0.113.4",)),  # the apex of a *. entry
    ]
    verdicts = run(det, [*events, *(conn(f"203.0.113.{i}") for i in range(1, 5))])
    assert len(verdicts) == 4


def test_answers_of_another_container_allow_nothing() -> None:
    det = Allowlist(ON)
    events = [answer("pypi.org", ("151.101.0.223",), container="coi-2"),
              conn("151.101.0.223", container="coi-1")]
    assert len(run(det, events)) == 1


def test_dns_to_an_outside_resolver_is_flagged() -> None:
    verdicts = run(Allowlist(ON), [conn("8.8.8.8", 53, proto="udp")])
    assert verdicts and verdicts[0].mitre == ("TA0011", "T1071.004")


# ----------------------------------------------------------------------------- benign


def test_allowed_names_cnames_cidrs_and_resolver_are_quiet() -> None:
    det = Allowlist(ON)
    events: list[NetConnect | DnsAnswer] = [
        conn("10.10.0.1", 53, proto="udp", t_s=0.1),  # the gateway resolver
        conn("fd42::1", 53, proto="udp", t_s=0.1),
        answer("pypi.org", ("151.101.0.223", "2a04:4e42::223")),
        answer("files.pythonhosted.org", ("151.101.64.223",)),
        # a CNAME chain from an allowed name into a CDN
        answer("codeload.github.com", ("140.82.113.9",), cnames=("gh-cdn.fastly.example",)),
        answer("gh-cdn.fastly.example", ("199.232.1.1",), t_s=0.7),  # asked for the target
        conn("151.101.0.223"), conn("2a04:4e42:0::223"), conn("151.101.64.223"),
        conn("140.82.113.9"), conn("199.232.1.1"),
        conn("192.0.2.55", 8080), conn("2001:db8:1::9"),
        conn("127.0.0.1", 9999), conn("::1", 5000),
        conn("224.0.0.251", 5353, proto="udp"),
        conn("::ffff:151.101.0.223"),
    ]
    verdicts = run(det, events)
    assert verdicts == [], [v.title for v in verdicts]


def test_inactive_outside_allowlist_mode() -> None:
    assert run(Allowlist({"allow": ["pypi.org"]}), [conn("203.0.113.1")]) == []
    assert run(Allowlist({"mode_allowlist": True}), [conn("203.0.113.1")])


def test_failed_answers_allow_nothing() -> None:
    det = Allowlist(ON)
    events = [answer("pypi.org", ("203.0.113.9",), rcode=3), conn("203.0.113.9")]
    assert len(run(det, events)) == 1


# ----------------------------------------------------------------------------- windows


def test_ttl_floor_and_expiry() -> None:
    det = Allowlist(ON)
    # TTL 5 s, but the floor keeps the address allowed for 300 s
    assert run(det, [answer("pypi.org", ("151.101.0.1",), t_s=0, ttl=5),
                     conn("151.101.0.1", t_s=299)]) == []
    verdicts = run(det, [conn("151.101.0.1", t_s=301)])
    assert len(verdicts) == 1
    assert verdicts[0].evidence["resolved_from"] == ["pypi.org"]
    assert verdicts[0].evidence["allowed_name_expired_s_ago"] == pytest.approx(1, abs=0.01)


def test_long_ttl_and_refresh() -> None:
    det = Allowlist(ON)
    assert run(det, [answer("pypi.org", ("151.101.0.2",), t_s=0, ttl=3600),
                     conn("151.101.0.2", t_s=3500)]) == []
    assert run(det, [answer("pypi.org", ("151.101.0.2",), t_s=3550, ttl=60),
                     conn("151.101.0.2", t_s=3800)]) == []
    assert len(run(det, [conn("151.101.0.2", t_s=3851)])) == 1


def test_repeats_suppressed() -> None:
    det = Allowlist(ON)
    assert len(run(det, [conn("203.0.113.5", t_s=i) for i in range(1, 30)])) == 1
    assert len(run(det, [conn("203.0.113.5", t_s=45)])) == 1


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(("key", "value"), [
    ("allow", ["exa mple.com"]), ("allow", ["*."]), ("allow", "pypi.org"), ("allow", [3]),
    ("mode_allowlist", "true"), ("network_mode", 1), ("min_ttl_s", -5), ("max_ttl_s", 0),
    ("resolvers", ["gateway"]), ("severity", "severe"), ("max_addresses", 0),
])
def test_bad_config_names_the_key(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"detectors\.allowlist\.{key}"):
        Allowlist({**ON, key: value})


def test_explicit_resolvers() -> None:
    det = Allowlist({**ON, "resolvers": ["10.10.0.1"]})
    assert run(det, [conn("10.10.0.1", 53, proto="udp")]) == []
    assert len(run(det, [conn("10.10.0.9", 53, proto="udp")])) == 1


# ----------------------------------------------------------------------------- bounds


def test_bounded_under_ten_times_the_cap_answers() -> None:
    det = Allowlist({**ON, "max_addresses": 10_000})
    feed = det.feed
    for i in range(N_DISTINCT):
        ev = answer("files.pythonhosted.org",
                    (f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",),
                    cnames=(f"c{i}.cdn.example",), t_s=i * 0.001)
        feed(ev, ev.ts_ns)
    assert len(det._addrs) <= 10_000 and len(det._cnames) <= 10_000
    assert det.stats.evicted > 0


def test_hostile_names_are_linear() -> None:
    det = Allowlist({**ON, "allow": [*ON["allow"], *(f"*.d{i}.example" for i in range(200))]})
    names = [".".join("a" * 1 for _ in range(127)), "x" * 255,
             ".".join("b" * 63 for _ in range(4)), "\\255" * 63]
    start = time.perf_counter()
    for i in range(1000):
        ev = answer(names[i % 4] + str(i), ("203.0.113.9",), cnames=(names[(i + 1) % 4],))
        det.feed(ev, ev.ts_ns)
    assert time.perf_counter() - start < 0.5
