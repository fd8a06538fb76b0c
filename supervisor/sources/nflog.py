"""The NFLOG source: new connections and DNS queries leaving watched containers.

Strategy: coi-watch's own nftables table (:mod:`coi_watch.nft`) copies the first packet of
every new flow and every DNS query a container sends, matched on its host-side veth in the
host network namespace, to one NFLOG group. One ``NETLINK_NETFILTER`` socket, bound to that
group in the same namespace, receives them; it is read with ``loop.add_reader`` and drained
in bounded batches into a reused buffer. :class:`NflogTracker` (synchronous, socket-free)
turns datagrams into events through the wire layer's fast path, which agrees with its rich
parsers field for field (tested): :func:`coi_watch.wire.nflog.peek`, then
:func:`coi_watch.wire.packet.peek_ip`, then by rule prefix a
:class:`~coi_watch.events.NetConnect` and/or a :class:`~coi_watch.events.DnsQuery`
(:func:`coi_watch.wire.dns.peek_query`; TCP segments to port 53 without payload are
skipped). DNS answers on their way *to* a container (prefix ``coi-dns-ans``) become
:class:`~coi_watch.events.DnsAnswer` events (:func:`coi_watch.wire.dns.parse_response`:
A/AAAA addresses, CNAME targets, the smallest TTL, the rcode), which the allowlist detector
matches names with.

- Cost: one ``recv_into`` per datagram into a buffer allocated once, one copy of the bytes
  read, then tuples and ``unpack_from`` down to the event object; per packet the work is
  the attribute walk, two address strings, the name and the event. Attribution is two
  dict lookups (ifindex -> ``(container, veth)``, then ``ctx.watched``).
- Attribution: by the packet's input interface (the bridge port, ``NFULA_IFINDEX_INDEV``) ->
  veth -> container, kept from ``attach``/``release``; by source address as a fallback.
- Time: ``ts_ns`` is our ``CLOCK_MONOTONIC`` at ``recv`` (NFLOG has no monotonic stamp),
  ``wall_ns`` NFLOG's own ``NFULA_TIMESTAMP``.
- Group: the configured one (``group``, default :data:`DEFAULT_GROUP`) or the next free
  one: a group has one listener per namespace, a second ``BIND`` gets ``EPERM``.
- Latency: the kernel batches packets until ``qthresh`` are queued or ``timeout`` expires
  (defaults 100 and 1 s: p50 92 ms, max 1 s, measured); we send ``qthresh=1``,
  ``timeout=0`` (p50 0.25 ms) and a 16 MiB ``SO_RCVBUFFORCE`` for bursts.
- Loss: ``ENOBUFS`` on ``recv`` and gaps in ``NFULA_SEQ`` are counted
  (``ctx.count_drop``) and reported as ``system`` records (at most one per kind per
  second); a datagram that does not parse is a ``wire_error`` drop and reading continues.
  A gap only shows when a later packet arrives, so losses at the end of a burst would go
  unseen (measured: 18,589 dropped, sequence contiguous, because the socket stays
  congested until drained). After every ENOBUFS episode, and at shutdown, the kernel's own
  drop counter of our socket (``Drops`` in ``/proc/net/netlink``, ``sk_drops``) is read and
  what the gaps have not explained is counted as ``seq_gap`` too, as a credit that later
  gaps consume first, so nothing is counted twice.
- Tamper: nftables change notifications (``NFNLGRP_NFTABLES``, :class:`coi_watch.nft.TableMonitor`)
  for our table, every ``attach`` and a periodic timer trigger a comparison with what we put
  there; a difference publishes :class:`~coi_watch.events.Tamper` for the containers
  concerned and the rules are rebuilt.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from coi_watch.containers import ContainerInfo
from coi_watch.errors import ConfigError, SourceError, WireError
from coi_watch.events import DnsAnswer, DnsQuery, NetConnect, Tamper, wall_from_mono
from coi_watch.netns import call_in_netns
from coi_watch.nft import (
    PREFIX_ANSWER,
    PREFIX_DNS,
    PREFIX_NEW,
    PREFIX_NEW_DNS,
    NftError,
    NftManager,
    TableMonitor,
)
from coi_watch.protocols import SourceContext
from coi_watch.wire import nflog
from coi_watch.wire.dns import parse_response, parse_tcp_response, peek_query, peek_tcp_query
from coi_watch.wire.nfnetlink import NETLINK_NETFILTER, parse_acks
from coi_watch.wire.packet import IPPROTO_TCP, PROTO_NAMES, peek_ip, proto_name

__all__ = (
    "DEFAULT_GROUP",
    "NflogSource",
    "NflogTracker",
    "PortMap",
    "bind_group",
    "open_nflog_socket",
    "socket_drops",
)

DEFAULT_GROUP = 3117
"""NFLOG group tried first (``log group`` takes 0..65535; distros and Incus use none)."""
DEFAULT_RCVBUF = 16 << 20
DEFAULT_COPY_RANGE = 1600
"""Bytes of each packet copied: a whole EDNS answer (1232 bytes, the usual buffer size since
DNS Flag Day 2020) or MTU frame. Queries and first packets are cut lower by their rules'
``snaplen``."""
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # asm-generic/socket.h
_RECV_SIZE = 1 << 18  # > the largest nlbufsiz (128 KiB) the kernel batches into one skb
_BATCH = 256  # datagrams per wake-up before yielding to the loop
_ACK_TIMEOUT = 2.0
_REPORT_EVERY_NS = 1_000_000_000
_SEQ_WINDOW = 1 << 24  # a larger forward jump is a counter reset (rebind), not a loss
_TAMPER_DEBOUNCE_S = 0.05
_RECONCILE_AFTER_S = 0.5  # after an ENOBUFS, read the kernel's drop count this much later

# Rule prefix -> (publish NetConnect, publish DnsQuery)
_PREFIXES: Mapping[str, tuple[bool, bool]] = {
    PREFIX_NEW: (True, False),
    PREFIX_DNS: (False, True),
    PREFIX_NEW_DNS: (True, True),
}


# --------------------------------------------------------------------------- attribution


class PortMap:
    """Interface index / veth name / source address -> container.

    ``set`` replaces everything known about one container; ``drop`` forgets it.
    """

    def __init__(self) -> None:
        self._by_index: dict[int, tuple[str, str]] = {}  # ifindex -> (container, veth)
        self._by_addr: dict[str, str] = {}
        self._of: dict[str, tuple[list[int], list[str]]] = {}
        self.veths: dict[str, str] = {}  # veth -> container

    def set(self, name: str, ports: Mapping[str, int | None], addresses: tuple[str, ...]) -> None:
        """``ports``: veth -> ifindex (``None`` while unknown)."""
        self.drop(name)
        idx = []
        for veth, i in ports.items():
            self.veths[veth] = name
            if i:
                self._by_index[i] = (name, veth)
                idx.append(i)
        addrs = [a.split("/", 1)[0] for a in addresses]
        for a in addrs:
            self._by_addr[a] = name
        self._of[name] = (idx, addrs)

    def drop(self, name: str) -> None:
        """Forget ``name``."""
        idx, addrs = self._of.pop(name, ([], []))
        for i in idx:
            if self._by_index.get(i, ("", ""))[0] == name:
                del self._by_index[i]
        for a in addrs:
            if self._by_addr.get(a) == name:
                del self._by_addr[a]
        for veth in [v for v, c in self.veths.items() if c == name]:
            del self.veths[veth]

    def lookup(self, ifindex: int, src: str) -> tuple[str, str]:
        """``(container, veth)``; the interface decides, the source address only when the
        interface is unknown; ``("", "")`` when neither is known."""
        return self._by_index.get(ifindex) or (self._by_addr.get(src, ""), "")

    def knows_index(self, ifindex: int) -> bool:
        """True when ``ifindex`` is one of our veths."""
        return ifindex in self._by_index


# --------------------------------------------------------------------------- tracker


class NflogTracker:
    """Datagrams in, events out; synchronous so tests and benchmarks can feed it directly.

    ``stats`` counts ``datagrams``, ``packets``, ``published``, ``connects``, ``dns``,
    ``answers``,
    ``foreign`` (a prefix not ours), ``unattributed``, ``unwatched``, ``bad_packet``,
    ``dns_malformed``, ``tcp_no_payload``, ``wire_errors``, ``enobufs``, ``seq_lost``,
    ``socket_drops`` (the kernel's counter, as last read).
    ``on_unknown_index`` is called (rate-limited) with an ifindex that is not mapped.
    """

    def __init__(
        self,
        ctx: SourceContext,
        ports: PortMap,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.ctx = ctx
        self.ports = ports
        self.stats: dict[str, int] = dict.fromkeys(
            ("datagrams", "packets", "published", "connects", "dns", "answers", "foreign",
             "unattributed",
             "unwatched", "bad_packet", "dns_malformed", "tcp_no_payload", "wire_errors",
             "enobufs", "seq_lost", "socket_drops"), 0)  # fmt: skip
        self.on_unknown_index: Callable[[int], None] | None = None
        self._clock = clock
        self._last_seq: int | None = None
        self._lost_reported = 0  # losses handed to count_drop (gaps net of credit, tails)
        self._credit = 0  # tail losses reported before the gap that will show them
        self._kernel_base: int | None = None
        self._reported: dict[str, int] = {}
        self._suppressed: dict[str, int] = {}

    # ------------------------------------------------------------------ input

    def feed(self, data: bytes | bytearray | memoryview, now_ns: int | None = None) -> None:
        """Handle one datagram read at ``now_ns`` (monotonic; default: now). ``data`` is
        copied once if it is not ``bytes`` (a view of the reused receive buffer)."""
        ts = self._clock() if now_ns is None else now_ns
        self.stats["datagrams"] += 1
        buf = data if type(data) is bytes else bytes(data)
        try:
            packets = nflog.peek(buf)
        except WireError as exc:
            self.stats["wire_errors"] += 1
            self.ctx.count_drop("", "nflog", "wire_error", 1)
            self._report("wire_error", "", {"error": str(exc), "len": len(buf),
                                            "head": buf[:128].hex()})
            return
        for pkt in packets:
            self._handle(pkt, ts)

    def lost_enobufs(self) -> None:
        """``recv`` failed with ``ENOBUFS``: the kernel dropped packets for this socket."""
        self.stats["enobufs"] += 1
        self.ctx.count_drop("", "nflog", "enobufs", 1)
        self._report("enobufs", "", {"detail": "socket receive buffer overflowed; the kernel "
                                               "dropped logged packets (seq_gap says how many)"})

    def handle(self, pkt: nflog.NflogPacket, ts_ns: int) -> None:
        """Handle one logged packet in its rich form (:meth:`feed` takes the fast path)."""
        self._handle((pkt.prefix, pkt.payload, pkt.wall_ns, pkt.seq, pkt.indev, pkt.physindev,
                      pkt.outdev, pkt.physoutdev), ts_ns)  # fmt: skip

    def _handle(self, pkt: nflog.NflogPeek, ts_ns: int) -> None:
        prefix, payload, wall_ns, seq, indev, physindev, _, _ = pkt
        stats = self.stats
        stats["packets"] += 1
        if seq is not None:
            # NFULA_SEQ: per-instance counter, incremented for every packet logged to the
            # group (nfnetlink_log.c, __build_packet_message: inst->seq++): a jump is a loss.
            last, self._last_seq = self._last_seq, seq
            if last is not None and seq != (last + 1) & 0xFFFFFFFF:
                self._seq_gap(last, seq)
        kinds = _PREFIXES.get(prefix)
        if kinds is None:
            if prefix == PREFIX_ANSWER:
                self._answer(pkt, ts_ns)
            else:
                stats["foreign"] += 1
            return
        # For the bridge family with br_netfilter built in, nfnetlink_log puts the bridge
        # *port* (our veth) in NFULA_IFINDEX_PHYSINDEV and the bridge in NFULA_IFINDEX_INDEV
        # (__build_packet_message, net/netfilter/nfnetlink_log.c); otherwise INDEV is the port.
        port = physindev or indev
        try:
            family, proto, src, dst, sport, dport, l4 = peek_ip(payload)
        except WireError as exc:
            # A frame the container sent that nftables took for IP but is not: its event is
            # lost, and the container is the one to blame.
            who, _ = self.ports.lookup(port, "")
            stats["bad_packet"] += 1
            self.ctx.count_drop(who, "nflog", "bad_packet", 1)
            self._report("bad_packet", who, {"error": str(exc), "head": payload[:64].hex()})
            return
        container, veth = self.ports.lookup(port, src)
        if not container:
            stats["unattributed"] += 1
            if port and self.on_unknown_index is not None:
                self.on_unknown_index(port)
            self._report("unattributed", "", {"ifindex": port, "src": src, "dst": dst})
            return
        if not self.ctx.watched(container):
            stats["unwatched"] += 1
            return
        wall = wall_ns or wall_from_mono(ts_ns)
        pname = PROTO_NAMES.get(proto) or proto_name(proto)
        new, dns = kinds
        if new:
            stats["connects"] += 1
            self._publish(NetConnect(
                ts_ns=ts_ns, wall_ns=wall, container=container, family=family, proto=pname,
                src=src, sport=sport, dst=dst, dport=dport, indev=veth,
                prefix=prefix))  # fmt: skip
        if not dns:
            return
        if proto == IPPROTO_TCP and not l4:
            stats["tcp_no_payload"] += 1  # ACK, FIN, RST of a DNS-over-TCP stream
            return
        try:
            qid, qname, qtype = peek_tcp_query(l4) if proto == IPPROTO_TCP else peek_query(l4)
        except WireError as exc:
            # Not DNS, a cut-off message, or a TCP segment in the middle of one: port 53
            # carrying something else is worth a record (tunnels), never a crash.
            stats["dns_malformed"] += 1
            self._report("dns_malformed", container, {
                "error": str(exc), "proto": pname, "src": src, "dst": dst, "dport": dport,
                "len": len(l4), "head": l4[:64].hex()})  # fmt: skip
            return
        stats["dns"] += 1
        stats["published"] += 1
        self.ctx.publish(DnsQuery(
            ts_ns=ts_ns, wall_ns=wall, container=container, family=family, proto=pname,
            src=src, sport=sport, dst=dst, dport=dport, qid=qid, qname=qname,
            qtype=qtype))  # fmt: skip

    def _answer(self, pkt: nflog.NflogPeek, ts_ns: int) -> None:
        # On the way out of the bridge: the veth is the *output* port (PHYSOUTDEV with
        # br_netfilter, like PHYSINDEV on the way in), the container the destination.
        _, payload, wall_ns, _, _, _, outdev, physoutdev = pkt
        try:
            family, proto, src, dst, sport, dport, l4 = peek_ip(payload)
        except WireError as exc:
            self.stats["bad_packet"] += 1
            self._report("bad_packet", "", {"error": str(exc), "head": payload[:64].hex()})
            return
        container, _ = self.ports.lookup(physoutdev or outdev, dst)
        if not container:
            self.stats["unattributed"] += 1
            return
        if not self.ctx.watched(container):
            self.stats["unwatched"] += 1
            return
        if proto == IPPROTO_TCP and not l4:
            self.stats["tcp_no_payload"] += 1
            return
        pname = proto_name(proto)
        try:
            ans = parse_tcp_response(l4) if proto == IPPROTO_TCP else parse_response(l4)
        except WireError as exc:
            self.stats["dns_malformed"] += 1
            self._report("dns_malformed", container, {
                "error": str(exc), "proto": pname, "src": src, "dst": dst, "sport": sport,
                "direction": "in"})  # fmt: skip
            return
        self.stats["answers"] += 1
        self._publish(DnsAnswer(
            ts_ns=ts_ns, wall_ns=wall_ns or wall_from_mono(ts_ns), container=container,
            family=family, proto=pname, src=src, sport=sport, dst=dst, dport=dport,
            qid=ans.qid, qname=ans.qname, qtype=ans.qtype, rcode=ans.rcode,
            addresses=ans.addresses, cnames=ans.cnames, ttl=ans.ttl))  # fmt: skip

    # ------------------------------------------------------------------ helpers

    def _publish(self, ev: Any) -> None:
        self.stats["published"] += 1
        self.ctx.publish(ev)

    def _seq_gap(self, last: int, seq: int) -> None:
        gap = (seq - last - 1) & 0xFFFFFFFF
        if 0 < gap < _SEQ_WINDOW:
            self.stats["seq_lost"] += gap
            known = min(gap, self._credit)
            self._credit -= known
            if gap > known:
                self._lost_reported += gap - known
                self.ctx.count_drop("", "nflog", "seq_gap", gap - known)
            self._report("seq_gap", "", {"lost": gap, "seq": seq, "already_counted": known})

    def kernel_drops(self, total: int) -> None:
        """The kernel's drop counter of our socket (``sk_drops``; the first call sets the
        base). Losses it shows beyond what was counted are counted now (``seq_gap``)."""
        self.stats["socket_drops"] = total
        if self._kernel_base is None:
            self._kernel_base = total
            return
        unexplained = total - self._kernel_base - self._lost_reported
        if unexplained > 0:
            self._lost_reported += unexplained
            self._credit += unexplained
            self.ctx.count_drop("", "nflog", "seq_gap", unexplained)
            self._report("seq_gap", "", {"lost": unexplained, "socket_drops": total,
                                         "detail": "dropped at the end of a burst: no later "
                                                   "packet showed the gap"})

    def _report(self, kind: str, container: str, detail: dict[str, Any]) -> None:
        """A ``system`` record, at most one per kind per second (the rest are counted)."""
        now = self._clock()
        last = self._reported.get(kind)
        if last is not None and now - last < _REPORT_EVERY_NS:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._reported[kind] = now
        detail = {"source": "nflog", **detail, "suppressed": self._suppressed.pop(kind, 0)}
        self.ctx.system(container, kind, detail)


# --------------------------------------------------------------------------- socket


def open_nflog_socket(netns: str | None = None, rcvbuf: int = DEFAULT_RCVBUF) -> socket.socket:
    """A blocking ``NETLINK_NETFILTER`` socket in ``netns`` (host when ``None``), not yet
    bound to a group.

    Raises:
        SourceError: the socket cannot be created (not root, no ``CONFIG_NETFILTER_NETLINK``).
    """
    def make() -> socket.socket:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)

    try:
        sock = call_in_netns(netns, make) if netns else make()
    except OSError as exc:
        raise SourceError(f"NFLOG unavailable (socket(AF_NETLINK, NETLINK_NETFILTER): {exc})"
                          ) from exc
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, 0))
    except OSError as exc:
        sock.close()
        raise SourceError(f"cannot bind an nfnetlink socket: {exc}") from exc
    return sock


def socket_drops(sock: socket.socket, netns: str | None = None) -> int | None:
    """The kernel's drop counter (``sk_drops``) of a netlink socket: the ``Drops`` column of
    ``/proc/net/netlink`` (``netlink_seq_show``, net/netlink/af_netlink.c) on the row whose
    inode is the socket's, read in the socket's namespace. ``None`` if not found."""
    inode = os.fstat(sock.fileno()).st_ino

    def read() -> str:
        with open("/proc/thread-self/net/netlink") as f:
            return f.read()

    try:
        text = call_in_netns(netns, read) if netns else read()
    except OSError:
        return None
    for line in text.splitlines()[1:]:
        cols = line.split()
        # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
        if len(cols) >= 10 and cols[9] == str(inode):
            try:
                return int(cols[8])
            except ValueError:
                return None
    return None


def _request(sock: socket.socket, msg: bytes, seq: int) -> int:
    """Send one request and wait for its ack; the errno (0 = accepted)."""
    sock.settimeout(_ACK_TIMEOUT)
    try:
        sock.send(msg)
        deadline = time.monotonic() + _ACK_TIMEOUT
        while time.monotonic() < deadline:
            for ack in parse_acks(sock.recv(65536)):
                if ack.seq == seq:
                    return ack.errno
    except TimeoutError:
        pass
    except (OSError, WireError) as exc:
        raise SourceError(f"NFLOG configuration failed: {exc}") from exc
    raise SourceError(f"the kernel did not answer an NFLOG request within {_ACK_TIMEOUT:g} s")


def bind_group(
    sock: socket.socket,
    group: int,
    *,
    tries: int = 64,
    copy_range: int = DEFAULT_COPY_RANGE,
    qthresh: int = 1,
    timeout_cs: int = 0,
    nlbufsiz: int | None = None,
) -> int:
    """Bind ``sock`` to ``group`` or the next free one (``EPERM``: another listener has it)
    and configure it; returns the group bound.

    Raises:
        SourceError: no free group among ``tries``, or the kernel refused the configuration.
    """
    seq = 1
    for g in range(group, group + tries):
        g &= 0xFFFF
        seq += 1
        err = _request(sock, nflog.bind_message(g, seq=seq), seq)
        if err == errno.EPERM:
            continue
        if err:
            raise SourceError(f"NFLOG bind to group {g} refused: {errno.errorcode.get(err, err)}")
        seq += 1
        err = _request(sock, nflog.config_message(
            g, copy_range=copy_range, qthresh=qthresh, timeout_cs=timeout_cs,
            flags=nflog.NFULNL_CFG_F_SEQ, nlbufsiz=nlbufsiz, seq=seq), seq)  # fmt: skip
        if err:
            raise SourceError(f"NFLOG group {g} configuration refused: "
                              f"{errno.errorcode.get(err, err)}")
        return g
    raise SourceError(f"no free NFLOG group in {group}..{group + tries - 1} (all taken)")


# --------------------------------------------------------------------------- source


class NflogSource:
    """The ``nflog`` source (:class:`coi_watch.protocols.Source`, ``ContainerAware``).

    Config keys: ``group`` (first NFLOG group tried, default :data:`DEFAULT_GROUP`),
    ``group_tries`` (64), ``copy_range`` (1600), ``qthresh`` (1), ``timeout_cs`` (0),
    ``nlbufsiz`` (kernel default), ``rcvbuf`` (16 MiB), ``flow_timeout_s`` (60: a flow is
    reported again after this long), ``set_size`` (65536 flows remembered),
    ``nft_backend`` (``auto``, ``lib``, ``cli``), ``owner`` (false; true asks for an owned
    table where nft > 1.0.6, see :mod:`coi_watch.nft`), ``verify_interval_s`` (30: periodic
    tamper check; 0 = off), ``netns`` (a namespace path; default the host's, for tests).
    :attr:`nft` is the table manager once running (quarantine uses it); :attr:`group` the
    group bound.
    """

    name: ClassVar[str] = "nflog"

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        """Build from the ``[sources.nflog]`` table (keys above).

        Raises:
            ConfigError: a ``copy_range`` too small for DNS names.
        """
        cfg = dict(config or {})
        self.first_group = int(cfg.get("group", DEFAULT_GROUP))
        self.group_tries = int(cfg.get("group_tries", 64))
        self.copy_range = int(cfg.get("copy_range", DEFAULT_COPY_RANGE))
        self.qthresh = int(cfg.get("qthresh", 1))
        self.timeout_cs = int(cfg.get("timeout_cs", 0))
        nlbufsiz = cfg.get("nlbufsiz")
        self.nlbufsiz = None if nlbufsiz is None else int(nlbufsiz)
        self.rcvbuf = int(cfg.get("rcvbuf", DEFAULT_RCVBUF))
        self.flow_timeout_s = int(cfg.get("flow_timeout_s", 60))
        self.set_size = int(cfg.get("set_size", 65536))
        self.backend = str(cfg.get("nft_backend", "auto"))
        self.owner = bool(cfg.get("owner", False))
        self.verify_interval_s = float(cfg.get("verify_interval_s", 30.0))
        self.netns: str | None = cfg.get("netns") or None
        if self.copy_range < 400:
            raise ConfigError("sources.nflog.copy_range below 400 bytes cuts DNS names off")
        self.ports = PortMap()
        self.tracker: NflogTracker | None = None
        self.nft: NftManager | None = None
        self.group: int | None = None
        self._infos: dict[str, ContainerInfo] = {}
        self._ctx: SourceContext | None = None
        self._tamper_task: asyncio.Task[None] | None = None
        self._tamper_handle: asyncio.TimerHandle | None = None
        self._last_refresh = 0.0

    # ------------------------------------------------------------------ containers

    async def attach(self, info: ContainerInfo) -> None:
        """Log ``info``'s egress (rules on its host veths). Idempotent; a container whose
        veth is gone is reported with ``ctx.system``, not raised."""
        self._infos[info.name] = info
        self._map(info)
        nft, ctx = self.nft, self._ctx
        if nft is None or ctx is None or nft.closed:
            return  # applied when run() starts
        await self._check_tamper()  # the cheap check the attach path owes anyway
        try:
            await nft.attach(info)
        except (NftError, ValueError) as exc:
            ctx.system(info.name, "nflog_attach_failed", {"source": "nflog", "error": str(exc)})

    async def release(self, name: str) -> None:
        """Remove ``name``'s rules and mapping. Idempotent."""
        self._infos.pop(name, None)
        self.ports.drop(name)
        if self.nft is not None and not self.nft.closed:
            with contextlib.suppress(NftError, ValueError):
                await self.nft.release(name)

    def _ifindex(self, veth: str) -> int | None:
        def look() -> int:
            return socket.if_nametoindex(veth)

        try:
            return call_in_netns(self.netns, look) if self.netns else look()
        except OSError:
            return None

    def _map(self, info: ContainerInfo) -> None:
        ports = {v: self._ifindex(v) for v in info.host_veths}
        self.ports.set(info.name, ports, info.addresses)
        missing = [v for v, i in ports.items() if i is None]
        if missing and self._ctx is not None:
            self._ctx.system(info.name, "nflog_veth_missing", {"source": "nflog",
                                                               "veths": missing})

    def _unknown_index(self, ifindex: int) -> None:
        # A veth recreated under a new index: look the names up again, at most once a second.
        now = time.monotonic()
        if now - self._last_refresh < 1.0:
            return
        self._last_refresh = now
        for info in self._infos.values():
            self._map(info)

    # ------------------------------------------------------------------ tamper

    def _schedule_check(self) -> None:
        loop = asyncio.get_running_loop()
        if self._tamper_handle is None:
            self._tamper_handle = loop.call_later(_TAMPER_DEBOUNCE_S, self._start_check)

    def _start_check(self) -> None:
        self._tamper_handle = None
        if self._tamper_task is None or self._tamper_task.done():
            self._tamper_task = asyncio.ensure_future(self._check_tamper())

    async def _check_tamper(self) -> None:
        nft, ctx = self.nft, self._ctx
        if nft is None or ctx is None or nft.closed:
            return
        try:
            probs = await nft.repair()
        except NftError as exc:
            ctx.system("", "nflog_verify_failed", {"source": "nflog", "error": str(exc)})
            return
        if not probs:
            return
        # One event per container and kind of loss (the tamper detector keys on
        # source/what): table_missing, chain_missing, rules_changed, port_missing, ...
        ts = time.monotonic_ns()
        seen: set[tuple[str, str]] = set()
        for p in probs:
            for name in nft.affected([p]):
                if (name, p.what) in seen:
                    continue
                seen.add((name, p.what))
                detail = "; ".join(q.detail for q in probs if q.what == p.what and q.detail)
                ctx.publish(Tamper(ts_ns=ts, wall_ns=wall_from_mono(ts), container=name,
                                   source="nflog", what=p.what,
                                   detail=f"bridge {nft.table}: {detail} (rebuilt)"))
        ctx.system("", "nflog_tamper", {"source": "nflog", "table": nft.table,
                                        "problems": [[p.container, p.what, p.detail]
                                                     for p in probs], "repaired": True})

    async def _periodic_check(self) -> None:
        while True:
            await asyncio.sleep(self.verify_interval_s)
            await self._check_tamper()

    # ------------------------------------------------------------------ run

    async def run(self, ctx: SourceContext, ready: asyncio.Future[None]) -> None:
        """Bind a group, create the table, set ``ready``, then read until cancelled; the
        table and socket are removed on the way out (cancellation included).

        Raises:
            SourceError: no NFLOG socket or group, or nftables unusable.
        """
        loop = asyncio.get_running_loop()
        self._ctx = ctx
        tracker = self.tracker = NflogTracker(ctx, self.ports)
        tracker.on_unknown_index = self._unknown_index
        sock = await loop.run_in_executor(None, open_nflog_socket, self.netns, self.rcvbuf)
        nft: NftManager | None = None
        monitor: TableMonitor | None = None
        periodic: asyncio.Task[None] | None = None
        failed: asyncio.Future[None] = loop.create_future()
        buf = bytearray(_RECV_SIZE)
        view = memoryview(buf)
        reconcile: asyncio.TimerHandle | None = None

        def read_drops() -> None:
            nonlocal reconcile
            reconcile = None
            total = socket_drops(sock, self.netns)
            if total is not None:
                tracker.kernel_drops(total)

        def fail(exc: BaseException) -> None:
            loop.remove_reader(sock.fileno())
            if not failed.done():
                failed.set_exception(exc)

        def on_readable() -> None:
            nonlocal reconcile
            now = time.monotonic_ns()
            for _ in range(_BATCH):
                try:
                    n = sock.recv_into(buf)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        tracker.lost_enobufs()
                        if reconcile is None:
                            reconcile = loop.call_later(_RECONCILE_AFTER_S, read_drops)
                        continue
                    fail(SourceError(f"NFLOG recv failed: {exc}"))
                    return
                try:
                    tracker.feed(view[:n], now)
                except Exception as exc:  # a bug: surface it through run()
                    fail(exc)
                    return
                now = time.monotonic_ns()

        def on_change() -> None:
            assert monitor is not None and nft is not None
            try:
                changes, lost = monitor.read()
            except OSError as exc:
                loop.remove_reader(monitor.fileno())
                ctx.system("", "nflog_monitor_failed", {"source": "nflog", "error": str(exc)})
                return
            if lost or any(c.table == nft.table for c in changes):
                self._schedule_check()

        try:
            self.group = await loop.run_in_executor(None, lambda: bind_group(
                sock, self.first_group, tries=self.group_tries, copy_range=self.copy_range,
                qthresh=self.qthresh, timeout_cs=self.timeout_cs, nlbufsiz=self.nlbufsiz))
            sock.setblocking(False)
            read_drops()  # the base of the kernel's drop counter
            nft = self.nft = NftManager(
                self.group, netns=self.netns, backend=self.backend, owner=self.owner,
                flow_timeout_s=self.flow_timeout_s, set_size=self.set_size)  # fmt: skip
            await nft.start()
            if nft.swept:
                ctx.system("", "nflog_stale_tables_removed", {"source": "nflog",
                                                              "tables": nft.swept})
            monitor = TableMonitor(self.netns)
            loop.add_reader(monitor.fileno(), on_change)
            loop.add_reader(sock.fileno(), on_readable)
            for info in list(self._infos.values()):
                self._map(info)
                try:
                    await nft.attach(info)
                except (NftError, ValueError) as exc:
                    ctx.system(info.name, "nflog_attach_failed", {"source": "nflog",
                                                                  "error": str(exc)})
            if self.verify_interval_s > 0:
                periodic = asyncio.ensure_future(self._periodic_check())
            ctx.system("", "nflog_started", {"source": "nflog", "group": self.group,
                                             "table": f"bridge {nft.table}",
                                             "owned": nft.owned})
            if not ready.done():
                ready.set_result(None)
            await failed
        finally:
            with contextlib.suppress(Exception):
                loop.remove_reader(sock.fileno())
            if reconcile is not None:
                reconcile.cancel()
            with contextlib.suppress(OSError):
                read_drops()  # losses of a last burst must not go unreported
            for task in (periodic, self._tamper_task):
                if task is not None:
                    task.cancel()
            if self._tamper_handle is not None:
                self._tamper_handle.cancel()
                self._tamper_handle = None
            if monitor is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(monitor.fileno())
                monitor.close()
            if nft is not None:
                await asyncio.shield(nft.close())
            if self.group is not None:
                with contextlib.suppress(OSError):
                    sock.send(nflog.unbind_message(self.group))
            sock.close()
            self._ctx = None
