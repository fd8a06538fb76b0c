"""coi-watch's own nftables table: per-container NFLOG rules and quarantine, nothing else.

Strategy
--------
One table, ``table bridge coi_watch_<pid>_<start>`` (``<start>`` is our process start time in
clock ticks, field 22 of ``/proc/self/stat``, so a recycled pid never looks like ours), in the
HOST network namespace, where container root cannot reach it. Incus containers hang off a
Linux bridge through a veth pair; every frame a container sends enters the bridge on its
host-side veth, so one ``bridge``-family base chain on the ``prerouting`` hook sees all of a
container's egress, whether it is bridged to another port or delivered to the host
(``notes/kernel-sources.md`` section 1: bridge family ``iifname "veth*"`` works and the NFLOG
payload still starts at the IP header). An ``inet`` chain is not used: with br_netfilter on,
bridged IPv4 traffic also passes the inet ``prerouting`` hook with ``iifname`` = the port, and
would be logged twice. Layout::

    map ports   { type ifname : verdict }            veth -> jump c_<container>
    set answer_ports { type ifname }                 veths whose incoming DNS answers we log
    set flow4/6 { ifname . saddr . daddr . l4proto . dport; timeout; size }   first packets
    set host4/6 { ifname . saddr . daddr . l4proto; timeout; size }           (no ports)
    chain egress   hook prerouting priority -400: iifname vmap @ports
    chain observe  the NFLOG rules, shared by every container (sets are keyed on iifname)
    chain c_<name> jump observe; then the quarantine rules, if any
    chain ingress  hook postrouting priority -400: DNS answers going out to our veths

``observe`` logs to one NFLOG group with three prefixes (:data:`PREFIX_NEW`,
:data:`PREFIX_DNS`, :data:`PREFIX_NEW_DNS`): a TCP SYN without ACK; for other protocols the
first packet of a flow within ``flow_timeout_s`` (``key != @set add @set {key} log``; a
second rule without ``add`` logs every packet when the set is full, so a flood fails
*open*, towards more logging); every UDP packet to port 53 and every non-SYN TCP segment to
port 53 (the source drops those without payload). ICMPv6 neighbour discovery and MLD are not
logged. On the way in, ``ingress`` logs DNS answers (UDP or TCP from port 53) leaving the
bridge through one of our veths (:data:`PREFIX_ANSWER`): the bridge ``postrouting`` hook
sees both frames forwarded from another port and those the host itself sends.

nftables is driven through its JSON API (``libnftables-json(5)``), built as Python data and
read back as JSON, never as text. The default backend calls ``libnftables.so.1`` in-process
(ctypes; the library behind ``nft -j -f -``, without a fork per command); the ``cli``
backend (``nft -j -f -`` in a subprocess) is the fallback when the library cannot be
loaded. The one text command is the table creation, because nft 1.0.6's JSON parser ignores
table ``flags`` and ``comment``.

Cleanup: :meth:`NftManager.close` (idempotent) deletes the table on cancellation and on
SIGTERM (the supervisor turns it into a cancellation); an ``atexit`` hook does it when the
interpreter exits without that; and after SIGKILL the next start sweeps every
``coi_watch_*`` table whose owner pid is dead or recycled. With ``owner=True`` and an nft
newer than 1.0.6, the table also carries ``flags owner`` (kernel >= 5.12,
``NFT_TABLE_F_OWNER``): the library context keeps ONE netlink socket for our lifetime, the
kernel deletes the table when it closes (even after SIGKILL) and refuses every change from
any other socket with ``EPERM`` (host root's ``nft delete table`` included; measured).
It is off by default and refused on nft <= 1.0.6: that version's JSON printer frees the
flags string before printing it (``table_flags_json``, ``src/json.c``), so with a flagged
table in the namespace every ``nft -j list tables|ruleset`` on the host prints corrupt JSON
(measured: output cut after ``"flags":``), ours and Incus's alike.

Every operation is idempotent: the manager keeps the *desired* state per container and each
change re-writes that container's chain and map elements in one transaction, computed
against the table as it is (read back as JSON). :meth:`NftManager.verify` compares the
table with a snapshot of rule handles taken after our own last change; any difference
(a chain, rule or map element gone or added by someone else) is tamper, which
:meth:`NftManager.repair` undoes. :class:`TableMonitor` parses nftables change
notifications (``NFNLGRP_NFTABLES``) so the NFLOG source can check right after a change.

Sources: ``libnftables-json(5)``; ``nft(8)`` (bridge family hooks and priorities, sets with
``timeout``, ``log group``); ``linux/netfilter/nf_tables.h`` (``NFT_TABLE_F_OWNER``,
``enum nf_tables_msg_types``); ``linux/netfilter/nfnetlink.h`` (``NFNLGRP_NFTABLES``).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import ctypes
import ipaddress
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson

from coi_watch.containers import ContainerInfo
from coi_watch.errors import SourceError, WireError
from coi_watch.netns import call_in_netns
from coi_watch.wire.netlink import iter_messages
from coi_watch.wire.nfnetlink import NETLINK_NETFILTER, cstring, nfgen_header, split_type

__all__ = (
    "CHAIN_PRIORITY",
    "FAMILY",
    "PREFIX_ANSWER",
    "PREFIX_DNS",
    "PREFIX_NEW",
    "PREFIX_NEW_DNS",
    "TABLE_PREFIX",
    "Backend",
    "NftError",
    "NftManager",
    "Problem",
    "Quarantine",
    "TableChange",
    "TableMonitor",
    "TableState",
    "answer_rules",
    "chain_name",
    "check_table",
    "container_rules",
    "current",
    "observe_rules",
    "owner_of",
    "parse_table_changes",
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


class NftError(SourceError):
    """nftables refused a command or cannot be used (no library or binary, no privilege)."""


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


# --------------------------------------------------------------------------- backends


class Backend(Protocol):
    """Runs one nftables command buffer (JSON, or text for the table), returns its output."""

    can_own: bool

    def run(self, buf: str, *, terse: bool = False, dry_run: bool = False) -> str: ...

    def close(self) -> None: ...


# libnftables.h: enum nft_output_flags
_OUT_HANDLE = 1 << 3
_OUT_JSON = 1 << 4
_OUT_TERSE = 1 << 11


class _LibNftables:
    """``libnftables.so.1`` through ctypes: one ``nft_ctx`` (one netlink socket) for life.

    Not thread-safe: the manager calls it from one worker thread, under a lock.
    """

    can_own = True

    def __init__(self, netns: str | None) -> None:
        try:
            lib = ctypes.CDLL("libnftables.so.1", use_errno=True)
        except OSError as exc:
            raise NftError(f"libnftables.so.1 cannot be loaded: {exc}") from exc
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        for fn in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
        for fn in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
            getattr(lib, fn).restype = ctypes.c_char_p
        lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self._lib = lib
        # nft_ctx_new opens the netlink socket: in the target netns when one is given.

        def new() -> int | None:
            return lib.nft_ctx_new(0)  # type: ignore[no-any-return]  # NFT_CTX_DEFAULT

        ctx = call_in_netns(netns, new) if netns else new()
        if not ctx:
            raise NftError("nft_ctx_new failed")
        self._ctx: int | None = ctx
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)

    def run(self, buf: str, *, terse: bool = False, dry_run: bool = False) -> str:
        if self._ctx is None:
            raise NftError("nftables context closed")
        flags = _OUT_JSON | _OUT_HANDLE | (_OUT_TERSE if terse else 0)
        self._lib.nft_ctx_output_set_flags(self._ctx, flags)
        self._lib.nft_ctx_set_dry_run(self._ctx, dry_run)
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, buf.encode())
        out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
        if rc != 0:
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode().strip()
            raise NftError(err or f"nftables command failed ({rc})")
        return out

    def close(self) -> None:
        # Freeing the context closes its socket: an owned table goes with it.
        if self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None


class _NftCli:
    """``nft -j -f -`` in a subprocess (``nsenter --net`` for another netns)."""

    can_own = False

    def __init__(self, netns: str | None) -> None:
        self._prefix = ["nsenter", f"--net={netns}", "--"] if netns else []

    def run(self, buf: str, *, terse: bool = False, dry_run: bool = False) -> str:
        # With -j, "-f -" parses stdin as JSON and the text fallback then reads an empty
        # stdin: a text command would silently do nothing (nft 1.0.6, measured).
        json_in = buf.lstrip().startswith("{")
        argv = [*self._prefix, "nft", *(["-j"] if json_in else []), "-a",
                *(["-t"] if terse else []), *(["-c"] if dry_run else []), "-f", "-"]
        try:
            done = subprocess.run(argv, input=buf.encode(), capture_output=True, timeout=30,
                                  check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NftError(f"cannot run nft: {exc}") from exc
        if done.returncode:
            raise NftError(done.stderr.decode("utf-8", "replace").strip() or "nft failed")
        return done.stdout.decode()

    def close(self) -> None:
        pass


def _backend(kind: str, netns: str | None) -> Backend:
    if kind == "lib":
        return _LibNftables(netns)
    if kind == "cli":
        return _NftCli(netns)
    if kind != "auto":
        raise ValueError(f"unknown nftables backend {kind!r}")
    try:
        return _LibNftables(netns)
    except NftError:
        return _NftCli(netns)


def check_table(group: int | None, *, netns: str | None = None, backend: str = "auto") -> str:
    """Have the kernel validate coi-watch's whole table (bridge family, hooks, sets, NFLOG
    rules, a container chain) in a dry run (``nft --check``: the transaction is sent, then
    aborted); nothing is created. Returns the backend used (``lib`` or ``cli``).

    Raises:
        NftError: nftables is unusable or the kernel refused something.
    """
    b = _backend(backend, netns)
    try:
        name = table_name(os.getpid(), 0, 99)
        cmds = [{"add": {"table": {"family": FAMILY, "name": name}}},
                *skeleton(name, group), _chain(name, "add", "c_probe"),
                *(_rule(name, "c_probe", r) for r in container_rules(
                    group is not None, Quarantine.of(["198.18.0.0/15"], ["198.18.0.1"]))),
                _element(name, "add", "coi-probe0", "c_probe")]
        b.run(_doc(cmds), dry_run=True)
    finally:
        b.close()
    return "lib" if isinstance(b, _LibNftables) else "cli"


# --------------------------------------------------------------------------- state


def _objects(out: str) -> list[dict[str, Any]]:
    """The objects of one or more ``{"nftables": [...]}`` documents in a command's output."""
    objs: list[dict[str, Any]] = []
    for line in out.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise NftError(f"nft printed something that is not JSON: {exc}") from None
        objs += [o for o in doc.get("nftables", ()) if isinstance(o, dict)]
    return objs


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for p in text.split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


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


@dataclass(slots=True)
class _Want:
    veths: tuple[str, ...] = ()
    observe: bool = False
    quarantine: Quarantine | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """One difference between the table and what we put there."""

    container: str  # "" when it concerns every container (table, egress, observe)
    what: str  # table_missing, chain_missing, rules_changed, port_missing, port_changed, ...
    detail: str = ""


_MANAGERS: dict[tuple[str | None, int], NftManager] = {}
_MANAGERS_LOCK = threading.Lock()


def current(netns: str | None = None) -> NftManager | None:
    """The running manager of this process for ``netns`` (host: ``None``), if any.

    The NFLOG source starts one; a responder that quarantines uses the same table.
    """
    with _MANAGERS_LOCK:
        live = [m for (ns, _), m in sorted(_MANAGERS.items(), key=lambda kv: kv[0][1])
                if ns == netns]  # fmt: skip
    return live[0] if live else None


class NftManager:
    """Owns one ``coi_watch_*`` table (module docstring). Use :meth:`start` then
    :meth:`attach` / :meth:`release` / :meth:`quarantine`; :meth:`close` (idempotent) at the
    end. ``log_group`` ``None`` makes a table without NFLOG rules (quarantine only).
    """

    def __init__(
        self,
        log_group: int | None = None,
        *,
        netns: str | None = None,
        backend: str = "auto",
        owner: bool = False,
        flow_timeout_s: int = 60,
        set_size: int = 65536,
        snaplen_new: int = 128,
    ) -> None:
        self.log_group = log_group
        self.netns = netns
        self.owner = owner
        self.flow_timeout_s = flow_timeout_s
        self.set_size = set_size
        self.snaplen_new = snaplen_new
        self._backend_kind = backend
        self._backend: Backend | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._run_lock = threading.Lock()  # the backend is not thread-safe (atexit vs pool)
        self._lock = asyncio.Lock()
        self._want: dict[str, _Want] = {}
        self._snapshot: TableState | None = None
        self._closed = False
        self._started = False
        pid = os.getpid()
        start = process_start(pid) or 0
        with _MANAGERS_LOCK:
            n = 0
            while (netns, n) in _MANAGERS:
                n += 1
            self._slot = (netns, n)
            _MANAGERS[self._slot] = self
        self.table = table_name(pid, start, n)
        self.owned = False
        self.nft_version: tuple[int, ...] = ()
        self.swept: list[str] = []

    # ------------------------------------------------------------------ plumbing

    async def _run(self, buf: str, *, terse: bool = False) -> str:
        if self._closed or self._backend is None or self._pool is None:
            raise NftError("nftables manager is closed")
        backend = self._backend

        def call() -> str:
            with self._run_lock:
                return backend.run(buf, terse=terse)

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, call)

    async def _apply(self, cmds: list[dict[str, Any]]) -> None:
        if cmds:
            await self._run(_doc(cmds))

    async def read_state(self) -> TableState:
        """The table as the kernel has it (rules and ports; set elements are not read)."""
        t = {"family": FAMILY, "name": self.table}
        try:
            objs = _objects(await self._run(_doc([{"list": {"table": t}}]), terse=True))
        except NftError as exc:
            if "No such file or directory" in str(exc):
                return TableState()
            raise
        state = TableState.parse(objs, [])
        lists: dict[str, list[dict[str, Any]]] = {}
        for kind, name in (("map", "ports"), ("set", "answer_ports")):
            if name not in state.sets:
                continue
            try:
                lists[name] = _objects(await self._run(_doc([{"list": {kind: {
                    "family": FAMILY, "table": self.table, "name": name}}}])))  # fmt: skip
            except NftError as exc:
                if "No such file or directory" not in str(exc):
                    raise
        return TableState.parse(objs, lists.get("ports", []), lists.get("answer_ports", []))

    async def list_tables(self) -> list[tuple[str, str]]:
        """``(family, name)`` of every table in the namespace (``nft -j list tables``);
        also records :attr:`nft_version` from the output's ``metainfo``."""
        objs = _objects(await self._run(_doc([{"list": {"tables": None}}])))
        for o in objs:
            if "metainfo" in o:
                self.nft_version = _version(str(o["metainfo"].get("version", "")))
        return [(o["table"]["family"], o["table"]["name"]) for o in objs if "table" in o]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Sweep stale tables of dead runs, then create ours. Idempotent.

        Raises:
            NftError: nftables is unusable (no library/binary, not root, kernel refuses).
        """
        if self._closed:
            raise NftError("nftables manager is closed")
        async with self._lock:
            if self._backend is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(1, "coi-nft")
                loop = asyncio.get_running_loop()
                try:
                    self._backend = await loop.run_in_executor(
                        self._pool, _backend, self._backend_kind, self.netns)
                except BaseException:
                    self._pool.shutdown(wait=False)
                    self._pool = None
                    raise
                atexit.register(self.close_sync)
            self.swept = await self._sweep()
            await self._create()
            self._started = True

    async def _create(self) -> None:
        """(Re)create the table and skeleton, then every wanted container chain."""
        assert self._backend is not None
        # See the module docstring: nft <= 1.0.6 prints corrupt JSON for flagged tables.
        self.owned = self.owner and self._backend.can_own and self.nft_version > (1, 0, 6)
        comment = f"coi-watch pid={os.getpid()} start={process_start(os.getpid()) or 0}"
        flags = "flags owner; " if self.owned else ""
        # Text, not JSON: nft 1.0.6's JSON parser drops table flags and comments.
        await self._run(f'add table {FAMILY} {self.table} {{ {flags}comment "{comment}"; }}')
        state = await self.read_state()
        await self._apply(skeleton(self.table, self.log_group, flow_timeout_s=self.flow_timeout_s,
                                   set_size=self.set_size, snaplen_new=self.snaplen_new,
                                   existing=state.sets))
        state = await self.read_state()
        for name in list(self._want):
            await self._apply(self._sync_cmds(name, state))
        self._snapshot = await self.read_state()

    async def _sweep(self) -> list[str]:
        """Delete ``coi_watch_*`` tables whose owner process is gone (or recycled)."""
        gone = []
        for fam, name in await self.list_tables():
            who = owner_of(name)
            if who is None or name == self.table:
                continue  # not ours: Incus's and anyone else's tables are never touched
            pid, start = who
            if process_start(pid) == start:
                continue  # a live coi-watch (another instance)
            try:
                await self._apply([{"delete": {"table": {"family": fam, "name": name}}}])
                gone.append(f"{fam} {name}")
            except NftError:
                pass  # owned by a live socket (EPERM) or already gone: leave it
        return gone

    async def close(self) -> None:
        """Delete our table and release the nftables context. Idempotent."""
        if self._closed:
            return
        if self._pool is None:
            self._finish()
            return
        pool = self._pool
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(pool, self._delete_and_free)
        finally:
            self._finish()

    def close_sync(self) -> None:
        """:meth:`close` for ``atexit`` and other places without a running loop."""
        if self._closed:
            return
        try:
            self._delete_and_free()
        finally:
            self._finish()

    def _delete_and_free(self) -> None:
        with self._run_lock:
            backend, self._backend = self._backend, None
            if backend is None:
                return
            try:
                with contextlib.suppress(NftError):
                    backend.run(_doc([{"delete": {"table": {"family": FAMILY,
                                                            "name": self.table}}}]))
            finally:
                backend.close()

    def _finish(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close_sync)
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        with _MANAGERS_LOCK:
            if _MANAGERS.get(self._slot) is self:
                del _MANAGERS[self._slot]

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    # ------------------------------------------------------------------ containers

    @property
    def containers(self) -> Mapping[str, tuple[str, ...]]:
        """Container -> host veths with rules in the table."""
        return {n: w.veths for n, w in self._want.items()}

    def quarantined(self, name: str) -> Quarantine | None:
        """The quarantine in force for ``name``, if any."""
        w = self._want.get(name)
        return w.quarantine if w else None

    async def attach(self, info: ContainerInfo) -> None:
        """Log ``info``'s egress through NFLOG (nothing to log without a group). Idempotent."""
        w = self._want.get(info.name) or _Want()
        w.veths = tuple(_check_ifname(v) for v in info.host_veths)
        w.observe = self.log_group is not None
        await self._change(info.name, w)

    async def release(self, name: str) -> None:
        """Remove ``name``'s chain and map elements (its quarantine too). Idempotent."""
        await self._change(name, None)

    async def quarantine(
        self, info: ContainerInfo, permitted: Iterable[str], resolvers: Iterable[str] = ()
    ) -> None:
        """Drop ``info``'s egress except to ``permitted`` CIDRs/addresses and DNS to
        ``resolvers``. Idempotent; a second call replaces the permitted lists.

        Raises:
            ValueError: a permitted entry is not an address or network.
            NftError: nftables refused the change.
        """
        q = Quarantine.of(permitted, resolvers)
        w = self._want.get(info.name) or _Want()
        w.veths = tuple(_check_ifname(v) for v in info.host_veths) or w.veths
        w.quarantine = q
        await self._change(info.name, w)

    async def lift_quarantine(self, name: str) -> None:
        """End ``name``'s quarantine (its logging stays as it was). Idempotent."""
        w = self._want.get(name)
        if w is None or w.quarantine is None:
            return
        w.quarantine = None
        await self._change(name, w if w.observe else None)

    async def _change(self, name: str, want: _Want | None) -> None:
        chain_name(name)  # validate before touching anything
        async with self._lock:
            if want is None:
                self._want.pop(name, None)
            else:
                self._want[name] = want
            if not self._started:
                return  # applied by start()
            state = await self.read_state()
            if not state.exists:
                await self._create()  # somebody deleted the table: rebuild everything
                return
            await self._apply(self._sync_cmds(name, state))
            self._snapshot = await self.read_state()

    def _sync_cmds(self, name: str, state: TableState) -> list[dict[str, Any]]:
        """Commands taking ``name``'s chain and ports from ``state`` to what we want."""
        chain = chain_name(name)
        want = self._want.get(name)
        cmds: list[dict[str, Any]] = []
        answers = set(want.veths) if want is not None and want.observe else set()
        for veth, target in state.ports.items():
            if target == chain and (want is None or veth not in want.veths):
                cmds.append(_element(self.table, "delete", veth))
            if target == chain and veth in state.answer_ports and veth not in answers:
                cmds.append(_element(self.table, "delete", veth, name="answer_ports"))
        for veth in answers - state.answer_ports:
            cmds.append(_element(self.table, "add", veth, name="answer_ports"))
        if want is None:
            if chain in state.chains:
                cmds += [_chain(self.table, "flush", chain), _chain(self.table, "delete", chain)]
            return cmds
        cmds += [_chain(self.table, "add", chain), _chain(self.table, "flush", chain)]
        cmds += [_rule(self.table, chain, r) for r in container_rules(want.observe,
                                                                     want.quarantine)]
        for veth in want.veths:
            held = state.ports.get(veth)
            if held == chain:
                continue
            if held is not None:  # the veth name was reused: it is ours now
                cmds.append(_element(self.table, "delete", veth))
            cmds.append(_element(self.table, "add", veth, chain))
        return cmds

    # ------------------------------------------------------------------ tamper

    async def verify(self) -> list[Problem]:
        """Differences between the table and the snapshot taken after our last change."""
        async with self._lock:
            if not self._started or self._snapshot is None:
                return []
            return self._diff(self._snapshot, await self.read_state())

    def _diff(self, want: TableState, have: TableState) -> list[Problem]:
        if not have.exists:
            return [Problem("", "table_missing", self.table)]
        probs: list[Problem] = []
        by_chain = {chain_name(n): n for n in self._want}
        for chain, handles in want.chains.items():
            who = by_chain.get(chain, "")
            if chain not in have.chains:
                probs.append(Problem(who, "chain_missing", chain))
            elif have.chains[chain] != handles:
                probs.append(Problem(who, "rules_changed",
                                     f"{chain}: {len(handles)} rules expected, "
                                     f"{len(have.chains[chain])} found"))
        for chain in have.chains.keys() - want.chains.keys():
            probs.append(Problem("", "chain_added", chain))
        for veth, chain in want.ports.items():
            got = have.ports.get(veth)
            if got != chain:
                probs.append(Problem(by_chain.get(chain, ""),
                                     "port_missing" if got is None else "port_changed",
                                     f"{veth} -> {got or 'nothing'} (expected {chain})"))
        for veth in have.ports.keys() - want.ports.keys():
            probs.append(Problem("", "port_added", f"{veth} -> {have.ports[veth]}"))
        for veth in want.answer_ports - have.answer_ports:
            chain = want.ports.get(veth, "")
            probs.append(Problem(by_chain.get(chain, ""), "answer_port_missing", veth))
        for s in want.sets - have.sets:
            probs.append(Problem("", "set_missing", s))
        return probs

    async def repair(self) -> list[Problem]:
        """Check, and rebuild what was changed; returns what was found (empty: all well)."""
        async with self._lock:
            if not self._started or self._snapshot is None:
                return []
            probs = self._diff(self._snapshot, await self.read_state())
            if not probs:
                return []
            have = await self.read_state()
            cmds: list[dict[str, Any]] = []
            if have.exists:
                # Foreign chains / ports in our table go; then everything is re-written.
                for veth in have.ports.keys() - self._snapshot.ports.keys():
                    cmds.append(_element(self.table, "delete", veth))
                for chain in have.chains.keys() - self._snapshot.chains.keys():
                    cmds += [_chain(self.table, "flush", chain),
                             _chain(self.table, "delete", chain)]
                await self._apply(cmds)
            await self._create()
            return probs

    def affected(self, probs: Iterable[Problem]) -> list[str]:
        """The containers a list of problems concerns (all, for table-wide ones)."""
        names: set[str] = set()
        for p in probs:
            if p.container:
                names.add(p.container)
            else:
                names.update(self._want)
        return sorted(names)


# --------------------------------------------------------------------------- change events

# linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h
NFNLGRP_NFTABLES: Final = 7
NFNL_SUBSYS_NFTABLES: Final = 10
_NFT_MSG: Final[Mapping[int, str]] = {
    0: "newtable", 2: "deltable", 3: "newchain", 5: "delchain", 6: "newrule", 8: "delrule",
    9: "newset", 11: "delset", 12: "newsetelem", 14: "delsetelem", 15: "newgen",
    16: "newobj", 18: "delobj", 22: "newflowtable", 24: "delflowtable",
}  # fmt: skip
# Attribute 1 names the table in every one of these (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE,
# NFTA_RULE_TABLE, NFTA_SET_TABLE, NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE, ...).
_NFTA_TABLE = 1
_FAMILIES: Final[Mapping[int, str]] = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge",
                                       10: "ip6"}


@dataclass(frozen=True, slots=True)
class TableChange:
    """One nftables change notification: ``what`` (``delrule``, ...), family, table, and
    the netlink port id of the socket that made it (``nlmsg_pid``)."""

    what: str
    family: str
    table: str
    portid: int


def parse_table_changes(buf: bytes | memoryview) -> list[TableChange]:
    """The table changes in one ``NFNLGRP_NFTABLES`` datagram (``newgen`` is skipped).

    Raises:
        WireError: bad framing.
    """
    from coi_watch.wire.netlink import iter_attrs

    out: list[TableChange] = []
    for msg in iter_messages(buf):
        subsys, op = split_type(msg.type)
        what = _NFT_MSG.get(op) if subsys == NFNL_SUBSYS_NFTABLES else None
        if what is None or what == "newgen":
            continue
        fam = nfgen_header(msg.payload).family
        table = ""
        for typ, val in iter_attrs(msg.payload, 4):
            if typ == _NFTA_TABLE:
                table = cstring(val)
                break
        out.append(TableChange(what, _FAMILIES.get(fam, str(fam)), table, msg.pid))
    return out


class TableMonitor:
    """A non-blocking socket subscribed to nftables change notifications in ``netns``.

    Read it with ``loop.add_reader`` and :meth:`read`; close it when done.

    Raises:
        NftError: the socket cannot be opened or subscribed (needs CAP_NET_ADMIN).
    """

    def __init__(self, netns: str | None = None) -> None:
        def make() -> socket.socket:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)

        try:
            self.sock = call_in_netns(netns, make) if netns else make()
        except OSError as exc:
            raise NftError(f"cannot open an nfnetlink socket: {exc}") from exc
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 1 << 20)  # SO_RCVBUFFORCE
        try:
            self.sock.bind((0, 1 << (NFNLGRP_NFTABLES - 1)))
            self.sock.setblocking(False)
        except OSError as exc:
            self.sock.close()
            raise NftError(f"cannot subscribe to nftables changes: {exc}") from exc

    def fileno(self) -> int:
        """The socket's fd (for ``add_reader``)."""
        return self.sock.fileno()

    def read(self, limit: int = 64) -> tuple[list[TableChange], bool]:
        """Drain up to ``limit`` datagrams: the changes, and whether some were lost
        (``ENOBUFS``: assume anything may have changed)."""
        changes: list[TableChange] = []
        lost = False
        for _ in range(limit):
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == 105:  # ENOBUFS
                    lost = True
                    continue
                raise
            try:
                changes += parse_table_changes(data)
            except WireError:
                lost = True
        return changes, lost

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
