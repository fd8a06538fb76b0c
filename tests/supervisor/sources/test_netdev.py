"""Tests for coi_watch.sources.netdev: uevent handling, and a real veth pair on the host."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from coi_watch.sources import netdev
from coi_watch.sources.netdev import NetdevEvent, NetdevWatcher, link_kind


def test_kind_is_asked_on_add_and_remembered_for_remove_and_move(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kinds = {"veth0x": "veth", "br0x": "bridge"}
    monkeypatch.setattr(netdev, "link_kind", lambda name, sock=None: kinds.get(name, ""))
    got: list[NetdevEvent] = []
    w = NetdevWatcher(got.append)
    w.handle("add", "veth0x", {"INTERFACE": "veth0x", "IFINDEX": "41", "SEQNUM": "7"})
    w.handle("add", "br0x", {"INTERFACE": "br0x", "IFINDEX": "42"})
    w.handle("change", "veth0x", {"INTERFACE": "veth0x", "IFINDEX": "41"})
    assert w.known == {"veth0x": 41}
    kinds.clear()  # the device is gone from the kernel: kinds must come from memory now
    w.handle("move", "vethren", {"INTERFACE": "vethren", "IFINDEX": "41",
                                 "DEVPATH_OLD": "/devices/virtual/net/veth0x"})
    w.handle("remove", "vethren", {"INTERFACE": "vethren"})
    w.handle("remove", "br0x", {"INTERFACE": "br0x", "IFINDEX": "42"})
    assert got == [
        NetdevEvent(action="add", name="veth0x", ifindex=41, kind="veth", seq=7),
        NetdevEvent(action="move", name="vethren", ifindex=41, kind="veth", old_name="veth0x"),
        NetdevEvent(action="remove", name="vethren", ifindex=41, kind="veth"),
    ]
    assert w.known == {}
    assert w.stats["reported"] == 3


def test_every_kind_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netdev, "link_kind", lambda name, sock=None: "")
    got: list[NetdevEvent] = []
    w = NetdevWatcher(got.append, kinds=None)
    w.handle("add", "x", {"IFINDEX": "junk"})
    assert got == [NetdevEvent(action="add", name="x", ifindex=0, kind="")]


def test_start_takes_stock_of_present_devices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, idx in (("vethA", 3), ("eth0", 2)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ifindex").write_text(f"{idx}\n")
    (tmp_path / "broken").mkdir()
    monkeypatch.setattr(netdev, "link_kind",
                        lambda name, sock=None: "veth" if name.startswith("veth") else "virtio_net")
    w = NetdevWatcher(lambda ev: None, sys_net=str(tmp_path))
    w._scan()
    assert w.known == {"vethA": 3}


def test_link_kind_of_missing_or_bad_names() -> None:
    assert link_kind("") == ""
    assert link_kind("x" * 20) == ""
    assert link_kind(f"nope{secrets.token_hex(4)}") == ""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


async def _until(pred: object, timeout: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if pred():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.01)
    return False


@pytest.mark.privileged
async def test_a_real_veth_pair_comes_and_goes() -> None:
    # uevents only come for devices of the host namespace: the pair is made there, with
    # unique names (other tests may run at the same time).
    tag = secrets.token_hex(3)
    a, b, c = f"coitv{tag}a", f"coitv{tag}b", f"coitv{tag}c"
    got: list[NetdevEvent] = []
    w = NetdevWatcher(lambda ev: got.append(ev) if ev.name.startswith(f"coitv{tag}") else None)
    w.start()
    fds_open = len(os.listdir("/proc/self/fd"))
    try:
        _ip("link", "add", a, "type", "veth", "peer", "name", b)
        try:
            idx = {n: int(Path(f"/sys/class/net/{n}/ifindex").read_text()) for n in (a, b)}
            assert await _until(lambda: len(got) >= 2)
            _ip("link", "set", a, "name", c)
            assert await _until(lambda: len(got) >= 3)
            assert w.known[c] == idx[a] and w.known[b] == idx[b]
        finally:
            subprocess.run(["ip", "link", "del", c], capture_output=True, timeout=30)
            subprocess.run(["ip", "link", "del", a], capture_output=True, timeout=30)
        assert await _until(lambda: len(got) >= 5)
    finally:
        w.close()
    adds = {e.name: e for e in got if e.action == "add"}
    assert set(adds) == {a, b}
    assert all(e.kind == "veth" and e.ifindex == idx[e.name] for e in adds.values())
    (move,) = [e for e in got if e.action == "move"]
    assert (move.old_name, move.name, move.ifindex) == (a, c, idx[a])
    removes = {e.name: e.ifindex for e in got if e.action == "remove"}
    assert removes == {c: idx[a], b: idx[b]}
    assert c not in w.known and b not in w.known
    assert [e.seq for e in got] == sorted(e.seq for e in got)
    assert len(os.listdir("/proc/self/fd")) < fds_open  # the uevent socket is closed
