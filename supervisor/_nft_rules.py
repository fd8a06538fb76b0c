"""The pure parts of coi-watch's nftables table: names and the JSON rule documents.

Strategy: everything here is data in, data out (no I/O but ``/proc/PID/stat``): table and
chain names and their checks, and the ``libnftables-json(5)`` commands that build the table
(:func:`skeleton`), the shared NFLOG chains (:func:`observe_rules`, :func:`answer_rules`) and
a container's chain (:func:`container_rules`, :func:`quarantine_rules`); and
:class:`TableState`, the table as read back from the kernel. The layout they build and why
is described in :mod:`coi_watch.nft`, which re-exports the public names.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

__all__ = (
    "CHAIN_PRIORITY",
    "FAMILY",
    "PREFIX_ANSWER",
    "PREFIX_DNS",
    "PREFIX_NEW",
    "PREFIX_NEW_DNS",
    "TABLE_PREFIX",
    "Quarantine",
    "TableState",
    "answer_rules",
    "chain_name",
    "container_rules",
    "observe_rules",
    "owner_of",
    "process_start",
    "quarantine_rules",
    "skeleton",
    "table_name",
)

FAMILY: Final = "bridge"
TABLE_PREFIX: Final = "coi_watch_"
CHAIN_PRIORITY: Final = -400
"""Before Incus's bridge filters (``-200``, NF_BR_PRI_FILTER_BRIDGED) and br_netfilter (0):
we log and quarantine what the container sent, before anything rewrites or drops it."""

PREFIX_NEW: Final = "coi-new"
PREFIX_DNS: Final = "coi-dns"
PREFIX_NEW_DNS: Final = "coi-new-dns"
PREFIX_ANSWER: Final = "coi-dns-ans"

_TABLE_RE = re.compile(r"^coi_watch_(\d+)_(\d+)(?:_(\d+))?$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")  # IFNAMSIZ - 1, no "/" or spaces

# IANA protocol numbers: the ones whose header starts with 16-bit source/destination ports.
_PORT_PROTOS: Final = (17, 136, 132, 33)  # udp, udplite, sctp, dccp
# ICMPv6 types not worth a NetConnect: MLD (130-132, 143) and NDP (133-137), RFC 4443/4861.
_ICMPV6_NOISE: Final = (130, 131, 132, 133, 134, 135, 136, 137, 143)
# ICMPv6 a quarantined container still needs for its permitted neighbours (RFC 4861).
_ICMPV6_ND: Final = (133, 135, 136)



# --------------------------------------------------------------------------- naming


def process_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22),
    or ``None`` when the process does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ")".
    fields_ = stat.rsplit(b")", 1)[-1].split()
    try:
        return int(fields_[19])  # field 22 overall; fields_[0] is field 3 (state)
    except (IndexError, ValueError):
        return None


def table_name(pid: int, start: int, instance: int = 0) -> str:
    """``coi_watch_<pid>_<start>`` (``_<n>`` for a second manager in the same process)."""
    base = f"{TABLE_PREFIX}{pid}_{start}"
    return f"{base}_{instance}" if instance else base


def owner_of(name: str) -> tuple[int, int] | None:
    """``(pid, start)`` encoded in one of our table names, ``None`` for anyone else's."""
    m = _TABLE_RE.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def chain_name(container: str) -> str:
    """``c_<container>``; Incus names are ``[A-Za-z0-9-]``, at most 63 characters.

    Raises:
        ValueError: a name nftables or Incus would not accept.
    """
    if not _NAME_RE.match(container):
        raise ValueError(f"not a container name: {container!r}")
    return f"c_{container}"


def _check_ifname(name: str) -> str:
    if not _IFNAME_RE.match(name):
        raise ValueError(f"not an interface name: {name!r}")
    return name


# --------------------------------------------------------------------------- JSON building
# libnftables-json(5): every statement is a one-key object; "match" compares an expression
# with a value, a set ({"set": [...]}) or a named set ("@name").


def _payload(proto: str, field_: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": field_}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _key(ip: str, ports: bool) -> dict[str, Any]:
    """The flow key: ``iifname . saddr . daddr . l4proto [. th dport]``."""
    parts = [_meta("iifname"), _payload(ip, "saddr"), _payload(ip, "daddr"), _meta("l4proto")]
    if ports:
        parts.append(_payload("th", "dport"))
    return {"concat": parts}


def _log(group: int, prefix: str, snaplen: int = 0) -> dict[str, Any]:
    log: dict[str, Any] = {"group": group, "prefix": prefix}
    if snaplen:
        log["snaplen"] = snaplen
    return {"log": log}


_RETURN: Final = {"return": None}
_SYN_ONLY: Final = _match({"&": [_payload("tcp", "flags"), ["syn", "ack"]]}, "syn")


def _first_packet(
    pre: list[dict[str, Any]], ip: str, ports: bool, group: int, prefix: str, snaplen: int
) -> list[list[dict[str, Any]]]:
    """Two rules: log and remember a flow not yet in its set; and, when the ``add`` failed
    (set full: dynset ends the rule with NFT_BREAK before the log), log it anyway."""
    s = f"@{'flow' if ports else 'host'}{'4' if ip == 'ip' else '6'}"
    key = _key(ip, ports)
    miss = _match(key, s, "!=")
    remember = {"set": {"op": "add", "elem": key, "set": s}}
    log = _log(group, prefix, snaplen)
    return [[*pre, miss, remember, log, _RETURN], [*pre, miss, log, _RETURN]]


def observe_rules(
    group: int, *, snaplen_new: int = 128, snaplen_dns: int = 512
) -> list[list[dict[str, Any]]]:
    """The ``observe`` chain: what is sent to NFLOG group ``group`` (module docstring).

    ``snaplen_new`` caps the copy of first packets that are not DNS (headers are enough),
    ``snaplen_dns`` that of DNS queries (IPv6 + TCP options + a 255-octet question: 373).
    A rule's snaplen can only lower the socket's ``copy_range`` (nfnetlink_log.c,
    ``NF_LOG_F_COPY_LEN``), which is sized for the answers (``ingress``) instead.
    """
    udp53 = _match(_payload("udp", "dport"), 53)
    rules: list[list[dict[str, Any]]] = []
    for ip in ("ip", "ip6"):
        rules += _first_packet([udp53], ip, True, group, PREFIX_NEW_DNS, snaplen_dns)
    rules.append([udp53, _log(group, PREFIX_DNS, snaplen_dns), _RETURN])
    rules.append([_SYN_ONLY, _log(group, PREFIX_NEW, snaplen_new), _RETURN])
    rules.append([_match(_payload("tcp", "dport"), 53), _log(group, PREFIX_DNS, snaplen_dns),
                  _RETURN])
    rules.append([_match(_meta("l4proto"), 6), _RETURN])  # established TCP: nothing to log
    rules.append([_match(_payload("icmpv6", "type"), {"set": list(_ICMPV6_NOISE)}), _RETURN])
    with_ports = _match(_meta("l4proto"), {"set": list(_PORT_PROTOS)})
    without = _match(_meta("l4proto"), {"set": [6, *_PORT_PROTOS]}, "!=")
    for ip in ("ip", "ip6"):
        rules += _first_packet([with_ports], ip, True, group, PREFIX_NEW, snaplen_new)
    for ip in ("ip", "ip6"):
        rules += _first_packet([without], ip, False, group, PREFIX_NEW, snaplen_new)
    return rules


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Egress a quarantined container keeps: ``permitted`` networks (any protocol) and DNS
    (UDP and TCP port 53) to ``resolvers``. Everything else it sends is dropped, except ARP
    and the ICMPv6 neighbour discovery its permitted neighbours need."""

    permitted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    resolvers: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()

    @classmethod
    def of(cls, permitted: Iterable[str], resolvers: Iterable[str] = ()) -> Quarantine:
        """Parse CIDRs / addresses.

        Raises:
            ValueError: something that is not an address or network.
        """
        nets = tuple(ipaddress.ip_network(p, strict=False) for p in permitted)
        res = tuple(ipaddress.ip_address(r) for r in resolvers)
        return cls(nets, res)


def _addr_set(items: Sequence[Any]) -> dict[str, Any]:
    out: list[Any] = []
    for it in items:
        if isinstance(it, ipaddress.IPv4Network | ipaddress.IPv6Network) and (
            it.prefixlen != it.max_prefixlen
        ):
            out.append({"prefix": {"addr": str(it.network_address), "len": it.prefixlen}})
        else:
            out.append(str(it.network_address if hasattr(it, "network_address") else it))
    return {"set": out}


def quarantine_rules(q: Quarantine) -> list[list[dict[str, Any]]]:
    """The verdicts after ``jump observe`` for a quarantined container (ends in ``drop``)."""
    rules: list[list[dict[str, Any]]] = [
        [_match(_payload("ether", "type"), "arp"), {"accept": None}],
        [_match(_payload("icmpv6", "type"), {"set": list(_ICMPV6_ND)}), {"accept": None}],
    ]
    dns = _match(_meta("l4proto"), {"set": [6, 17]})
    dport53 = _match(_payload("th", "dport"), 53)
    for ip, version in (("ip", 4), ("ip6", 6)):
        nets = [n for n in q.permitted if n.version == version]
        if nets:
            rules.append([_match(_payload(ip, "daddr"), _addr_set(nets)), {"accept": None}])
        res = [r for r in q.resolvers if r.version == version]
        if res:
            rules.append([_match(_payload(ip, "daddr"), _addr_set(res)), dns, dport53,
                          {"accept": None}])  # fmt: skip
    rules.append([{"counter": None}, {"drop": None}])
    return rules


def answer_rules(group: int) -> list[list[dict[str, Any]]]:
    """The ``ingress`` chain: DNS answers to our veths, to NFLOG group ``group``."""
    to_us = _match(_meta("oifname"), "@answer_ports")
    return [[to_us, _match(_payload(proto, "sport"), 53), _log(group, PREFIX_ANSWER)]
            for proto in ("udp", "tcp")]


def container_rules(observe: bool, quarantine: Quarantine | None) -> list[list[dict[str, Any]]]:
    """The rules of a container's chain ``c_<name>``."""
    rules: list[list[dict[str, Any]]] = []
    if observe:
        rules.append([{"jump": {"target": "observe"}}])
    if quarantine is not None:
        rules += quarantine_rules(quarantine)
    return rules


def skeleton(
    table: str,
    group: int | None,
    *,
    flow_timeout_s: int = 60,
    set_size: int = 65536,
    snaplen_new: int = 128,
    existing: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Commands that create (or reset) everything but the per-container chains.

    Idempotent: sets named in ``existing`` are left as they are (re-adding a set whose
    kernel flags differ, as ``dynamic`` does once a rule uses it, is ``EEXIST``), ``add`` of
    an existing chain is a no-op, and the two fixed chains are flushed before their rules
    are added again. The table itself is created beforehand.
    """
    t = {"family": FAMILY, "table": table}
    have = set(existing)
    cmds: list[dict[str, Any]] = []
    if "ports" not in have:
        cmds.append({"add": {"map": {**t, "name": "ports", "type": "ifname", "map": "verdict"}}})
    if "answer_ports" not in have:
        cmds.append({"add": {"set": {**t, "name": "answer_ports", "type": "ifname"}}})
    for name, ip, ports in (("flow4", "ipv4_addr", True), ("flow6", "ipv6_addr", True),
                            ("host4", "ipv4_addr", False), ("host6", "ipv6_addr", False)):
        if name in have:
            continue
        typ = ["ifname", ip, ip, "inet_proto"] + (["inet_service"] if ports else [])
        # "dynamic" is implied by the "add @set" statements (nft 1.0.6 JSON rejects it).
        cmds.append({"add": {"set": {**t, "name": name, "type": typ, "flags": ["timeout"],
                                     "timeout": flow_timeout_s, "size": set_size}}})
    cmds += [
        {"add": {"chain": {**t, "name": "egress", "type": "filter", "hook": "prerouting",
                           "prio": CHAIN_PRIORITY, "policy": "accept"}}},
        {"add": {"chain": {**t, "name": "observe"}}},
        {"add": {"chain": {**t, "name": "ingress", "type": "filter", "hook": "postrouting",
                           "prio": CHAIN_PRIORITY, "policy": "accept"}}},
        {"flush": {"chain": {**t, "name": "egress"}}},
        {"flush": {"chain": {**t, "name": "observe"}}},
        {"flush": {"chain": {**t, "name": "ingress"}}},
        _rule(table, "egress", [{"vmap": {"key": _meta("iifname"), "data": "@ports"}}]),
    ]
    if group is not None:
        cmds += [_rule(table, "observe", r) for r in observe_rules(group, snaplen_new=snaplen_new)]
        cmds += [_rule(table, "ingress", r) for r in answer_rules(group)]
    return cmds


def _rule(table: str, chain: str, expr: list[dict[str, Any]]) -> dict[str, Any]:
    return {"add": {"rule": {"family": FAMILY, "table": table, "chain": chain, "expr": expr}}}


def _element(table: str, op: str, veth: str, chain: str | None = None,
             name: str = "ports") -> dict[str, Any]:
    elem: Any = [veth, {"jump": {"target": chain}}] if chain else veth
    return {op: {"element": {"family": FAMILY, "table": table, "name": name, "elem": [elem]}}}


def _chain(table: str, op: str, chain: str) -> dict[str, Any]:
    return {op: {"chain": {"family": FAMILY, "table": table, "name": chain}}}


def _doc(cmds: list[dict[str, Any]]) -> str:
    return orjson.dumps({"nftables": cmds}).decode()


# --------------------------------------------------------------------------- reading back


@dataclass(slots=True)
class TableState:
    """What our table holds: chain -> rule handles, veth -> chain it jumps to."""

    exists: bool = False
    chains: dict[str, tuple[int, ...]] = field(default_factory=dict)
    ports: dict[str, str] = field(default_factory=dict)
    sets: frozenset[str] = frozenset()
    answer_ports: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, table_objs: list[dict[str, Any]], map_objs: list[dict[str, Any]],
              answer_objs: Sequence[dict[str, Any]] = ()) -> TableState:
        """Build from ``list table`` (terse), ``list map ... ports`` and ``list set ...
        answer_ports`` output objects."""
        st = cls()
        st.answer_ports = frozenset(
            e for o in answer_objs for e in (o.get("set") or {}).get("elem", ()) or ()
            if isinstance(e, str))
        rules: dict[str, list[int]] = {}
        sets = set()
        for o in table_objs:
            if "table" in o:
                st.exists = True
            elif "chain" in o:
                rules.setdefault(o["chain"]["name"], [])
            elif "rule" in o:
                r = o["rule"]
                rules.setdefault(r["chain"], []).append(int(r.get("handle", 0)))
            elif "set" in o or "map" in o:
                sets.add((o.get("set") or o["map"])["name"])
        for o in map_objs:
            for elem in (o.get("map") or {}).get("elem", ()) or ():
                if isinstance(elem, list) and len(elem) == 2:
                    key, verdict = elem
                    target = (verdict.get("jump") or verdict.get("goto") or {}).get("target")
                    if isinstance(key, str) and isinstance(target, str):
                        st.ports[key] = target
        st.chains = {k: tuple(v) for k, v in rules.items()}
        st.sets = frozenset(sets)
        return st
