"""Tests for coi_watch.sources.attribution: cgroup parsing and the pid -> container table."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coi_watch.sources.attribution import (
    MISSING,
    Attribution,
    ProcessTable,
    container_from_cgroup,
    container_of,
)

HYBRID = """\
12:pids:/lxc.payload.t1
6:freezer:/lxc.payload.t1
1:name=systemd:/lxc.payload.t1/init.scope
0::/lxc.payload.t1
"""


# --------------------------------------------------------------------------- cgroup text


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (HYBRID, "t1"),
        ("0::/lxc.payload.coi-abc\n", "coi-abc"),
        ("0::/lxc.payload.web/system.slice/foo.service\n", "web"),
        ("0::/\n", None),
        ("0::/init.scope\n6:freezer:/\n", None),
        ("0::/lxc.monitor.t1\n", None),  # Incus's own monitor process runs on the host
        ("", None),
        ("garbage without colons\n", None),
        ("0::/lxc.payload.\n", None),  # empty name is no name
        ("5:cpu,cpuacct:/lxc.payload.a:b\n", "a:b"),  # the path keeps any ':'
        # A container can create sub-cgroups in its delegated tree: the outer name wins.
        ("0::/lxc.payload.evil/lxc.payload.victim\n", "evil"),
        # The unified line is preferred over v1 lines that disagree.
        ("6:freezer:/lxc.payload.old\n0::/lxc.payload.new\n", "new"),
        ("6:freezer:/\n3:devices:/lxc.payload.x\n", "x"),
        ("  0::/lxc.payload.sp  \n", "sp"),
    ],
)
def test_container_from_cgroup(text: str, want: str | None) -> None:
    assert container_from_cgroup(text) == want


NAMES = st.from_regex(r"[a-zA-Z][a-zA-Z0-9-]{0,62}", fullmatch=True)


@given(NAMES, st.lists(st.sampled_from(["pids", "cpu,cpuacct", "freezer", "name=x"]), max_size=4),
       st.sampled_from(["", "/init.scope", "/a/b"]))
def test_any_incus_name_round_trips(name: str, ctrls: list[str], tail: str) -> None:
    lines = [f"{i + 1}:{c}:/lxc.payload.{name}{tail}" for i, c in enumerate(ctrls)]
    lines.append(f"0::/lxc.payload.{name}{tail}")
    random.Random(len(name)).shuffle(lines)
    assert container_from_cgroup("\n".join(lines) + "\n") == name


@settings(max_examples=300)
@given(st.text())
def test_cgroup_parser_never_raises(text: str) -> None:
    got = container_from_cgroup(text)
    assert got is None or (got and "/" not in got)


def test_container_of_fake_proc(tmp_path: Path) -> None:
    (tmp_path / "10").mkdir()
    (tmp_path / "10" / "cgroup").write_text(HYBRID)
    (tmp_path / "11").mkdir()
    (tmp_path / "11" / "cgroup").write_text("0::/user.slice\n")
    (tmp_path / "12").mkdir()
    (tmp_path / "12" / "cgroup").write_bytes(b"")
    (tmp_path / "13").mkdir()
    (tmp_path / "13" / "cgroup").write_bytes(b"0::/lxc.payload.bin\xff\n")
    assert container_of(10, str(tmp_path)) == "t1"
    assert container_of(11, str(tmp_path)) is None
    assert container_of(12, str(tmp_path)) is MISSING
    assert container_of(99, str(tmp_path)) is MISSING
    assert container_of(13, str(tmp_path)) == "bin\ufffd"


def test_container_of_real_processes() -> None:
    # The test runs on the host (or at least not inside an Incus container of its own).
    assert container_of(os.getpid()) == container_from_cgroup(
        Path(f"/proc/{os.getpid()}/cgroup").read_text()
    )
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert container_of(pid_max + 1) is MISSING


# --------------------------------------------------------------------------- ProcessTable


class FakeProc:
    """An injectable /proc: pid -> attribution; absent pids are MISSING."""

    def __init__(self, **live: str | None) -> None:
        self.live: dict[int, str | None] = {int(k[1:]): v for k, v in live.items()}
        self.reads = 0

    def __call__(self, pid: int) -> Attribution:
        self.reads += 1
        return self.live.get(pid, MISSING)


def test_fork_chain_survives_proc_loss() -> None:
    fake = FakeProc(p100="c1")
    table = ProcessTable(attribute=fake)
    assert table.on_fork(100, 101) == "c1"
    del fake.live[100]
    # The grandchild of a parent already gone from /proc still gets attributed.
    assert table.on_fork(101, 102) == "c1"
    assert table.resolve(102) == "c1"
    assert table.pids_of("c1") == {100, 101, 102}
    # Exit forgets.
    assert table.on_exit(101) == "c1"
    assert 101 not in table and table.pids_of("c1") == {100, 102}


def test_host_is_remembered_and_saves_reads() -> None:
    fake = FakeProc(p1=None)
    table = ProcessTable(attribute=fake)
    for child in range(2, 50):
        assert table.on_fork(1, child) is None
    assert fake.reads == 1


def test_unknown_everything_is_missing() -> None:
    table = ProcessTable(attribute=FakeProc())
    assert table.on_fork(5, 6) is MISSING
    assert table.resolve(6) is MISSING
    assert table.on_exit(6) is MISSING
    assert len(table) == 0


def test_fresh_read_corrects_the_fork_guess() -> None:
    # incus exec: forked on the host, moved into lxc.payload.c1 before exec.
    fake = FakeProc(p10=None)
    table = ProcessTable(attribute=fake)
    assert table.on_fork(10, 11) is None
    fake.live[11] = "c1"
    assert table.resolve(11) is None  # remembered value
    assert table.resolve(11, fresh=True) == "c1"
    assert table.pids_of("c1") == {11}
    # If /proc has lost it, a fresh read falls back on what we knew.
    del fake.live[11]
    assert table.resolve(11, fresh=True) == "c1"


def test_lru_cap_counts_evictions_and_keeps_recent() -> None:
    fake = FakeProc(p1="c")
    table = ProcessTable(cap=100, attribute=fake)
    for child in range(2, 302):
        table.on_fork(1, child)
        table.resolve(1)  # keep the parent hot
    assert len(table) == 100
    assert table.evictions == 301 - 100
    assert 1 in table and 301 in table and 2 not in table
    assert table.pids_of("c") == set(range(203, 302)) | {1}


def test_forget_container_keeps_memory_flat_under_churn() -> None:
    fake = FakeProc(p1="a", p2="b", p3=None)
    table = ProcessTable(attribute=fake)
    for round_ in range(20):
        base = 1000 + round_ * 1000
        for i in range(300):
            table.on_fork(1 + i % 3, base + i)
        assert table.forget_container("a") == 101  # the parent, re-read each round
        assert table.forget_container("b") == 101
        for i in range(300):
            table.on_exit(base + i)
    assert table.pids_of("a") == frozenset() and table.pids_of("b") == frozenset()
    assert len(table) == 1  # only the host parent, pid 3
    assert table.evictions == 0


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["fork", "exit", "fresh", "forget"]),
                          st.integers(1, 30), st.integers(1, 30),
                          st.sampled_from(["a", "b", None])), max_size=80),
       st.integers(1, 12))
def test_index_matches_map(ops: list[tuple[str, int, int, str | None]], cap: int) -> None:
    fake = FakeProc()
    table = ProcessTable(cap=cap, attribute=fake)
    for op, x, y, name in ops:
        if op == "fork":
            fake.live[x] = name
            table.on_fork(x, y)
        elif op == "exit":
            table.on_exit(x)
        elif op == "fresh":
            fake.live[x] = name
            table.resolve(x, fresh=True)
        elif name is not None:
            table.forget_container(name)
        assert len(table) <= cap
        for n in ("a", "b"):
            assert table.pids_of(n) == {p for p in range(1, 31) if table.get(p) == n}


def test_cap_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ProcessTable(cap=0)
