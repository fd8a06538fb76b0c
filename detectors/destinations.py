"""Suspicious destinations: cloud metadata, C2 ports, the private network, scans, beacons.

Strategy: one pass per ``net.connect`` (the first packet of a connection, NFLOG), plus the
``net.dns`` queries that name a metadata service and teach which address is the container's
resolver. Loopback is never flagged; ``permitted`` destinations (the Go original's
``[[network.hosts]]`` services) are exempt from every check. Checks, strongest first:

1. **Cloud metadata** (T1552.005): a destination in ``metadata_addresses`` (AWS/GCP/Azure/
   Oracle/DigitalOcean 169.254.169.254 and its IPv6 form fd00:ec2::254, ECS 169.254.170.2,
   EKS pod identity 169.254.170.23 and fd00:ec2::23, Alibaba 100.100.100.200; IPv4-mapped and
   NAT64 forms included) or a query for a ``metadata_names`` name (``metadata.google.internal``
   ...; also with a search domain appended) -> ``metadata_severity`` (critical). Only this
   verdict for such an event. Trade-off: cloud SDKs probe the metadata service when they find
   no credentials (boto3, google-auth); set ``metadata_severity = "high"`` where agents run
   them, or permit the address.
2. **C2 port** (T1571): a TCP, UDP or SCTP destination port in ``c2_ports`` -> ``c2_severity``
   (high). Default: the Go original's nft list {1234, 4444, 5555, 12345, 31337, 6666-6697}
   (Metasploit, netcat folklore, IRC), plus 1337 and 50050 (Cobalt Strike team server).
   Go's polling list also had 8080, left out: it is the most common development port.
   Unlike Go's nft rule (TCP only, research section 8 bug 7), UDP counts too.
3. **Private network** (tagged with the tactic TA0008, lateral movement: one connection is
   no particular technique): RFC 1918, CGNAT 100.64/10, link-local 169.254/16 and fe80::/10,
   ULA fc00::/7 -> ``private_severity`` (high) with ``private_action`` ("" follows the
   ladder; "quarantine" or "pause" per issue 5). Except the container's resolver: with
   ``gateway_dns = true`` port 53 to any address is the resolver (whatever the container sends
   its DNS to) and never flagged, and the ``gateway_ports`` (NTP 123) are permitted to an
   address the container has sent DNS queries to (Go froze healthy containers for gateway
   DNS and NTP, research section 8). Multicast and broadcast are not flagged (mDNS, SSDP).
4. **Scan** (T1046): at least ``scan_endpoints`` (16) distinct private (address, port) pairs
   within 60 s -> ``private_severity``, once per burst (section 5 has no number: a
   conservative one; a port scan of one host or a sweep of a /24 gets there in seconds).
5. **Beaconing** (T1071): repeated contacts from one container to one (address, port) at a
   regular interval. Connections closer than ``beacon_min_interval_s`` (2 s) to the previous
   one are one contact, so strobes (RITA skips pairs of >= 86,400 connections a day, one per
   second) and parallel connections never look periodic. Over the last ``beacon_history``
   (32) intervals, the coefficient of variation (stdev/mean) at most ``beacon_max_cv`` (0.2)
   with at least ``beacon_min_connections`` (10) contacts -> warning; still regular at twice
   that many contacts and spanning at least ``beacon_persist_s`` (3600 s: RITA flags long
   connections from 1 h, its lowest tier; its duration score wants 6 h) -> high. RITA scores
   from 4 connections (3 intervals), but with 3 intervals 4.9 % of Poisson-paced pairs (human
   or agent work) have a CV <= 0.2 by chance, 0.03 % with 7 and 0.0035 % with 9 (measured
   over 200,000 trials); hence 10 contacts, 9 intervals. Section 5 gives no CV threshold
   (RITA scores regularity by Bowley skew and MAD); uniform jitter j gives a CV of
   j / (sqrt(12) (1 - j/2)), so 0.2 catches Cobalt Strike-style jitter up to 40 % reliably
   (50 %: CV 0.19, about 70 % of windows), while human or agent activity (CV near 1) and
   exponential retry back-off (about 0.7) stay quiet. An interval over a day restarts the
   history. Ports in ``beacon_ignore_ports`` (DNS, NTP, mDNS) are skipped.

Repeats: a verdict with the same dedup key as one emitted less than ``repeat_s`` (30 s, the
response policy's dedup window) before is dropped here, so a connection storm is one verdict a
window, not thousands of audit records.

Config keys (``[detectors.destinations]``), defaults in brackets: ``c2_ports`` [above; ints
and "A-B" ranges], ``c2_severity`` ["high"], ``metadata_addresses`` [above],
``metadata_names`` [metadata.google.internal, metadata.goog, instance-data.ec2.internal],
``metadata_severity`` ["critical"], ``private_severity`` ["high"], ``private_action`` [""],
``permitted`` [] (IPs or CIDRs, optionally with a port: "10.0.0.5:5432", "[fd00::5]:443"),
``gateway_dns`` [true], ``gateway_ports`` [123], ``scan_endpoints`` [16], ``beacon``
[true], ``beacon_min_connections`` [10], ``beacon_max_cv`` [0.2], ``beacon_min_interval_s``
[2], ``beacon_persist_s`` [3600], ``beacon_history`` [32], ``beacon_ignore_ports``
[53, 123, 5353], ``max_pairs`` [16384] (beacon pairs kept, least recent evicted),
``repeat_s`` [30].

Dedup keys: ``destinations:<container>:<metadata|c2_port|private|scan|beacon>:<dst>[:<port>]``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from coi_watch.detectors._config import (
    DetectorConfigError,
    as_network,
    cfg_bool,
    cfg_int,
    cfg_networks,
    cfg_number,
    cfg_severity,
    cfg_strings,
    check_keys,
)
from coi_watch.detectors._net import CidrSet, Network, canon, classify
from coi_watch.detectors._windows import DistinctWindow, LruMap
from coi_watch.events import DnsQuery, Event, NetConnect
from coi_watch.verdicts import Severity, Verdict

__all__ = ("DEFAULT_C2_PORTS", "DEFAULT_METADATA_ADDRESSES", "DEFAULT_METADATA_NAMES",
           "Destinations")

_NAME = "destinations"
_SEC = 1_000_000_000
_DAY_NS = 86_400 * _SEC
_SCAN_WINDOW_NS = 60 * _SEC

DEFAULT_C2_PORTS: tuple[int | str, ...] = (
    1234, 1337, 4444, 5555, 12345, 31337, 50050, "6666-6697",
)
DEFAULT_METADATA_ADDRESSES: tuple[str, ...] = (
    "169.254.169.254", "169.254.170.2", "169.254.170.23", "fd00:ec2::254", "fd00:ec2::23",
    "100.100.100.200",
)
DEFAULT_METADATA_NAMES: tuple[str, ...] = (
    "metadata.google.internal", "metadata.goog", "instance-data.ec2.internal",
)
_PRIVATE = frozenset({"private", "cgnat", "link-local", "ula"})
_PORT_PROTOS = frozenset({"tcp", "udp", "sctp", "udplite", "dccp"})
_ACTIONS = frozenset({"", "quarantine", "pause", "alert", "kill"})


@dataclass(slots=True)
class _Pair:
    """Beacon history of one (container, dst, dport)."""

    intervals: deque[int] = field(default_factory=deque)
    total: int = 0  # sum of intervals (ns): exact ints, no drift
    total_sq: int = 0
    contact_ns: int = -1  # start of the current contact
    last_ns: int = -1  # last connection of the current contact
    streak_ns: int = 0  # start of the current regular streak (0: none)
    streak_contacts: int = 0
    level: int = 0  # 0 nothing emitted this streak, 1 warning, 2 high


@dataclass(slots=True)
class DestinationsStats:
    """Counters of the detector."""

    connects: int = 0
    verdicts: int = 0
    suppressed: int = 0
    pairs_evicted: int = 0


class Destinations:
    """Suspicious destinations and beaconing; the strategy is in the module docstring."""

    name: ClassVar[str] = _NAME
    consumes: ClassVar[frozenset[str]] = frozenset({"net.connect", "net.dns"})

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        cfg = dict(config or {})
        check_keys(_NAME, cfg, (
            "c2_ports", "c2_severity", "metadata_addresses", "metadata_names",
            "metadata_severity", "private_severity", "private_action", "permitted",
            "gateway_dns", "gateway_ports", "scan_endpoints", "beacon",
            "beacon_min_connections", "beacon_max_cv", "beacon_min_interval_s",
            "beacon_persist_s", "beacon_history", "beacon_ignore_ports", "max_pairs",
            "repeat_s",
        ))
        self._c2_ports = _ports(cfg, "c2_ports", DEFAULT_C2_PORTS)
        self._c2_sev = cfg_severity(_NAME, cfg, "c2_severity", "high")
        self._metadata = CidrSet(
            cfg_networks(_NAME, cfg, "metadata_addresses", DEFAULT_METADATA_ADDRESSES))
        names = [n.lower().strip(".") for n in
                 cfg_strings(_NAME, cfg, "metadata_names", DEFAULT_METADATA_NAMES)]
        self._meta_names = frozenset(names)
        self._meta_prefixes = tuple(n + "." for n in names)
        self._meta_sev = cfg_severity(_NAME, cfg, "metadata_severity", "critical")
        self._private_sev = cfg_severity(_NAME, cfg, "private_severity", "high")
        action = cfg.get("private_action", "")
        if action not in _ACTIONS:
            raise DetectorConfigError(
                f"detectors.{_NAME}.private_action: one of {sorted(_ACTIONS)}, got {action!r}"
            )
        self._private_action = str(action)
        self._permit_any, self._permit_port = _permitted(cfg)
        self._gateway_dns = cfg_bool(_NAME, cfg, "gateway_dns", True)
        self._gateway_ports = frozenset(_ports(cfg, "gateway_ports", (123,)))
        self._scan = cfg_int(_NAME, cfg, "scan_endpoints", 16, minimum=2)
        self._beacon = cfg_bool(_NAME, cfg, "beacon", True)
        self._b_min = cfg_int(_NAME, cfg, "beacon_min_connections", 10, minimum=3)
        self._b_cv = cfg_number(_NAME, cfg, "beacon_max_cv", 0.2)
        self._b_gap_ns = int(cfg_number(_NAME, cfg, "beacon_min_interval_s", 2.0) * _SEC)
        self._b_persist_ns = int(
            cfg_number(_NAME, cfg, "beacon_persist_s", 3600, strict=False) * _SEC)
        self._b_hist = cfg_int(_NAME, cfg, "beacon_history", 32, minimum=2)
        if self._b_hist < self._b_min - 1:
            raise DetectorConfigError(
                f"detectors.{_NAME}.beacon_history: at least beacon_min_connections - 1 "
                f"({self._b_min - 1}), got {self._b_hist}"
            )
        self._b_ignore = frozenset(_ports(cfg, "beacon_ignore_ports", (53, 123, 5353)))
        self._pairs: LruMap[tuple[str, str, int], _Pair] = LruMap(
            cfg_int(_NAME, cfg, "max_pairs", 16384))
        self._repeat_ns = int(cfg_number(_NAME, cfg, "repeat_s", 30, strict=False) * _SEC)
        self._emitted: LruMap[str, int] = LruMap(8192)
        self._resolvers: LruMap[tuple[str, str], int] = LruMap(4096)
        self._scans: LruMap[str, DistinctWindow[tuple[str, int]]] = LruMap(1024)
        self.stats = DestinationsStats()

    # -- events

    def feed(self, ev: Event, now_ns: int) -> Iterable[Verdict]:
        """Take one connection or DNS query; return the verdicts it causes."""
        if isinstance(ev, NetConnect):
            return self._connect(ev, now_ns)
        if isinstance(ev, DnsQuery):
            return self._dns(ev, now_ns)
        return ()

    def _dns(self, ev: DnsQuery, now_ns: int) -> list[Verdict]:
        self._resolvers.put((ev.container, ev.dst), now_ns)
        q = ev.qname
        if q in self._meta_names or (len(q) < 512 and q.startswith(self._meta_prefixes)):
            return self._emit(now_ns, ev, self._meta_sev, "metadata", q,
                              f"Cloud metadata service name looked up: {q[:128]}",
                              {"qname": q[:256], "qtype": ev.qtype, "resolver": ev.dst},
                              ("T1552.005",))
        return []

    def _connect(self, ev: NetConnect, now_ns: int) -> list[Verdict]:
        self.stats.connects += 1
        dst, dport = ev.dst, ev.dport
        cls = classify(dst)
        if cls == "loopback":
            return []
        addr = canon(dst)
        if self._permit_any.contains(addr):
            return []
        ported = self._permit_port.get(dport)
        if ported is not None and ported.contains(addr):
            return []
        out: list[Verdict] = []
        base = {"dst": dst, "dport": dport, "proto": ev.proto, "src": ev.src,
                "sport": ev.sport, "address_class": cls}
        if self._metadata.contains(addr):
            return self._emit(now_ns, ev, self._meta_sev, "metadata", dst,
                              f"Connection to the cloud metadata service {dst}:{dport}",
                              base, ("T1552.005",))
        with_ports = ev.proto in _PORT_PROTOS
        if with_ports and dport in self._c2_ports:
            out += self._emit(now_ns, ev, self._c2_sev, "c2_port", f"{dst}:{dport}",
                              f"Connection to a known C2 port {dport} ({dst})",
                              base, ("T1571",))
        if cls in _PRIVATE and not self._resolver_traffic(ev, with_ports):
            out += self._emit(now_ns, ev, self._private_sev, "private", dst,
                              f"Connection to the private network {dst}:{dport} ({cls})",
                              base, ("TA0008",), action=self._private_action)
            out += self._scan_check(ev, now_ns, dst, dport)
        if self._beacon and with_ports and dport not in self._b_ignore:
            out += self._beacon_check(ev, now_ns)
        return out

    def _resolver_traffic(self, ev: NetConnect, with_ports: bool) -> bool:
        if not with_ports:
            return False
        if ev.dport == 53 and self._gateway_dns:
            return True
        return ev.dport in self._gateway_ports and (ev.container, ev.dst) in self._resolvers

    # -- scans

    def _scan_check(self, ev: NetConnect, now_ns: int, dst: str, dport: int) -> list[Verdict]:
        win = self._scans.touch(ev.container)
        if win is None:
            win = DistinctWindow(_SCAN_WINDOW_NS, self._scan)
            self._scans.put(ev.container, win)
        count, new = win.add(now_ns, (dst, dport))
        if not new or count < self._scan:
            return []
        return self._emit(now_ns, ev, self._private_sev, "scan", "network",
                          f"Internal network scan: {count} private endpoints in 60 s",
                          {"endpoints": count, "window_s": 60, "threshold": self._scan,
                           "last": f"{dst}:{dport}", "proto": ev.proto},
                          ("T1046",), action=self._private_action)

    # -- beaconing

    def _beacon_check(self, ev: NetConnect, now_ns: int) -> list[Verdict]:
        key = (ev.container, ev.dst, ev.dport)
        pair = self._pairs.touch(key)
        if pair is None:
            pair = _Pair()
            before = self._pairs.evicted
            self._pairs.put(key, pair)
            self.stats.pairs_evicted += self._pairs.evicted - before
            pair.contact_ns = pair.last_ns = now_ns
            return []
        if now_ns - pair.last_ns < self._b_gap_ns:
            pair.last_ns = now_ns  # the same contact (parallel or strobing connections)
            return []
        interval = now_ns - pair.contact_ns
        pair.contact_ns = pair.last_ns = now_ns
        ivs = pair.intervals
        if interval > _DAY_NS:
            ivs.clear()
            pair.total = pair.total_sq = pair.streak_ns = pair.streak_contacts = pair.level = 0
            return []
        ivs.append(interval)
        pair.total += interval
        pair.total_sq += interval * interval
        if len(ivs) > self._b_hist:
            old = ivs.popleft()
            pair.total -= old
            pair.total_sq -= old * old
        n = len(ivs)
        if n < self._b_min - 1:
            return []
        mean = pair.total / n
        var = max(0.0, (pair.total_sq * n - pair.total * pair.total) / (n * n))
        cv = math.sqrt(var) / mean if mean > 0 else 0.0
        if cv > self._b_cv:
            pair.streak_ns = pair.streak_contacts = pair.level = 0
            return []
        if pair.streak_ns == 0:
            pair.streak_ns = now_ns - pair.total
            pair.streak_contacts = n + 1
        else:
            pair.streak_contacts += 1
        span = now_ns - pair.streak_ns
        level = 2 if (pair.streak_contacts >= 2 * self._b_min
                      and span >= self._b_persist_ns) else 1
        if level <= pair.level:
            return []
        pair.level = level
        severity = Severity.HIGH if level == 2 else Severity.WARNING
        evidence = {
            "dst": ev.dst, "dport": ev.dport, "proto": ev.proto,
            "contacts": pair.streak_contacts,
            "mean_interval_s": round(mean / _SEC, 3),
            "stdev_interval_s": round(math.sqrt(var) / _SEC, 3),
            "cv": round(cv, 4),
            "span_s": round(span / _SEC, 1),
            "intervals_used": n,
            "thresholds": {"max_cv": self._b_cv, "min_connections": self._b_min,
                           "persist_s": self._b_persist_ns / _SEC,
                           "min_interval_s": self._b_gap_ns / _SEC},
        }
        title = (f"Beaconing to {ev.dst}:{ev.dport}: every {mean / _SEC:.1f} s "
                 f"(cv {cv:.2f}, {pair.streak_contacts} contacts)")
        return self._emit(now_ns, ev, severity, "beacon", f"{ev.dst}:{ev.dport}", title,
                          evidence, ("T1071",), repeat=False)

    # -- verdicts

    def _emit(self, now_ns: int, ev: NetConnect | DnsQuery, severity: Severity, what: str,
              target: str, title: str, evidence: dict[str, Any], mitre: tuple[str, ...], *,
              action: str = "", repeat: bool = True) -> list[Verdict]:
        key = f"{_NAME}:{ev.container}:{what}:{target[:256]}"
        if repeat:
            last = self._emitted.get(key)
            if last is not None and now_ns - last < self._repeat_ns:
                self.stats.suppressed += 1
                return []
            self._emitted.put(key, now_ns)
        self.stats.verdicts += 1
        return [Verdict(
            ts_ns=ev.ts_ns,
            wall_ns=ev.wall_ns,
            container=ev.container,
            detector=_NAME,
            title=title,
            severity=severity,
            evidence={"check": what, **evidence},
            mitre=mitre,
            dedup_key=key,
            event_kind=ev.kind,
            action=action,
        )]


# ----------------------------------------------------------------------------- config


def _ports(cfg: Mapping[str, Any], key: str, default: Iterable[int | str]) -> frozenset[int]:
    value = cfg.get(key, list(default))
    bad = DetectorConfigError(
        f"detectors.{_NAME}.{key}: a list of ports (1-65535) or \"A-B\" ranges, got {value!r}"
    )
    if not isinstance(value, list | tuple):
        raise bad
    out: set[int] = set()
    for item in value:
        if type(item) is int and 0 < item < 65536:
            out.add(item)
        elif isinstance(item, str) and "-" in item:
            lo, _, hi = item.partition("-")
            if not (lo.strip().isdigit() and hi.strip().isdigit()):
                raise bad
            a, b = int(lo), int(hi)
            if not 0 < a <= b < 65536:
                raise bad
            out.update(range(a, b + 1))
        else:
            raise bad
    return frozenset(out)


def _permitted(cfg: Mapping[str, Any]) -> tuple[CidrSet, dict[int, CidrSet]]:
    """``permitted`` entries: CIDR, or CIDR with ``:port`` (IPv6 in brackets)."""
    anyport: list[Network] = []
    ported: dict[int, list[Network]] = {}
    for item in cfg_strings(_NAME, cfg, "permitted"):
        host, port = item.strip(), ""
        if host.startswith("["):
            host, _, rest = host[1:].partition("]")
            if rest:
                if not rest.startswith(":"):
                    raise DetectorConfigError(f"detectors.{_NAME}.permitted: bad entry {item!r}")
                port = rest[1:]
        elif host.count(":") == 1:
            host, _, port = host.partition(":")
        net = as_network(_NAME, "permitted", host)
        if not port:
            anyport.append(net)
            continue
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise DetectorConfigError(
                f"detectors.{_NAME}.permitted: bad port in {item!r}"
            )
        ported.setdefault(int(port), []).append(net)
    return CidrSet(anyport), {p: CidrSet(nets) for p, nets in ported.items()}
