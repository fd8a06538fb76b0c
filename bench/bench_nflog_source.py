"""Throughput and latency of the NFLOG source, kernel to event (needs root).

Run: ``python bench/bench_nflog_source.py [seconds] [--json]``. The bench builds its own
world and removes it: namespace ``h`` (bridge ``br0``, ``198.18.N.1``, coi-watch's table and
NFLOG socket, i.e. :class:`coi_watch.sources.nflog.NflogSource` with ``netns``) and namespace
``c`` (the "container", ``198.18.N.2``) on a bridge port. Nothing leaves these namespaces.

The numbers:

- ``tracker`` (the processing step): :class:`~coi_watch.sources.nflog.NflogTracker.feed`
  alone over DNS-query datagrams shaped as this kernel sends them from the bridge
  (:func:`kernel_datagram`: the attributes and order of a capture from this lab), with
  consecutive ``NFULA_SEQ``: NFLOG walk + IP + DNS name + attribution + ``DnsQuery``, no
  socket, no event loop. Events/s per core: best of several rounds of this process's CPU
  time (``time.process_time``), so other load on the machine does not distort it;
- ``sustained`` (end to end, flat out): a sender *process* in ``c`` blasts DNS queries with
  random ~85-character names at full speed for ``seconds``; every one is logged by the
  ``observe`` chain, and the source turns them into :class:`~coi_watch.events.DnsQuery`
  events on this process's event loop (``recv_into``, parse, events, the bench's counting
  ``publish``). Reported: queries sent, events received, losses the source itself counted
  (``seq_lost``: ``NFULA_SEQ`` gaps plus the kernel's socket drop count after a burst;
  ``ENOBUFS`` episodes), what was sent but never logged (dropped before the bridge hook),
  events/s from the first to the last event, and the reader's own cost: packets per
  CPU-second of this process (user + system, i.e. ``recv`` included) over the run, which is
  the one-core rate of the reader whatever the sender takes. The sender (a Python loop, and
  the kernel's bridge, nftables and NFLOG work in its context) needs most of a core, and the
  machine's cores are shared with whatever else runs, so the wall-clock events/s is a
  floor, and the per-CPU-second figure is the reader's capacity;
- ``paced``: the same at fixed rates (:data:`PACED`): the losses show the sustainable rate;
- ``latency``: 400 queries at ~200/s from a socket in ``c``, send time to the event's
  ``ts_ns`` (both ``CLOCK_MONOTONIC``), p50/p90/p99/max in ms.

``notes/kernel-sources.md`` measured a bare probe at p50 0.25 ms (``QTHRESH=1``) and
~73-80k pkt/s sustained with DNS parsing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from coi_watch.containers import ContainerInfo, Nic
from coi_watch.events import DnsQuery, Event
from coi_watch.netns import socket_in_netns
from coi_watch.nft import PREFIX_DNS
from coi_watch.protocols import SourceContext
from coi_watch.sources.nflog import NflogSource, NflogTracker, PortMap
from coi_watch.wire.nfnetlink import NFNL_SUBSYS_ULOG, message, nla

__all__ = ("main",)

SETTINGS = {
    "qthresh=1 (default)": {"qthresh": 1, "timeout_cs": 0},
    "qthresh=64 timeout=1cs": {"qthresh": 64, "timeout_cs": 1, "nlbufsiz": 131072},
}
PACED = (10_000, 20_000)
"""Sender rates (queries/s) for the paced runs: is nothing lost at this rate?"""
MAX_SENT = 5_000_000  # the sender stops at this count or the deadline, whichever is first

SENDER = r"""
import os, random, socket, string, struct, sys, time
dst, seconds, cap, rate = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
alpha = (string.ascii_lowercase + string.digits).encode()
pool = []
for i in range(4096):
    labels = [bytes(random.choice(alpha) for _ in range(n)) for n in (40, 30, 6)] + [b"example"]
    name = b"".join(bytes([len(l)]) + l for l in labels) + b"\0"
    pool.append(struct.pack("!HHHHHH", i, 0x100, 1, 0, 0, 0) + name + struct.pack("!HH", 16, 1))
start = time.monotonic()
sent, end = 0, start + seconds
while sent < cap and time.monotonic() < end:
    if rate:  # paced: 64 at a time, on schedule
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    for q in pool[:64 if rate else 256]:
        try:
            s.sendto(q, (dst, 53))
            sent += 1
        except BlockingIOError:
            pass
    pool.append(pool.pop(0))
print(sent, time.process_time(), flush=True)
"""


def dns_query(qid: int, name: str) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x100, 1, 0, 0, 0) + labels + struct.pack("!HH", 16, 1)


class Lab:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.n = secrets.randbelow(256)
        self.h, self.c, self.veth, self.cveth = (f"coi-bh-{tag}", f"coi-bc-{tag}", f"vh{tag}",
                                                 f"vc{tag}")
        self.h_ip, self.c_ip = f"198.18.{self.n}.1", f"198.18.{self.n}.2"
        self.made: list[str] = []

    def sh(self, *cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)

    def up(self) -> None:
        for ns in (self.h, self.c):
            self.sh("ip", "netns", "add", ns)
            self.made.append(ns)
        self.sh("ip", "-n", self.h, "link", "add", "br0", "type", "bridge")
        self.sh("ip", "link", "add", self.cveth, "netns", self.c, "type", "veth", "peer", "name",
                self.veth, "netns", self.h)
        self.sh("ip", "-n", self.h, "link", "set", self.veth, "master", "br0")
        self.sh("ip", "-n", self.h, "addr", "add", f"{self.h_ip}/24", "dev", "br0")
        self.sh("ip", "-n", self.c, "addr", "add", f"{self.c_ip}/24", "dev", self.cveth)
        for ns, dev in ((self.h, "br0"), (self.h, self.veth), (self.c, self.cveth)):
            self.sh("ip", "-n", ns, "link", "set", dev, "up")
        time.sleep(0.1)
        for _ in range(100):
            out = subprocess.run(["bridge", "-n", self.h, "link", "show", "dev", self.veth],
                                 capture_output=True, text=True, check=False).stdout
            if "forwarding" in out:
                break
            time.sleep(0.05)

    def down(self) -> None:
        while self.made:
            subprocess.run(["ip", "netns", "del", self.made.pop()], check=False)

    def info(self) -> ContainerInfo:
        return ContainerInfo(name="bench", init_pid=0,
                             nics=(Nic(name="eth0", host_name=self.veth, addresses=(self.c_ip,)),))


class Counter:
    def __init__(self) -> None:
        self.events = 0
        self.first_ns = self.last_ns = 0
        self.last: list[Event] = []
        self.keep = False
        self.drops: dict[str, int] = {}

    def publish(self, ev: Event) -> None:
        self.events += 1
        self.last_ns = ev.ts_ns
        if not self.first_ns:
            self.first_ns = ev.ts_ns
        if self.keep:
            self.last.append(ev)

    def ctx(self) -> SourceContext:
        def drop(c: str, s: str, k: str, n: int) -> None:
            self.drops[k] = self.drops.get(k, 0) + n

        return SourceContext(publish=self.publish, watched=lambda c: True,
                             system=lambda c, k, d: None, count_drop=drop)


@contextlib.asynccontextmanager
async def source(lab: Lab, counter: Counter, cfg: dict[str, Any]) -> AsyncIterator[NflogSource]:
    src = NflogSource({"netns": f"/run/netns/{lab.h}", "group": 41000 + lab.n,
                       "verify_interval_s": 0, **cfg})
    await src.attach(lab.info())
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(src.run(counter.ctx(), ready))
    try:
        await asyncio.wait_for(asyncio.shield(ready), 10)
        yield src
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def kernel_datagram(seq: int, *, prefix: str = PREFIX_DNS, port: int = 5) -> bytes:
    """One DNS query as nfnetlink_log sends it for a bridge-family ``log`` rule (Linux 6.18,
    captured in this lab): the same attributes in the same order, query name as the sender's
    (40 + 30 + 6 characters + ``example``)."""
    q = dns_query(7, "a" * 40 + "." + "b" * 30 + ".cdefgh.example")
    l4 = struct.pack("!HHHH", 40000, 53, 8 + len(q), 0) + q
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000, 64, 17, 0,
                     socket.inet_aton("198.18.0.2"), socket.inet_aton("198.18.0.1")) + l4
    mac_c, mac_h = bytes.fromhex("927cb3d3b3b5"), bytes.fromhex("c6a75103b6f1")
    now = time.time_ns() // 1000
    attrs = (nla(1, struct.pack("!HBx", 0x0800, 0))  # NFULA_PACKET_HDR: IPv4, prerouting
             + nla(10, prefix.encode() + b"\0")  # NFULA_PREFIX
             + nla(6, struct.pack("!I", port))  # NFULA_IFINDEX_PHYSINDEV: the veth
             + nla(4, struct.pack("!I", 2))  # NFULA_IFINDEX_INDEV: the bridge
             + nla(8, struct.pack("!H2x8s", 6, mac_c))  # NFULA_HWADDR
             + nla(15, struct.pack("!H", 1))  # NFULA_HWTYPE: ARPHRD_ETHER
             + nla(17, struct.pack("!H", 14))  # NFULA_HWLEN
             + nla(16, mac_h + mac_c + b"\x08\x00")  # NFULA_HWHEADER
             + nla(3, struct.pack("!QQ", now // 10**6, now % 10**6))  # NFULA_TIMESTAMP
             + nla(11, bytes(4)) + nla(14, bytes(4))  # NFULA_UID, NFULA_GID
             + nla(12, struct.pack("!I", seq))  # NFULA_SEQ
             + nla(21, mac_h + mac_c + b"\x08\x00")  # NFULA_L2HDR
             + nla(9, ip))  # NFULA_PAYLOAD
    return message(NFNL_SUBSYS_ULOG, 0, attrs, family=7, res_id=1, flags=0)


def bench_tracker(seconds: float, rounds: int = 10, per_round: int = 20_000) -> float:
    """Events/s per core through the tracker alone: best round of CPU time."""
    frames = [kernel_datagram(seq) for seq in range(per_round)]
    ports = PortMap()
    ports.set("bench", {"v": 5}, ())
    best, deadline = 0.0, time.monotonic() + seconds
    for r in range(rounds):
        counter = Counter()
        tr = NflogTracker(counter.ctx(), ports)
        feed = tr.feed
        t0 = time.process_time()
        for f in frames:
            feed(f, 1)
        best = max(best, counter.events / (time.process_time() - t0))
        assert counter.events == per_round and tr.stats["seq_lost"] == 0
        if r and time.monotonic() > deadline:
            break
    return best


async def bench_sustained(
    lab: Lab, cfg: dict[str, Any], seconds: float, rate: float = 0.0
) -> dict[str, Any]:
    counter = Counter()
    async with source(lab, counter, cfg) as src:
        assert src.tracker is not None
        packets0, cpu0 = src.tracker.stats["packets"], time.process_time()
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", lab.c, sys.executable, "-c", SENDER, lab.h_ip, str(seconds),
            str(MAX_SENT), str(rate), stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
        sent_text, sender_cpu = [*out.decode().split(), "0", "0"][:2]
        sent = int(sent_text)
        for _ in range(200):  # drain what is queued (bounded: 2 s)
            before = counter.events
            await asyncio.sleep(0.01)
            if counter.events == before and counter.events >= sent:
                break
        cpu = time.process_time() - cpu0  # this process: the reader, its loop, recv
        stats = dict(src.tracker.stats)
    window = max(counter.last_ns - counter.first_ns, 1) / 1e9  # first to last event
    lost = counter.drops.get("seq_gap", 0)  # sequence gaps + the kernel's tail drop count
    return {"sent": sent, "events": counter.events, "seq_lost": lost,
            "enobufs": stats.get("enobufs", 0), "socket_drops": stats.get("socket_drops", 0),
            "seconds": round(window, 2),
            "events_per_s": round(counter.events / window),
            "sent_per_s": round(sent / seconds),
            "reader_cpu_s": round(cpu, 2),
            # The sender's own CPU (its loop, and the kernel's UDP, veth, bridge, nftables
            # and NFLOG work done in its context): the core the reader does not get.
            "sender_cpu_s": round(float(sender_cpu), 2),
            "packets_per_cpu_s": round((stats["packets"] - packets0) / max(cpu, 1e-9)),
            # Sent but never logged: dropped before the bridge hook (veth backlog) while the
            # two cores were busy; the kernel's NFLOG sequence never counted them.
            "dropped_before_nflog": max(sent - counter.events - lost, 0)}


async def bench_latency(lab: Lab, cfg: dict[str, Any], count: int = 400) -> dict[str, float]:
    counter = Counter()
    counter.keep = True
    sock = socket_in_netns(f"/run/netns/{lab.c}", socket.AF_INET, socket.SOCK_DGRAM)
    lat: list[int] = []
    try:
        async with source(lab, counter, cfg):
            for i in range(count):
                sent = time.monotonic_ns()
                sock.sendto(dns_query(i, f"lat{i}.example"), (lab.h_ip, 53))
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline:
                    hit = [e for e in counter.last if isinstance(e, DnsQuery) and e.qid == i]
                    if hit:
                        lat.append(hit[0].ts_ns - sent)
                        counter.last.clear()
                        break
                    await asyncio.sleep(0)
                await asyncio.sleep(0.005)
    finally:
        sock.close()
    lat.sort()

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] / 1e6, 3) if lat else -1.0

    return {"n": len(lat), "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99),
            "max_ms": round(lat[-1] / 1e6, 3) if lat else -1.0}


async def run(seconds: float) -> dict[str, Any]:
    lab = Lab()
    results: dict[str, Any] = {"cpus": os.cpu_count(), "tracker_events_per_s":
                               round(bench_tracker(min(seconds, 2.0)))}
    try:
        lab.up()
        for name, cfg in SETTINGS.items():
            results[name] = {"sustained": await bench_sustained(lab, cfg, seconds),
                             "latency": await bench_latency(lab, cfg)}
            for rate in PACED:
                results[name][f"paced {rate}/s"] = await bench_sustained(lab, cfg, seconds, rate)
    finally:
        lab.down()
    return results


def main(argv: list[str]) -> None:
    if os.geteuid() != 0:
        sys.exit("bench_nflog_source needs root (network namespaces, nftables, NFLOG)")
    args = [a for a in argv[1:] if not a.startswith("--")]
    seconds = float(args[0]) if args else 5.0
    res = asyncio.run(run(seconds))
    if "--json" in argv:
        print(orjson.dumps(res).decode())
        return
    print(f"cpus: {res['cpus']}   tracker alone (processing step, per core): "
          f"{res['tracker_events_per_s']:,} events/s")
    for name in SETTINGS:
        s, lat = res[name]["sustained"], res[name]["latency"]
        print(f"{name}: sent {s['sent']:,} ({s['sent_per_s']:,}/s), events {s['events']:,} "
              f"({s['events_per_s']:,}/s over {s['seconds']} s), seq_lost {s['seq_lost']:,}, "
              f"ENOBUFS {s['enobufs']}, never logged {s['dropped_before_nflog']:,}")
        print(f"{'':>{len(name)}}  reader: {s['packets_per_cpu_s']:,} packets per CPU-second "
              f"({s['reader_cpu_s']} s of CPU: recv + parse + events, one core); sender "
              f"{s['sender_cpu_s']} s of CPU")
        print(f"{'':>{len(name)}}  latency n={lat['n']} p50 {lat['p50_ms']} ms, "
              f"p90 {lat['p90_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms")
        for rate in PACED:
            p = res[name][f"paced {rate}/s"]
            print(f"{'':>{len(name)}}  paced {rate:,}/s: sent {p['sent']:,}, events "
                  f"{p['events']:,}, lost {p['seq_lost']:,}, ENOBUFS {p['enobufs']}, "
                  f"reader {p['packets_per_cpu_s']:,} packets per CPU-second")


if __name__ == "__main__":
    main(sys.argv)
