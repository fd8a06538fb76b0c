"""The NFLOG source against a real Incus container on a test bridge of its own.

The test creates an Incus bridge ``coi-tb<random>`` on ``198.18.X.1/24`` (X random, no NAT, no
DHCP, no DNS), launches a busybox container on it with the static address ``198.18.X.10``,
and runs on ``198.18.X.1`` (that bridge's address only) a fake resolver answering NXDOMAIN and
a TCP listener. ``nslookup`` and ``nc`` in the container must show up as ``DnsQuery`` and
``NetConnect`` events attributed to the container. Bridge and container are deleted at the
end; the source's table is gone once it is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import pytest

from coi_watch.containers import info_from_state
from coi_watch.events import DnsAnswer, DnsQuery, Event, NetConnect
from coi_watch.protocols import SourceContext
from coi_watch.sources.nflog import NflogSource

IMAGE = os.environ.get("COI_TESTBED_IMAGE", "coi-bb")


def _incus(*args: str, check: bool = True, timeout: float = 120) -> str:
    done = subprocess.run(["incus", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and done.returncode:
        raise RuntimeError(f"incus {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Bed:
    bridge: str
    x: int
    name: str

    @property
    def gw(self) -> str:
        return f"198.18.{self.x}.1"

    @property
    def addr(self) -> str:
        return f"198.18.{self.x}.10"


@pytest.fixture
def bed() -> Iterator[Bed]:
    tag = secrets.token_hex(3)
    bridge, name = f"coi-tb{tag}", f"coi-t-nflog-{tag}"
    made_net = made_ct = False
    try:
        for _ in range(5):  # another test may hold this /24: pick again
            x = secrets.randbelow(256)
            done = subprocess.run(
                ["incus", "network", "create", bridge, f"ipv4.address=198.18.{x}.1/24",
                 "ipv4.nat=false", "ipv6.address=none", "ipv4.dhcp=false", "ipv4.routing=false",
                 "dns.mode=none"], capture_output=True, text=True, timeout=120, check=False)
            if done.returncode == 0:
                made_net = True
                break
        assert made_net, done.stderr
        _incus("launch", IMAGE, name, "--network", bridge)
        made_ct = True
        _incus("exec", name, "--", "sh", "-c",
               f"ip addr add 198.18.{x}.10/24 dev eth0 && ip link set eth0 up && ip link set lo up")
        yield Bed(bridge, x, name)
    finally:
        if made_ct:
            _incus("delete", "--force", name, check=False)
        if made_net:
            _incus("network", "delete", bridge, check=False)


def _nxdomain(query: bytes) -> bytes:
    """The NXDOMAIN answer to ``query`` (header + its first question only)."""
    end = 12
    while end < len(query) and query[end]:
        end += query[end] + 1
    end = min(end + 5, len(query))
    flags = 0x8000 | (query[2] << 8 & 0x0100) | 0x0080 | 3  # QR, RD copied, RA, NXDOMAIN
    return query[:2] + flags.to_bytes(2, "big") + b"\x00\x01" + bytes(6) + query[12:end]


class Servers:
    """A fake resolver (UDP 53) and a TCP listener (8080) on the bridge address, in threads."""

    def __init__(self, addr: str) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.udp.bind((addr, 53))
        self.tcp.bind((addr, 8080))
        self.tcp.listen(8)
        for s in (self.udp, self.tcp):
            s.settimeout(0.2)
        self.stop = threading.Event()
        self.queries = 0
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._dns, self._accept)]
        for t in self.threads:
            t.start()

    def _dns(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.udp.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queries += 1
            with contextlib.suppress(OSError):
                self.udp.sendto(_nxdomain(data), peer)

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(2)
        self.udp.close()
        self.tcp.close()


@pytest.mark.incus
async def test_dns_and_connect_from_an_incus_container_are_attributed(bed: Bed) -> None:
    state = orjson.loads(_incus("query", f"/1.0/instances/{bed.name}/state"))
    info = info_from_state(bed.name, state)
    assert info.host_veths and bed.addr in info.addresses
    events: list[Event] = []
    systems: list[tuple[str, str]] = []
    ctx = SourceContext(publish=events.append, watched=lambda c: c == bed.name,
                        system=lambda c, k, d: systems.append((c, k)),
                        count_drop=lambda *a: None)
    src = NflogSource({"verify_interval_s": 0})
    servers = Servers(bed.gw)
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(src.run(ctx, ready))
    table = ""
    try:
        await asyncio.wait_for(asyncio.shield(ready), 10)
        assert src.nft is not None
        table = src.nft.table
        await src.attach(info)
        qname = f"probe-{secrets.token_hex(4)}.coi.example"
        for argv in (["nslookup", qname, bed.gw],
                     ["sh", "-c", f"echo hi | nc -w 2 {bed.gw} 8080"]):
            proc = await asyncio.create_subprocess_exec(
                "incus", "exec", bed.name, "--", *argv,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            await asyncio.wait_for(proc.communicate(), 60)
        for _ in range(100):
            if any(isinstance(e, NetConnect) and e.dport == 8080 for e in events):
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        servers.close()

    assert servers.queries >= 1
    assert events and all(e.container == bed.name for e in events)
    dns = [e for e in events if isinstance(e, DnsQuery)]
    assert {e.qname for e in dns} == {qname}, dns
    assert {e.qtype for e in dns} <= {1, 28} and all(e.dst == bed.gw for e in dns)
    assert all((e.src, e.dport, e.proto) == (bed.addr, 53, "udp") for e in dns)
    answers = [e for e in events if isinstance(e, DnsAnswer)]
    assert answers and {(e.qname, e.rcode, e.src, e.dst) for e in answers} == {
        (qname, 3, bed.gw, bed.addr)}  # our fake resolver's NXDOMAIN, on its way in
    conns = {(e.proto, e.dst, e.dport, e.indev) for e in events if isinstance(e, NetConnect)}
    veth = info.host_veths[0]
    assert ("tcp", bed.gw, 8080, veth) in conns
    assert ("udp", bed.gw, 53, veth) in conns
    assert ("", "nflog_started") in systems
    listed = subprocess.run(["nft", "-j", "list", "tables"], capture_output=True, text=True,
                            check=True).stdout
    assert table and table not in listed
