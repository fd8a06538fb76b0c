"""Destinations detector: metadata, C2 ports, private network, scans, beaconing."""

from __future__ import annotations

import random
import time

import pytest

from coi_watch.detectors.destinations import Destinations
from coi_watch.events import DnsQuery, NetConnect
from coi_watch.verdicts import Severity, Verdict

S = 1_000_000_000
# Distinct keys fed to the bounded-state tests: well past every cap (10x and more), and
# cheap enough for CI. The state must stay at its cap whatever the count.
N_DISTINCT = 200_000


def conn(dst: str, dport: int = 443, t_s: float = 1.0, proto: str = "tcp",
         container: str = "coi-1", family: int = 4) -> NetConnect:
    ts = int(t_s * S)
    return NetConnect(ts_ns=ts, wall_ns=ts, container=container, family=family, proto=proto,
                      src="10.10.0.5" if family == 4 else "fd42::5", sport=40000, dst=dst,
                      dport=dport, outdev="eth0")


def dnsq(qname: str, t_s: float = 1.0, dst: str = "10.10.0.1",
         container: str = "coi-1") -> DnsQuery:
    ts = int(t_s * S)
    return DnsQuery(ts_ns=ts, wall_ns=ts, container=container, family=4, proto="udp",
                    src="10.10.0.5", sport=5353, dst=dst, qname=qname, qtype=1)


def run(det: Destinations, events: list[NetConnect | DnsQuery]) -> list[Verdict]:
    out: list[Verdict] = []
    for ev in events:
        out.extend(det.feed(ev, ev.ts_ns))
    return out


# ----------------------------------------------------------------------------- attacks


@pytest.mark.parametrize("dst", [
    "169.254.169.254", "fd00:ec2::254", "169.254.170.2", "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe", "100.100.100.200",
])
def test_metadata_addresses_are_critical(dst: str) -> None:
    verdicts = run(Destinations(), [conn(dst, 80)])
    assert len(verdicts) == 1
    v = verdicts[0]
    assert v.severity is Severity.CRITICAL
    assert v.mitre == ("T1552.005",)
    assert v.evidence["check"] == "metadata"
    assert v.dedup_key == f"destinations:coi-1:metadata:{dst}"


@pytest.mark.parametrize("qname", [
    "metadata.google.internal", "metadata.goog", "metadata.google.internal.incus",
])
def test_metadata_names_are_critical(qname: str) -> None:
    verdicts = run(Destinations(), [dnsq(qname)])
    assert [v.severity for v in verdicts] == [Severity.CRITICAL]
    assert verdicts[0].evidence["qname"] == qname


def test_metadata_severity_is_configurable() -> None:
    det = Destinations({"metadata_severity": "high"})
    assert run(det, [conn("169.254.169.254", 80)])[0].severity is Severity.HIGH


@pytest.mark.parametrize(("dport", "proto"), [
    (4444, "tcp"), (5555, "tcp"), (1234, "udp"), (31337, "tcp"), (12345, "tcp"),
    (6667, "tcp"), (6697, "tcp"), (50050, "tcp"),
])
def test_c2_ports_are_high(dport: int, proto: str) -> None:
    verdicts = run(Destinations(), [conn("203.0.113.9", dport, proto=proto)])
    assert [v.severity for v in verdicts] == [Severity.HIGH]
    assert verdicts[0].mitre == ("T1571",)
    assert verdicts[0].evidence["dport"] == dport


def test_c2_severity_critical_and_custom_ports() -> None:
    det = Destinations({"c2_severity": "critical", "c2_ports": [9999, "7000-7002"]})
    assert run(det, [conn("203.0.113.9", 7001)])[0].severity is Severity.CRITICAL
    assert run(det, [conn("203.0.113.9", 4444)]) == []


@pytest.mark.parametrize(("dst", "family"), [
    ("10.1.2.3", 4), ("172.16.5.5", 4), ("192.168.1.10", 4), ("100.64.0.7", 4),
    ("169.254.10.10", 4), ("fe80::1", 6), ("fd12:3456::1", 6),
])
def test_private_destinations_are_high(dst: str, family: int) -> None:
    verdicts = run(Destinations(), [conn(dst, 22, family=family)])
    assert [v.severity for v in verdicts] == [Severity.HIGH]
    assert verdicts[0].evidence["check"] == "private"
    assert verdicts[0].action == ""


def test_private_action_is_configurable() -> None:
    det = Destinations({"private_action": "quarantine"})
    assert run(det, [conn("192.168.1.10", 22)])[0].action == "quarantine"


def test_private_and_c2_port_both_reported() -> None:
    checks = {v.evidence["check"] for v in run(Destinations(), [conn("10.0.0.9", 4444)])}
    assert checks == {"private", "c2_port"}


def test_internal_scan_is_reported_once() -> None:
    det = Destinations()
    events = [conn(f"192.168.1.{i}", 22, t_s=1 + i * 0.1) for i in range(1, 40)]
    scans = [v for v in run(det, events) if v.evidence["check"] == "scan"]
    assert len(scans) == 1
    assert scans[0].mitre == ("T1046",)
    assert scans[0].evidence["endpoints"] == 16


def test_beacon_warns_then_goes_high_when_it_persists() -> None:
    rng = random.Random(1)
    det = Destinations()
    t, events = 0.0, []
    for _ in range(130):  # every ~60 s with 20 % jitter, for over 2 hours
        t += 60 * (1 - 0.2 * rng.random())
        events.append(conn("198.51.100.7", 8443, t_s=t))
    verdicts = run(det, events)
    assert [v.severity for v in verdicts] == [Severity.WARNING, Severity.HIGH]
    warn, high = verdicts
    assert warn.evidence["contacts"] == 10 and warn.evidence["cv"] <= 0.2
    assert high.evidence["span_s"] >= 3600
    assert warn.mitre == ("T1071",)
    assert warn.dedup_key == "destinations:coi-1:beacon:198.51.100.7:8443"


# ----------------------------------------------------------------------------- benign


def test_gateway_dns_and_ntp_and_loopback_are_never_flagged() -> None:
    det = Destinations()
    events: list[NetConnect | DnsQuery] = []
    for i in range(200):
        events.append(dnsq("pypi.org", t_s=i * 5.0))
        events.append(conn("10.10.0.1", 53, t_s=i * 5.0, proto="udp"))  # the gateway
        events.append(conn("fd42:1::1", 53, t_s=i * 5.0, proto="udp", family=6))
        events.append(conn("127.0.0.1", 4444, t_s=i * 5.0))  # loopback, even a C2 port
        events.append(conn("::1", 5432, t_s=i * 5.0, family=6))
    events.append(conn("10.10.0.1", 123, t_s=5.0, proto="udp"))  # NTP to the resolver
    assert run(det, events) == []


def test_benign_agent_traffic_is_quiet() -> None:
    rng = random.Random(2)
    det = Destinations()
    public = ["151.101.0.223", "140.82.112.3", "104.16.1.35", "185.199.108.133",
              "2606:4700::6810:123", "3.5.1.1"]
    t, events = 0.0, []
    for _ in range(3000):  # human/agent-paced work: exponential gaps, parallel bursts
        t += rng.expovariate(1 / 6)
        dst = rng.choice(public)
        for k in range(rng.randint(1, 4)):
            events.append(conn(dst, rng.choice([443, 80]), t_s=t + k * 0.01,
                               family=6 if ":" in dst else 4))
    for i in range(10):  # retries with exponential back-off
        events.append(conn("203.0.113.50", 443, t_s=20000 + 2 ** i))
    for i in range(500):  # a 1/s health-check strobe: one long contact, not a beacon
        events.append(conn("198.51.100.1", 443, t_s=30000 + i))
    events.append(conn("224.0.0.251", 5353, t_s=40000, proto="udp"))  # mDNS
    events.append(conn("255.255.255.255", 67, t_s=40001, proto="udp"))
    events.sort(key=lambda e: e.ts_ns)
    verdicts = run(det, events)
    assert verdicts == [], [v.title for v in verdicts]


def test_permitted_services_are_exempt() -> None:
    det = Destinations({"permitted": ["10.0.0.0/24", "192.168.5.5:5432", "[fd00::7]:443"]})
    assert run(det, [conn("10.0.0.99", 4444), conn("192.168.5.5", 5432),
                     conn("fd00::7", 443, family=6)]) == []
    assert len(run(det, [conn("192.168.5.5", 22)])) == 1
    assert len(run(det, [conn("fd00::7", 80, family=6)])) == 1


def test_gateway_dns_off_flags_private_dns() -> None:
    det = Destinations({"gateway_dns": False})
    assert len(run(det, [conn("10.10.0.1", 53, proto="udp")])) == 1


# ----------------------------------------------------------------------------- windows


def test_repeats_suppressed_within_repeat_s() -> None:
    det = Destinations()
    first = run(det, [conn("10.1.1.1", 22, t_s=1)])
    again = run(det, [conn("10.1.1.1", 22, t_s=1 + i) for i in range(1, 29)])
    later = run(det, [conn("10.1.1.1", 22, t_s=40)])
    assert len(first) == 1 and again == [] and len(later) == 1
    assert det.stats.suppressed == 28


def test_scan_inside_vs_spread_beyond_the_window() -> None:
    det = Destinations({"repeat_s": 0})
    spread = [conn(f"10.9.0.{i}", 80, t_s=i * 5.0) for i in range(1, 30)]  # 16 take 75 s
    assert all(v.evidence["check"] != "scan" for v in run(det, spread))
    fast = [conn(f"10.8.0.{i}", 80, t_s=1000 + i * 3.0) for i in range(1, 17)]  # 45 s
    assert any(v.evidence["check"] == "scan" for v in run(det, fast))


def test_poisson_paced_pairs_do_not_look_periodic() -> None:
    rng = random.Random(3)
    det = Destinations()
    events = []
    for pair in range(2000):  # many destinations, a dozen human-paced contacts each
        t = rng.uniform(0, 1000)
        for _ in range(12):
            t += rng.expovariate(1 / 30) + 2
            events.append(conn(f"198.18.{pair >> 8}.{pair & 255}", 443, t_s=t))
    events.sort(key=lambda e: e.ts_ns)
    assert run(det, events) == []


def test_beacon_needs_regularity() -> None:
    det = Destinations()
    times = [0, 60, 120, 400, 460, 900, 1000, 1060, 1900]
    assert run(det, [conn("198.51.100.9", 443, t_s=t) for t in times]) == []


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(("key", "value"), [
    ("c2_ports", [0]), ("c2_ports", ["9-1"]), ("c2_ports", "4444"), ("c2_severity", "loud"),
    ("metadata_addresses", ["nope"]), ("private_action", "explode"),
    ("permitted", ["10.0.0.1:99999"]), ("permitted", ["bogus"]), ("gateway_dns", "yes"),
    ("beacon_max_cv", 0), ("beacon_min_connections", 2), ("beacon_history", 1),
    ("max_pairs", 0), ("repeat_s", -1), ("scan_endpoints", 1),
])
def test_bad_config_names_the_key(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"detectors\.destinations\.{key}"):
        Destinations({key: value})


# ----------------------------------------------------------------------------- bounds


def test_beacon_pairs_bounded_under_ten_times_the_cap_flows() -> None:
    det = Destinations({"max_pairs": 5000})
    feed = det.feed
    for i in range(N_DISTINCT):
        ev = conn(f"198.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 443 + (i % 7),
                  t_s=i * 0.001)
        feed(ev, ev.ts_ns)
    assert len(det._pairs) <= 5000
    assert det.stats.pairs_evicted >= N_DISTINCT - 5000


def test_hostile_addresses_are_cheap() -> None:
    det = Destinations()
    junk = ["x" * 255, ":" * 255, "1" * 255, "[" + "f" * 250 + "]", "\\255" * 60]
    start = time.perf_counter()
    for i in range(1000):
        ev = conn(junk[i % len(junk)] + str(i), 443, t_s=i)
        det.feed(ev, ev.ts_ns)
    assert time.perf_counter() - start < 0.5
