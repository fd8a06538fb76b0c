"""DNS tunnelling: data or commands carried in the names a container looks up.

Strategy: queries are grouped by (container, registered domain), the zone a tunnel's
operator must control (eTLD+1 from the Public Suffix List, :func:`registered_domain`; the
"left part" is what comes before it). Over a sliding window per domain the detector keeps
counters and a bounded set of distinct left parts, and after each query evaluates four
signals (numbers from research section 5, "DNS tunneling"):

``unique_subdomains``
    Distinct left parts in the window ``>= unique_subdomains`` (100: RITA's lowest C2-over-DNS
    tier; jbaggs/anomalous-dns uses 8 per eTLD+1 per 60 min, tuned for office networks, which
    cloud SDKs in an agent container would trip).
``long_query``
    A name longer than ``max_query_len`` (90 octets: anomalous-dns; the SANS/Bro figure is 52),
    counted in wire octets (a ``\\DDD`` escape is one).
``random_names``
    Queries whose left part (dots removed) looks like encoded data, at least ``min_queries``
    of them (8: anomalous-dns' count) and at least ``random_share`` (0.5) of the domain's
    queries. A left part looks like data when it holds escaped non-printable bytes, or, from
    ``entropy_min_len`` (20) characters on (section 5: entropy is capped at log2(length), so
    short names never count): its Shannon entropy is ``>= entropy_bits`` (4.0 bits/char, the
    practitioners' per-qname figure), or it is all hexadecimal (hex is capped at 4 bits/char,
    normalised by its alphabet it is at the top; dnscat2 and Cobalt Strike encode in hex).
    Compound names such as ``copilot-proxy-githubusercontent`` stay below 4.0 bits; random
    base32 reaches it from about 30 characters.
``qtype``
    A query of a ``blocked_qtypes`` type (NULL 10 and 65399: anomalous-dns' blacklist) trips
    it alone; the other ``odd_qtypes`` (TXT 16, ANY 255) trip it at ``min_queries`` queries and
    ``odd_share`` (0.5) of the domain's queries (section 5 cites no ratio; a conservative one).

A fifth, ``rate`` (``rate_queries`` = 100 queries per ``rate_window_s`` = 300 s for the domain:
naorbarlev/dns-tunnels), only corroborates: it never fires alone, because a container has no
resolver cache and a package manager re-resolves its registry hundreds of times.

Severity: **warning** when one signal trips; **high** when two or more do (``rate``
included), or when the episode persists: ``min_queries`` more contributing queries (each
long, random-looking, odd-typed, or a new left part while ``unique_subdomains`` trips) over
at least ``persist_s`` (300 s) after the first warning. A verdict is emitted when an episode
starts, gains a signal or rises in severity; when no signal trips any more the episode ends.

Never analysed: well-formed reverse look-ups (``4.3.2.1.in-addr.arpa``, nibble
``ip6.arpa``; data under ``.arpa`` is analysed) and ``ignore_domains``.

Hostile names: only the last labels go to the suffix list, the analysed name is clipped to
its last ``max_name_len`` characters (more than any real name: 255 octets, all escaped),
entropy is one ``Counter`` pass, no regex: linear. Memory: at most ``max_domains`` domain
states (least recently queried evicted first, counted in ``stats``), each with a 30-slice
counter ring and at most ``unique_subdomains + 1`` hashed left parts; about 25 KB per domain
at the caps (measured), 50 MB for the default 2048.

Config keys (``[detectors.dns_tunnel]``), defaults in brackets: ``window_s`` [3600,
anomalous-dns' 60 min], ``unique_subdomains`` [100], ``max_query_len`` [90],
``entropy_min_len`` [20], ``entropy_bits`` [4.0], ``min_queries`` [8], ``random_share`` [0.5],
``odd_share`` [0.5], ``odd_qtypes`` [16, 255] (the blocked types count as odd too),
``blocked_qtypes`` [10, 65399],
``rate_queries`` [100], ``rate_window_s`` [300], ``persist_s`` [300], ``ignore_domains`` [],
``max_domains`` [2048], ``max_name_len`` [1024].

MITRE: T1071.004 (application layer protocol: DNS) and T1572 (protocol tunnelling); T1048.003
(exfiltration over an unencrypted non-C2 protocol) too when the names carry data
(``unique_subdomains`` or ``random_names``). Dedup key: ``dns_tunnel:<container>:<domain>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from coi_watch.detectors._config import (
    DetectorConfigError,
    cfg_int,
    cfg_number,
    cfg_strings,
    check_keys,
)
from coi_watch.detectors._net import (
    is_reverse_name,
    registered_domain,
    shannon,
)
from coi_watch.detectors._windows import DistinctWindow, LruMap, SlidingCounts, SlidingSum
from coi_watch.events import DnsQuery, Event
from coi_watch.verdicts import Severity, Verdict

__all__ = ("DnsTunnel",)

_NAME = "dns_tunnel"
_SEC = 1_000_000_000
_HEX = frozenset("0123456789abcdef")
_QTYPE_NAMES = {1: "A", 5: "CNAME", 10: "NULL", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
                33: "SRV", 255: "ANY", 65399: "PRIVATE-65399"}
# counter fields of a domain's window
_TOTAL, _RANDOM, _ODD, _LONG, _BLOCKED, _LEFT_LEN, _LEFT_N = range(7)
_FIELDS = 7
_BUCKETS = 30


@dataclass(slots=True)
class _Domain:
    counts: SlidingCounts
    unique: DistinctWindow[int]
    rate: SlidingSum
    signals: frozenset[str] = frozenset()
    severity: Severity | None = None
    first_trip_ns: int = 0
    contributing: int = 0
    longest: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass(slots=True)
class DnsTunnelStats:
    """Counters of the detector (``evicted``: domain states dropped at the cap)."""

    queries: int = 0
    skipped: int = 0
    verdicts: int = 0
    evicted: int = 0


class DnsTunnel:
    """DNS tunnelling per registered domain; the strategy is in the module docstring."""

    name: ClassVar[str] = _NAME
    consumes: ClassVar[frozenset[str]] = frozenset({"net.dns"})

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        cfg = dict(config or {})
        check_keys(_NAME, cfg, (
            "window_s", "unique_subdomains", "max_query_len", "entropy_min_len",
            "entropy_bits", "min_queries", "random_share", "odd_share", "odd_qtypes",
            "blocked_qtypes", "rate_queries", "rate_window_s", "persist_s", "ignore_domains",
            "max_domains", "max_name_len",
        ))
        self._window_ns = int(cfg_number(_NAME, cfg, "window_s", 3600) * _SEC)
        self._unique = cfg_int(_NAME, cfg, "unique_subdomains", 100)
        self._max_len = cfg_int(_NAME, cfg, "max_query_len", 90)
        self._ent_len = cfg_int(_NAME, cfg, "entropy_min_len", 20)
        self._ent_bits = cfg_number(_NAME, cfg, "entropy_bits", 4.0)
        self._min_q = cfg_int(_NAME, cfg, "min_queries", 8)
        self._random_share = _share(cfg, "random_share", 0.5)
        self._odd_share = _share(cfg, "odd_share", 0.5)
        blocked = _qtypes(cfg, "blocked_qtypes", (10, 65399))
        self._blocked = frozenset(blocked)
        self._odd = frozenset(_qtypes(cfg, "odd_qtypes", (16, 255))) | self._blocked
        self._rate_q = cfg_int(_NAME, cfg, "rate_queries", 100)
        self._rate_ns = int(cfg_number(_NAME, cfg, "rate_window_s", 300) * _SEC)
        self._persist_ns = int(cfg_number(_NAME, cfg, "persist_s", 300, strict=False) * _SEC)
        ignore = [d.lower().strip(".") for d in cfg_strings(_NAME, cfg, "ignore_domains")]
        self._ignore = frozenset(ignore)
        self._ignore_suffixes = tuple("." + d for d in ignore)
        self._clip = cfg_int(_NAME, cfg, "max_name_len", 1024, minimum=64)
        self._domains: LruMap[tuple[str, str], _Domain] = LruMap(
            cfg_int(_NAME, cfg, "max_domains", 2048)
        )
        self.stats = DnsTunnelStats()

    # -- events

    def feed(self, ev: Event, now_ns: int) -> Iterable[Verdict]:
        """Take one DNS query; return at most one verdict."""
        if not isinstance(ev, DnsQuery):
            return ()
        self.stats.queries += 1
        qname = ev.qname
        if len(qname) > self._clip:  # beyond any real name: keep the zone end
            qname = qname[-self._clip:]
        if not qname or is_reverse_name(qname):
            self.stats.skipped += 1
            return ()
        domain = registered_domain(qname)
        if domain in self._ignore or (
            self._ignore_suffixes and qname.endswith(self._ignore_suffixes)
        ):
            self.stats.skipped += 1
            return ()
        left = qname[: len(qname) - len(domain) - 1] if len(qname) > len(domain) else ""

        key = (ev.container, domain)
        st = self._domains.touch(key)
        if st is None:
            st = _Domain(SlidingCounts(self._window_ns, _FIELDS, _BUCKETS),
                         DistinctWindow(self._window_ns, self._unique + 1),
                         SlidingSum(self._rate_ns, _BUCKETS))
            before = self._domains.evicted
            self._domains.put(key, st)
            self.stats.evicted += self._domains.evicted - before

        # per-query features
        octets = len(qname) - 3 * qname.count("\\")  # \DDD is one octet on the wire
        long_q = octets > self._max_len
        data = left.replace(".", "") if left else ""
        random_q = bool(data) and self._looks_random(data)
        odd = ev.qtype in self._odd
        blocked = ev.qtype in self._blocked
        totals = st.counts.add_many(now_ns, (
            1, random_q, odd, long_q, blocked, len(data), 1 if data else 0,
        ))
        if left:
            uniq, new_left = st.unique.add(now_ns, hash(left))
        else:
            uniq, new_left = st.unique.count(now_ns), False
        rate = st.rate.add(now_ns)
        if octets > st.longest:
            st.longest = octets

        # signals
        signals: list[str] = []
        total, min_q = totals[_TOTAL], self._min_q
        if uniq >= self._unique:
            signals.append("unique_subdomains")
        if totals[_LONG] > 0:
            signals.append("long_query")
        if totals[_RANDOM] >= min_q and totals[_RANDOM] >= self._random_share * total:
            signals.append("random_names")
        if totals[_BLOCKED] > 0 or (
            totals[_ODD] >= min_q and totals[_ODD] >= self._odd_share * total
        ):
            signals.append("qtype")
        if not signals:
            if st.signals:  # the episode is over
                st.signals, st.severity, st.first_trip_ns, st.contributing = (
                    frozenset(), None, 0, 0)
                st.examples.clear()
            return ()
        if rate >= self._rate_q:
            signals.append("rate")

        contributes = long_q or random_q or odd or (new_left and "unique_subdomains" in signals)
        if st.severity is None:
            st.first_trip_ns, st.contributing = now_ns, 0
        elif contributes:
            st.contributing += 1
        if contributes and len(st.examples) < 3:
            st.examples.append(_clip(qname, 256))
        persistent = (st.contributing >= min_q
                      and now_ns - st.first_trip_ns >= self._persist_ns)
        severity = Severity.HIGH if len(signals) >= 2 or persistent else Severity.WARNING
        now_set = frozenset(signals)
        if st.severity is not None and severity.rank <= st.severity.rank \
                and now_set <= st.signals:
            return ()
        st.signals = st.signals | now_set
        st.severity = severity if st.severity is None or severity.rank > st.severity.rank \
            else st.severity
        self.stats.verdicts += 1
        return [self._verdict(ev, now_ns, qname, domain, data, signals, severity,
                              persistent, totals, uniq, rate, st)]

    def _looks_random(self, data: str) -> bool:
        if "\\" in data:
            return True  # non-printable bytes in a name: binary data
        if len(data) < self._ent_len:
            return False
        if _HEX.issuperset(data):
            return not data.isdigit()  # a hex encoding (a long decimal string is not)
        return shannon(data) >= self._ent_bits

    # -- verdicts

    def _verdict(self, ev: DnsQuery, now_ns: int, qname: str, domain: str, data: str,
                 signals: list[str],
                 severity: Severity, persistent: bool, totals: list[int], uniq: int,
                 rate: int, st: _Domain) -> Verdict:
        total = totals[_TOTAL]
        evidence: dict[str, Any] = {
            "domain": domain,
            "signals": signals,
            "qname": _clip(qname, 256),
            "qname_octets": len(qname) - 3 * qname.count("\\"),
            "qtype": _QTYPE_NAMES.get(ev.qtype, str(ev.qtype)),
            "resolver": ev.dst,
            "window_s": self._window_ns / _SEC,
            "queries": total,
            "unique_subdomains": uniq,
            "random_names": totals[_RANDOM],
            "odd_qtype_queries": totals[_ODD],
            "blocked_qtype_queries": totals[_BLOCKED],
            "long_queries": totals[_LONG],
            "longest_octets": st.longest,
            "mean_left_len": round(totals[_LEFT_LEN] / totals[_LEFT_N], 1)
            if totals[_LEFT_N] else 0.0,
            "rate": {"queries": rate, "window_s": self._rate_ns / _SEC},
            "thresholds": {
                "unique_subdomains": self._unique, "max_query_len": self._max_len,
                "entropy_bits": self._ent_bits, "entropy_min_len": self._ent_len,
                "min_queries": self._min_q, "random_share": self._random_share,
                "odd_share": self._odd_share, "rate_queries": self._rate_q,
            },
            "examples": list(st.examples),
        }
        if data and len(data) >= self._ent_len and "\\" not in data:
            evidence["left_entropy_bits"] = round(shannon(data), 3)
        if persistent:
            evidence["persistent_s"] = (now_ns - st.first_trip_ns) / _SEC
        mitre = ["T1071.004", "T1572"]
        if "unique_subdomains" in signals or "random_names" in signals:
            mitre.append("T1048.003")
        return Verdict(
            ts_ns=ev.ts_ns,
            wall_ns=ev.wall_ns,
            container=ev.container,
            detector=_NAME,
            title=f"Possible DNS tunnel via {_clip(domain, 96)} ({', '.join(signals)})",
            severity=severity,
            evidence=evidence,
            mitre=tuple(mitre),
            dedup_key=f"{_NAME}:{ev.container}:{_clip(domain, 256)}",
            event_kind=ev.kind,
        )


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...(+{len(text) - limit} chars)"


def _share(cfg: Mapping[str, Any], key: str, default: float) -> float:
    value = cfg_number(_NAME, cfg, key, default)
    if value > 1:
        raise DetectorConfigError(f"detectors.{_NAME}.{key}: a share in (0, 1], got {value!r}")
    return value


def _qtypes(cfg: Mapping[str, Any], key: str, default: tuple[int, ...]) -> list[int]:
    value = cfg.get(key, list(default))
    if isinstance(value, list | tuple) and all(
        type(v) is int and 0 <= v <= 65535 for v in value
    ):
        return list(value)
    raise DetectorConfigError(
        f"detectors.{_NAME}.{key}: a list of DNS type numbers (0-65535), got {value!r}"
    )
