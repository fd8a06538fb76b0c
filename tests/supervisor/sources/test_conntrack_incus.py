"""The conntrack source against a real Incus container: a 10 MB upload, then tamper by its root.

The container sits alone on a bridge made for the test (``coi-tb<hex>``, 198.18.X.0/24 with
a random X, no NAT, no DHCP, no DNS, no routing); the only peer is a TCP sink the test runs
on the bridge address 198.18.X.1. Container and bridge are deleted at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from coi_watch.containers import info_from_state
from coi_watch.events import Event, NetFlow, Tamper
from coi_watch.protocols import SourceContext
from coi_watch.sources.conntrack import TABLE, ConntrackSource

IMAGE = os.environ.get("COI_TESTBED_IMAGE", "coi-bb")
SIZE = 64 * 1024 * 160  # 10 MiB
PORT = 5555


@dataclass(frozen=True)
class Bed:
    name: str
    host: str
    addr: str


def incus(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(["incus", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode:
        raise RuntimeError(f"incus {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _free_subnet() -> int:
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True,
                            check=True).stdout
    for _ in range(50):
        x = random.randint(2, 254)
        if f"198.18.{x}." not in routes:
            return x
    raise RuntimeError("no free 198.18.X.0/24")


@pytest.fixture
def bed() -> Iterator[Bed]:
    tag = secrets.token_hex(3)
    bridge, name, x = f"coi-tb{tag}", f"coi-t-ct-{tag}", _free_subnet()
    made_bridge = made_container = False
    try:
        incus("network", "create", bridge, f"ipv4.address=198.18.{x}.1/24", "ipv4.nat=false",
              "ipv6.address=none", "ipv4.dhcp=false", "ipv4.routing=false", "dns.mode=none")
        made_bridge = True
        incus("launch", IMAGE, name, "--network", bridge)
        made_container = True
        incus("exec", name, "--", "sh", "-c",
              f"ip addr add 198.18.{x}.10/24 dev eth0; ip link set eth0 up")
        yield Bed(name, f"198.18.{x}.1", f"198.18.{x}.10")
    finally:
        if made_container:
            subprocess.run(["incus", "delete", "--force", name], capture_output=True,
                           timeout=120, check=False)
        if made_bridge:
            subprocess.run(["incus", "network", "delete", bridge], capture_output=True,
                           timeout=60, check=False)


def sink(host: str, port: int) -> tuple[threading.Thread, list[int]]:
    """A one-connection TCP sink on the bridge address, counting what it receives."""
    lsn = socket.socket()
    lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsn.bind((host, port))
    lsn.listen(1)
    lsn.settimeout(60)
    got = [0]

    def serve() -> None:
        with lsn:
            conn, _ = lsn.accept()
            with conn:
                conn.settimeout(60)
                while data := conn.recv(1 << 16):
                    got[0] += len(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t, got


async def until(pred: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@pytest.mark.incus
async def test_an_upload_is_counted_and_tamper_by_container_root_is_seen(bed: Bed) -> None:
    events: list[Event] = []
    systems: list[tuple[str, str, Mapping[str, Any]]] = []
    ctx = SourceContext(
        publish=events.append, watched=lambda n: n == bed.name,
        system=lambda c, k, d: systems.append((c, k, d)), count_drop=lambda *a: None,
    )

    def uploads() -> list[NetFlow]:
        return [e for e in events if isinstance(e, NetFlow) and e.dport == PORT]

    def tampers(what: str) -> list[Tamper]:
        return [e for e in events if isinstance(e, Tamper) and e.what == what]

    state = json.loads(incus("query", f"/1.0/instances/{bed.name}/state"))
    info = info_from_state(bed.name, state)
    src = ConntrackSource({"interval": 0.5})
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(src.run(ctx, ready))
    try:
        await asyncio.wait_for(asyncio.shield(ready), 5)
        await src.attach(info)
        thread, got = sink(bed.host, PORT)
        proc = await asyncio.create_subprocess_exec(
            "incus", "exec", bed.name, "--", "sh", "-c",
            f"dd if=/dev/zero bs=64k count=160 | nc {bed.host} {PORT}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        await asyncio.to_thread(thread.join, 30)
        assert got[0] == SIZE, (out, err)
        await until(lambda: any(f.bytes_out >= SIZE for f in uploads()))

        # Container root (its user namespace, host uid 1000000) removes our table.
        pid = str(info.init_pid)
        done = subprocess.run(["nsenter", "-t", pid, "-U", "-n", "nft", "delete", "table",
                               "inet", TABLE], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        await until(lambda: tampers("ct_table_removed"))
        await until(lambda: any(k == "tamper_repaired" for _, k, _ in systems))
        # ...and switches accounting off from inside.
        incus("exec", bed.name, "--", "sh", "-c",
              "echo 0 > /proc/sys/net/netfilter/nf_conntrack_acct")
        await until(lambda: tampers("acct_disabled"))
        listing = subprocess.run(["nsenter", "-t", pid, "-n", "nft", "list", "table", "inet",
                                  TABLE], capture_output=True, text=True, check=True).stdout
        assert "ct state new" in listing
        acct = subprocess.run(["nsenter", "-t", pid, "-n", "cat",
                               "/proc/sys/net/netfilter/nf_conntrack_acct"],
                              capture_output=True, text=True, check=True).stdout
        assert acct == "1\n"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    flows = uploads()
    assert flows and all(f.container == bed.name for f in events)
    big = [f for f in flows if f.bytes_out >= SIZE]
    assert big[0].event in ("counter", "destroy")
    assert (big[0].src, big[0].dst, big[0].proto) == (bed.addr, bed.host, "tcp")
    assert big[0].bytes_out <= SIZE + 80 * big[0].packets_out
    assert next(f for f in flows if f.event == "new").flow_id == big[0].flow_id
    (removed,) = tampers("ct_table_removed")
    assert "deltable" in removed.detail and "(nft)" in removed.detail
    assert tampers("acct_disabled")[0].source == "conntrack"
