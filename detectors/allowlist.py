"""Allowlist network mode: every connection must go to an allowed address or name.

Strategy: active only when the container runs in allowlist mode (``mode_allowlist = true``
or ``network_mode = "allowlist"``; otherwise every event is ignored at once). ``allow``
entries are IPs, CIDRs and domain names: ``example.com`` matches that name exactly,
``*.example.com`` any name below it (not the apex; list both for both). An address is allowed
for a container when

- it lies in an allowed IP/CIDR, or
- that container's own DNS answers (``net.dns_answer``) returned it for an allowed name, or
  for a name reached from one through the answer's CNAME chain (the chain's targets are
  remembered too, so a later query for a CNAME target counts), while the answer is fresh:
  its TTL, but at least ``min_ttl_s`` (300 s; clients cache longer than TTLs, e.g. the JVM's
  30 s floor, pooled connections re-opened minutes later) and at most ``max_ttl_s``
  (86400 s). Another container's answers never allow anything for this one.

DNS to the resolver itself is allowed: port 53 to an address in ``resolvers`` or, when that
list is empty (the default), to any loopback, private, CGNAT, link-local or ULA address (the
Incus bridge gateway). Loopback is never flagged; multicast and broadcast (mDNS, SSDP: they
do not leave the link) are allowed unless ``allow_multicast = false``.

Anything else -> ``severity`` (high), "Connection outside the allowlist", with evidence of the
names the container's answers gave for that address (allowed or not, fresh or expired), so
"resolved from evil.example" or "never resolved: a hard-coded IP" is visible. MITRE: the
tactic TA0011 (command and control; like Falco's unexpected-outbound rule: a destination
outside the allowlist is most often C2 or exfiltration and one connection cannot tell which),
plus T1071.004 for DNS to an outside resolver. A verdict with the same dedup key
(``allowlist:<container>:<dst>:<dport>``) as one less than ``repeat_s`` (30 s) before is
dropped here.

Bounded: at most ``max_addresses`` (65536) (container, address) records and as many learned
CNAME targets, least recently used evicted first; names kept per address: 4.

Config keys (``[detectors.allowlist]``), defaults in brackets: ``mode_allowlist`` [false],
``network_mode`` [""], ``allow`` [], ``min_ttl_s`` [300], ``max_ttl_s`` [86400],
``resolvers`` [], ``allow_multicast`` [true], ``severity`` ["high"], ``max_addresses``
[65536], ``repeat_s`` [30].
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from coi_watch.detectors._config import (
    DetectorConfigError,
    cfg_bool,
    cfg_int,
    cfg_networks,
    cfg_number,
    cfg_severity,
    cfg_strings,
    check_keys,
)
from coi_watch.detectors._net import (
    CidrSet,
    Network,
    addr_key,
    canon,
    classify,
    parse_network,
)
from coi_watch.detectors._windows import LruMap
from coi_watch.events import DnsAnswer, Event, NetConnect
from coi_watch.verdicts import Verdict

__all__ = ("Allowlist",)

_NAME = "allowlist"
_SEC = 1_000_000_000
_NAMES_KEPT = 4
_NAME_CLIP = 1024
_RESOLVER_CLASSES = frozenset({"loopback", "private", "cgnat", "link-local", "ula"})
_LINK_ONLY = frozenset({"multicast", "broadcast"})
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


@dataclass(slots=True)
class _Resolved:
    """What a container's answers said about one address."""

    allowed_until: int = -1  # now_ns up to which an allowed name covers it
    seen_until: int = -1  # freshness of the newest answer of any name
    names: list[str] = field(default_factory=list)


@dataclass(slots=True)
class AllowlistStats:
    """Counters of the detector."""

    connects: int = 0
    answers: int = 0
    verdicts: int = 0
    suppressed: int = 0
    evicted: int = 0


class Allowlist:
    """Connections outside the allowlist; the strategy is in the module docstring."""

    name: ClassVar[str] = _NAME
    consumes: ClassVar[frozenset[str]] = frozenset({"net.connect", "net.dns_answer"})

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        cfg = dict(config or {})
        check_keys(_NAME, cfg, (
            "mode_allowlist", "network_mode", "allow", "min_ttl_s", "max_ttl_s", "resolvers",
            "allow_multicast", "severity", "max_addresses", "repeat_s",
        ))
        mode = cfg.get("network_mode", "")
        if not isinstance(mode, str):
            raise DetectorConfigError(f"detectors.{_NAME}.network_mode: a string, got {mode!r}")
        self.active = cfg_bool(_NAME, cfg, "mode_allowlist", False) or mode == "allowlist"
        nets: list[Network] = []
        exact: set[str] = set()
        wild: set[str] = set()
        for entry in cfg_strings(_NAME, cfg, "allow"):
            try:
                nets.append(parse_network(entry))
                continue
            except ValueError:
                pass
            name = entry.strip().lower().rstrip(".")
            is_wild = name.startswith("*.")
            base = name[2:] if is_wild else name
            if not base or not _HOST_CHARS.issuperset(base) or ".." in base \
                    or base.startswith("."):
                raise DetectorConfigError(
                    f"detectors.{_NAME}.allow: {entry!r} is not an IP, CIDR, domain name or "
                    "*.domain wildcard"
                )
            (wild if is_wild else exact).add(base)
        self._nets = CidrSet(nets)
        self._exact = frozenset(exact)
        self._wild = frozenset(wild)
        self._min_ttl_ns = int(cfg_number(_NAME, cfg, "min_ttl_s", 300, strict=False) * _SEC)
        self._max_ttl_ns = int(cfg_number(_NAME, cfg, "max_ttl_s", 86400) * _SEC)
        if self._max_ttl_ns < self._min_ttl_ns:
            raise DetectorConfigError(f"detectors.{_NAME}.max_ttl_s: must be >= min_ttl_s")
        self._resolvers = CidrSet(cfg_networks(_NAME, cfg, "resolvers"))
        self._multicast = cfg_bool(_NAME, cfg, "allow_multicast", True)
        self._severity = cfg_severity(_NAME, cfg, "severity", "high")
        cap = cfg_int(_NAME, cfg, "max_addresses", 65536)
        self._addrs: LruMap[tuple[str, int], _Resolved] = LruMap(cap)
        self._cnames: LruMap[tuple[str, str], int] = LruMap(cap)
        self._repeat_ns = int(cfg_number(_NAME, cfg, "repeat_s", 30, strict=False) * _SEC)
        self._emitted: LruMap[str, int] = LruMap(8192)
        self.stats = AllowlistStats()

    # -- names

    def name_allowed(self, name: str) -> bool:
        """Whether ``name`` (lower case, no trailing dot) matches an ``allow`` name entry."""
        if name in self._exact:
            return True
        wild = self._wild
        if not wild:
            return False
        i = name.find(".")
        while i != -1:
            if name[i + 1:] in wild:
                return True
            i = name.find(".", i + 1)
        return False

    # -- events

    def feed(self, ev: Event, now_ns: int) -> Iterable[Verdict]:
        """Take a DNS answer (learn) or a connection (judge)."""
        if not self.active:
            return ()
        if isinstance(ev, NetConnect):
            return self._connect(ev, now_ns)
        if isinstance(ev, DnsAnswer):
            self._answer(ev, now_ns)
        return ()

    def _answer(self, ev: DnsAnswer, now_ns: int) -> None:
        self.stats.answers += 1
        if ev.rcode != 0 or (not ev.addresses and not ev.cnames):
            return
        qname = ev.qname[:_NAME_CLIP]
        ttl_ns = min(max(ev.ttl * _SEC, self._min_ttl_ns), self._max_ttl_ns)
        until = now_ns + ttl_ns
        container = ev.container
        ok = self.name_allowed(qname)
        if not ok:
            learned = self._cnames.touch((container, qname))
            ok = learned is not None and learned >= now_ns
        if ok:
            for target in ev.cnames:
                self._cnames.put((container, target[:_NAME_CLIP]), until)
        addrs = self._addrs
        for text in ev.addresses:
            addr = canon(text)
            if addr is None:
                continue
            key = (container, addr_key(addr))
            rec = addrs.touch(key)
            if rec is None:
                rec = _Resolved()
                before = addrs.evicted
                addrs.put(key, rec)
                self.stats.evicted += addrs.evicted - before
            if ok and until > rec.allowed_until:
                rec.allowed_until = until
            if until > rec.seen_until:
                rec.seen_until = until
            name = qname[:256]
            if name in rec.names:
                continue
            if len(rec.names) >= _NAMES_KEPT:
                rec.names.pop(0)
            rec.names.append(name)

    def _connect(self, ev: NetConnect, now_ns: int) -> list[Verdict]:
        self.stats.connects += 1
        cls = classify(ev.dst)
        if cls == "loopback" or (self._multicast and cls in _LINK_ONLY):
            return []
        addr = canon(ev.dst)
        if self._nets.contains(addr):
            return []
        dns = ev.dport == 53 and ev.proto in ("udp", "tcp")
        if dns and (self._resolvers.contains(addr) if self._resolvers
                    else cls in _RESOLVER_CLASSES):
            return []
        rec = self._addrs.touch((ev.container, addr_key(addr))) if addr is not None else None
        if rec is not None and rec.allowed_until >= now_ns:
            return []

        key = f"{_NAME}:{ev.container}:{ev.dst}:{ev.dport}"
        last = self._emitted.get(key)
        if last is not None and now_ns - last < self._repeat_ns:
            self.stats.suppressed += 1
            return []
        self._emitted.put(key, now_ns)
        evidence: dict[str, Any] = {
            "dst": ev.dst, "dport": ev.dport, "proto": ev.proto, "src": ev.src,
            "sport": ev.sport, "address_class": cls, "allowlist_entries":
            len(self._nets) + len(self._exact) + len(self._wild),
        }
        if rec is None:
            evidence["resolved_from"] = []
            evidence["note"] = "no DNS answer of this container gave this address"
        else:
            evidence["resolved_from"] = list(rec.names)
            evidence["answer_fresh"] = rec.seen_until >= now_ns
            if rec.allowed_until >= 0:
                evidence["allowed_name_expired_s_ago"] = round(
                    (now_ns - rec.allowed_until) / _SEC, 1)
        if dns:
            evidence["note"] = "DNS to a resolver outside the allowlist"
        self.stats.verdicts += 1
        names = f" (resolved from {', '.join(rec.names[-2:])})" if rec and rec.names else ""
        return [Verdict(
            ts_ns=ev.ts_ns,
            wall_ns=ev.wall_ns,
            container=ev.container,
            detector=_NAME,
            title=f"Connection outside the allowlist: {ev.dst}:{ev.dport}{names}"[:300],
            severity=self._severity,
            evidence=evidence,
            mitre=("TA0011", "T1071.004") if dns else ("TA0011",),
            dedup_key=key,
            event_kind=ev.kind,
        )]
