"""coi_watch.netns against real network namespaces made for the test (``ip netns add``)."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coi_watch import netns

pytestmark = pytest.mark.privileged

ACCT = "/proc/sys/net/netfilter/nf_conntrack_acct"


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"coi-t-ns-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def own_netns() -> int:
    return netns.netns_inode("/proc/thread-self/ns/net")


def test_callable_runs_inside_and_the_caller_stays_outside(ns: str) -> None:
    before = own_netns()
    inside = netns.call_in_netns(ns, own_netns)
    assert inside == netns.netns_inode(ns) != before
    assert own_netns() == before


def test_an_fd_names_the_namespace_too(ns: str) -> None:
    fd = netns.open_netns(ns)
    try:
        assert netns.call_in_netns(fd, own_netns) == netns.netns_inode(ns)
    finally:
        os.close(fd)


def test_errors_are_raised_in_the_caller(ns: str) -> None:
    def boom() -> None:
        raise LookupError("from inside")

    with pytest.raises(LookupError, match="from inside"):
        netns.call_in_netns(ns, boom)
    with pytest.raises(FileNotFoundError):
        netns.call_in_netns("/proc/999999999/ns/net", own_netns)


def test_a_socket_made_inside_stays_there(ns: str) -> None:
    # Only the namespace's loopback is up there, and it is a different loopback from ours.
    subprocess.run(["ip", "netns", "exec", os.path.basename(ns), "ip", "link", "set", "lo",
                    "up"], check=True)
    inner = netns.socket_in_netns(ns, socket.AF_INET, socket.SOCK_DGRAM)
    outer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        inner.bind(("127.0.0.1", 0))
        port = inner.getsockname()[1]
        outer.sendto(b"host", ("127.0.0.1", port))  # our loopback: nobody listens there
        peer = netns.socket_in_netns(ns, socket.AF_INET, socket.SOCK_DGRAM)
        with peer:
            peer.sendto(b"inside", ("127.0.0.1", port))
        inner.settimeout(2)
        assert inner.recv(64) == b"inside"
    finally:
        inner.close()
        outer.close()


def test_a_sysctl_fd_stays_bound_to_its_namespace(ns: str) -> None:
    host_before = Path(ACCT).read_text()
    fd = netns.call_in_netns(ns, lambda: os.open(ACCT, os.O_RDWR))
    try:
        os.pwrite(fd, b"1\n", 0)  # written from the host thread
        assert os.pread(fd, 16, 0) == b"1\n"
        seen = subprocess.run(["ip", "netns", "exec", os.path.basename(ns), "cat", ACCT],
                              capture_output=True, text=True, check=True).stdout
        assert seen == "1\n"
        assert Path(ACCT).read_text() == host_before
    finally:
        os.close(fd)


async def test_async_call_does_not_block_the_loop(ns: str) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    t = asyncio.create_task(ticker())
    try:
        inside = await netns.acall_in_netns(ns, lambda: (time.sleep(0.1), own_netns())[1])
    finally:
        t.cancel()
    assert inside == netns.netns_inode(ns)
    assert ticks >= 5
    with pytest.raises(ZeroDivisionError):
        await netns.acall_in_netns(ns, lambda: 1 // 0)


async def test_commands_run_inside_with_their_pid_reported_first(ns: str) -> None:
    started: list[int] = []
    fd = netns.open_netns(ns)
    try:
        for target in (ns, fd):
            ran = await netns.run_in_netns(
                target, ["sh", "-c", "echo $$; readlink /proc/self/ns/net"],
                on_start=started.append)
            pid, link = ran.stdout.decode().split()
            assert ran.returncode == 0
            assert int(pid) == ran.pid == started[-1]
            assert link == f"net:[{netns.netns_inode(ns)}]"
        ran = await netns.run_in_netns(ns, ["cat"], stdin=b"fed")
        assert ran.stdout == b"fed"
        ran = await netns.run_in_netns(ns, ["sh", "-c", "echo nope >&2; exit 3"])
        assert (ran.returncode, ran.error) == (3, "nope")
        with pytest.raises(TimeoutError):
            await netns.run_in_netns(ns, ["sleep", "30"], timeout=0.2)
    finally:
        os.close(fd)
