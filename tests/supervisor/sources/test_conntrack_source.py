"""The conntrack source: decoding units, then the real kernel in two namespaces made here.

The live tests use the fixture lab (``tests/fixtures/wire/netlab.py``): namespace ``a`` plays
the container (a ``sleep`` started in it stands in for the container's init), ``b`` the
outside; a veth pair joins them with addresses in 198.18.0.0/15. No other network is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.wire_fixtures import load_module, read_hex

from coi_watch import netns
from coi_watch.containers import ContainerInfo
from coi_watch.errors import WireError
from coi_watch.events import Event, NetFlow, Tamper
from coi_watch.protocols import ContainerAware, Source, SourceContext
from coi_watch.sources.conntrack import (
    TABLE,
    ConntrackSource,
    FlowReader,
    NftWatch,
    parse_flows,
    rule_query,
    rules_with_ct,
)
from coi_watch.wire.netlink import iter_messages
from coi_watch.wire.nfnetlink import NLM_F_DUMP, NLM_F_REQUEST, message, nla

WIRE = Path(__file__).resolve().parents[2] / "fixtures" / "wire"




def frame(name: str) -> bytes:
    return read_hex(WIRE / "conntrack" / f"{name}.hex")


# --------------------------------------------------------------------------- units


def test_the_source_satisfies_both_protocols() -> None:
    src = ConntrackSource()
    assert isinstance(src, Source) and isinstance(src, ContainerAware)
    assert src.name == "conntrack" and src.interval == 2.0


def test_a_destroy_event_becomes_a_netflow_with_counters() -> None:
    got: list[Any] = []
    FlowReader("c1", got.append, clock=lambda: 123).feed(frame("destroy_tcp_v4"))
    assert got == [NetFlow(
        ts_ns=123, wall_ns=got[0].wall_ns, container="c1", event="destroy", family=4,
        proto="tcp", src="198.18.251.1", sport=52364, dst="198.18.251.2", dport=7000,
        flow_id=1033682936, bytes_out=100580, bytes_in=5476, packets_out=11, packets_in=9,
        start_ns=1795917024404698253, stop_ns=1795917024474134785,
    )]  # fmt: skip


def test_new_v6_and_dump_entries_map_to_their_kinds() -> None:
    got: list[Any] = []
    reader = FlowReader("c1", got.append)
    reader.feed(frame("tcp_new_v6"))
    reader.feed(frame("dump_all"))
    assert got[0].event == "new" and got[0].family == 6 and ":" in got[0].src
    assert got[0].bytes_out == 0 and got[0].flow_id in reader.known
    assert {e.event for e in got[1:]} == {"counter"} and len(got) > 2


def test_garbage_is_reported_not_raised() -> None:
    errors: list[Any] = []
    reader = FlowReader("c1", lambda ev: None, on_wire_error=lambda e, d: errors.append(d))
    reader.feed(b"\x30\x00\x00\x00garbage")
    assert errors and reader.stats["wire_errors"] == 1


def nft_msg(op: int, table: str = TABLE, family: int = 1) -> bytes:
    return message(10, op, nla(1, table.encode() + b"\0"), family=family, flags=0)


def newgen(pid: int, comm: str = "nft") -> bytes:
    attrs = nla(1, struct.pack("!I", 7)) + nla(2, struct.pack("!I", pid))
    return message(10, 15, attrs + nla(3, comm.encode() + b"\0"), flags=0)


def test_foreign_changes_to_our_table_are_seen_own_ones_are_not() -> None:
    w = NftWatch()
    w.own.append(100)
    # rule, chain and table deleted by someone else (split over two datagrams)
    assert w.feed(nft_msg(8) + nft_msg(5)) == []
    (change,) = w.feed(nft_msg(2) + newgen(4242, "evil"))
    assert change.removed and change.pid == 4242
    assert change.describe() == (
        f"delrule, delchain, deltable on table inet {TABLE} by pid 4242 (evil)")
    # our own re-install, other tables, other families: nothing
    assert w.feed(nft_msg(2) + nft_msg(0) + nft_msg(3) + newgen(100)) == []
    assert w.feed(nft_msg(2, table="theirs") + newgen(4242)) == []
    assert w.feed(nft_msg(2, family=2) + newgen(4242)) == []
    # a rule added to our chain is a modification
    (change,) = w.feed(nft_msg(6) + newgen(4242))
    assert not change.removed and change.ops == ("newrule",)
    w.feed(nft_msg(8))
    w.reset()
    assert w.feed(newgen(4242)) == []


def _rule(*exprs: str) -> bytes:
    elems = b"".join(nla(1, nla(1, e.encode() + b"\0"), nested=True) for e in exprs)
    attrs = nla(1, TABLE.encode() + b"\0") + nla(4, elems, nested=True)
    return message(10, 6, attrs, family=1, flags=2)


def test_rule_dump_counts_rules_with_a_ct_expression() -> None:
    assert rules_with_ct(_rule("ct", "cmp", "counter") + _rule("counter")) == 1
    assert rules_with_ct(_rule("counter")) == 0
    (msg,) = iter_messages(rule_query(9))
    assert (msg.type, msg.flags, msg.seq) == ((10 << 8) | 7, NLM_F_REQUEST | NLM_F_DUMP, 9)
    assert msg.payload[0] == 1 and TABLE.encode() in bytes(msg.payload)


REAL = [frame(n) for n in ("tcp_new_v4", "destroy_tcp_v6", "dump_all", "udp_update_v4")]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    buf = bytearray(draw(st.sampled_from([*REAL, _rule("ct"), nft_msg(2) + newgen(1)])))
    for _ in range(draw(st.integers(1, 8))):
        buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    return bytes(buf[: draw(st.integers(0, len(buf)))])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=512), mutated()))
def test_decoders_return_or_raise_wire_error_only(data: bytes) -> None:
    for decode in (parse_flows, NftWatch().feed, rules_with_ct):
        with contextlib.suppress(WireError):
            decode(data)


# --------------------------------------------------------------------------- live

NAME = "ct-test"


@dataclass
class Rec:
    """What the source handed to its context."""

    events: list[Event] = field(default_factory=list)
    systems: list[tuple[str, str, Mapping[str, Any]]] = field(default_factory=list)
    drops: list[tuple[str, str, str, int]] = field(default_factory=list)

    def ctx(self) -> SourceContext:
        return SourceContext(
            publish=self.events.append, watched=lambda n: n == NAME,
            system=lambda c, k, d: self.systems.append((c, k, d)),
            count_drop=lambda *a: self.drops.append(a),
        )

    def flows(self, event: str | None = None, dport: int | None = None) -> list[NetFlow]:
        return [e for e in self.events if isinstance(e, NetFlow)
                and (event is None or e.event == event) and (dport is None or e.dport == dport)]

    def tampers(self, what: str) -> list[Tamper]:
        return [e for e in self.events if isinstance(e, Tamper) and e.what == what]

    def system(self, kind: str) -> list[Mapping[str, Any]]:
        return [d for c, k, d in self.systems if k == kind]


async def until(pred: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture
def lab() -> Iterator[Any]:
    netlab = load_module("coi_fixture_netlab", WIRE / "netlab.py")
    with netlab.NetLab() as lab:
        # the stand-in for a container's init: `ip netns exec` execs it in the namespace
        init = subprocess.Popen(["ip", "netns", "exec", lab.ns_a, "sleep", "300"])
        try:
            for _ in range(100):
                with contextlib.suppress(OSError):
                    if netns.netns_inode(f"/proc/{init.pid}/ns/net") == netns.netns_inode(
                            lab.path(lab.ns_a)):
                        break
                time.sleep(0.01)
            else:
                raise RuntimeError("the stand-in init did not enter the namespace")
            lab.init_pid = init.pid
            yield lab
        finally:
            init.kill()
            init.wait()


@contextlib.asynccontextmanager
async def running(lab: Any, rec: Rec, **config: Any) -> AsyncIterator[ConntrackSource]:
    src = ConntrackSource({"interval": 0.3, **config})
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(src.run(rec.ctx(), ready))
    try:
        await asyncio.wait_for(asyncio.shield(ready), 5)
        await src.attach(ContainerInfo(name=NAME, init_pid=lab.init_pid))
        yield src
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def tcp_pair(lab: Any, port: int) -> tuple[socket.socket, socket.socket]:
    lsn = lab.socket(lab.ns_b, socket.AF_INET, socket.SOCK_STREAM)
    with lsn:
        lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsn.bind((lab.b4, port))
        lsn.listen(1)
        cli = lab.socket(lab.ns_a, socket.AF_INET, socket.SOCK_STREAM)
        cli.settimeout(5)
        cli.connect((lab.b4, port))
        srv, _ = lsn.accept()
    srv.settimeout(5)
    return cli, srv


def pump(cli: socket.socket, srv: socket.socket, size: int) -> None:
    cli.sendall(b"\xa5" * size)
    got = 0
    while got < size:
        got += len(srv.recv(1 << 16))


def table_present(lab: Any) -> bool:
    return TABLE in lab.exec(lab.ns_a, "nft", "list", "tables")


@pytest.mark.privileged
async def test_new_and_destroy_carry_the_flow_and_its_counters(lab: Any) -> None:
    rec = Rec()
    size = 250_000
    async with running(lab, rec):
        assert table_present(lab)
        assert lab.exec(lab.ns_a, "sysctl", "-n", "net.netfilter.nf_conntrack_acct") == "1\n"
        cli, srv = tcp_pair(lab, 7777)
        with cli, srv:
            pump(cli, srv, size)
            srv.send(b"ok")
            cli.recv(2)
            sport = cli.getsockname()[1]
        udp_b = lab.socket(lab.ns_b, socket.AF_INET, socket.SOCK_DGRAM)
        udp_a = lab.socket(lab.ns_a, socket.AF_INET, socket.SOCK_DGRAM)
        with udp_a, udp_b:
            udp_b.bind((lab.b4, 9000))
            udp_a.bind((lab.a4, 0))
            for _ in range(3):
                udp_a.sendto(b"u" * 1000, (lab.b4, 9000))
            udp_b.settimeout(5)
            for _ in range(3):
                _, peer = udp_b.recvfrom(2000)
            udp_b.sendto(b"r" * 500, peer)
            udp_a.settimeout(5)
            udp_a.recv(1000)
        await until(lambda: rec.flows("new", 7777) and rec.flows("new", 9000))
        lab.exec(lab.ns_a, "conntrack", "-F")  # ends the flows now (GC would take seconds)
        await until(lambda: rec.flows("destroy", 7777) and rec.flows("destroy", 9000))

    (new,) = rec.flows("new", 7777)
    assert (new.container, new.family, new.proto) == (NAME, 4, "tcp")
    assert (new.src, new.sport, new.dst, new.dport) == (lab.a4, sport, lab.b4, 7777)
    (gone,) = rec.flows("destroy", 7777)
    assert gone.flow_id == new.flow_id and gone.sport == sport
    assert size <= gone.bytes_out <= size + 80 * gone.packets_out
    assert 2 <= gone.bytes_in - 52 * gone.packets_in <= 40 * gone.packets_in  # "ok" + headers
    assert 0 < gone.start_ns <= gone.stop_ns
    (udp,) = rec.flows("destroy", 9000)
    assert (udp.proto, udp.src, udp.dst, udp.sport) == ("udp", lab.a4, lab.b4, peer[1])
    assert (udp.packets_out, udp.bytes_out) == (3, 3 * (1000 + 28))  # IP lengths
    assert (udp.packets_in, udp.bytes_in) == (1, 500 + 28)
    assert all(e.container == NAME for e in rec.events)
    assert not rec.drops
    # released: our table is gone and accounting is back to what we found (off)
    assert not table_present(lab)
    assert lab.exec(lab.ns_a, "sysctl", "-n", "net.netfilter.nf_conntrack_acct") == "0\n"


@pytest.mark.privileged
async def test_a_long_flow_is_counted_while_it_lasts(lab: Any) -> None:
    rec = Rec()
    async with running(lab, rec):
        cli, srv = tcp_pair(lab, 7001)
        with cli, srv:
            time.sleep(0.5)  # the loop is blocked past a tick: the dump must not overtake
            seen: list[int] = []
            for _ in range(5):
                pump(cli, srv, 200_000)
                await asyncio.sleep(0.45)
                seen.append(max((f.bytes_out for f in rec.flows("counter", 7001)), default=0))
            live = rec.flows("counter", 7001)
    assert seen == sorted(seen) and len(set(seen)) >= 4, seen
    assert seen[-1] >= 1_000_000
    assert not rec.flows("destroy", 7001)  # all of that while the connection was open
    assert len({f.flow_id for f in live}) == 1 and live[0].start_ns > 0
    assert rec.flows(dport=7001)[0].event == "new"
    # idle flows are not repeated: one record per distinct counter value at most
    assert len(live) == len({(f.bytes_out, f.bytes_in) for f in live})


@pytest.mark.privileged
async def test_overflow_is_counted_resynced_and_survived(lab: Any) -> None:
    rec = Rec()
    n = 600
    ports = set(range(20000, 20000 + n))

    def lost() -> int:
        return sum(d[3] for d in rec.drops if d[:3] == (NAME, "conntrack", "enobufs"))

    async with running(lab, rec, rcvbuf=1):  # the kernel's minimum buffer
        udp = lab.socket(lab.ns_a, socket.AF_INET, socket.SOCK_DGRAM)
        with udp:
            for port in sorted(ports):  # the loop is blocked: nothing is read meanwhile
                udp.sendto(b"x", (lab.b4, port))
        await until(lambda: rec.system("resynced"))
        news = {f.dport for f in rec.flows("new") if f.dport in ports}
        lost_new = lost()
        # every live flow was recovered by the resync dump, and the loss estimated
        counted = {f.dport for f in rec.flows("counter") if f.dport in ports}
        assert counted == ports
        assert len(news) < n and rec.system("enobufs")
        assert n - len(news) - 5 <= lost_new <= n - len(news) + 5
        # the flows all end at once: their destroy events overflow too
        lab.exec(lab.ns_a, "conntrack", "-F")
        await until(lambda: len(rec.system("resynced")) >= 2)
        gone = {f.dport for f in rec.flows("destroy") if f.dport in ports}
        assert len(gone) < n
        assert n - len(gone) - 5 <= lost() - lost_new <= n - len(gone) + 5
        # the socket still works afterwards
        cli, srv = tcp_pair(lab, 7002)
        with cli, srv:
            await until(lambda: rec.flows("new", 7002))
    first, second = rec.system("resynced")[:2]
    assert first["live_flows"] >= n and not first["lower_bound"]
    assert second["missed_destroy"] >= n - len(gone) - 5


@pytest.mark.privileged
@pytest.mark.parametrize("how", [
    f"delete table inet {TABLE}",
    f"flush chain inet {TABLE} out",
    "flush ruleset",
])  # fmt: skip
async def test_removing_our_table_is_tamper_and_repaired(lab: Any, how: str) -> None:
    rec = Rec()
    async with running(lab, rec):
        lab.exec(lab.ns_a, "sh", "-c", f"nft {how}")
        await until(lambda: rec.tampers("ct_table_removed") and rec.system("tamper_repaired"))
        assert "ct state new" in lab.exec(lab.ns_a, "nft", "list", "table", "inet", TABLE)
        cli, srv = tcp_pair(lab, 7003)  # still tracked after the repair
        with cli, srv:
            await until(lambda: rec.flows("new", 7003))
    (t,) = rec.tampers("ct_table_removed")
    assert t.container == NAME and t.source == "conntrack"
    assert "by pid" in t.detail and "(nft)" in t.detail
    assert rec.system("tamper_repaired")[0]["what"] == "ct_table_removed"


@pytest.mark.privileged
async def test_changing_our_chain_is_tamper_too(lab: Any) -> None:
    rec = Rec()
    async with running(lab, rec):
        lab.exec(lab.ns_a, "nft", "insert", "rule", "inet", TABLE, "out", "accept")
        await until(lambda: rec.tampers("ct_table_modified") and rec.system("tamper_repaired"))
        await until(lambda: "accept" not in lab.exec(lab.ns_a, "nft", "list", "chain", "inet",
                                                     TABLE, "out").replace("policy accept", ""))
    assert "newrule" in rec.tampers("ct_table_modified")[0].detail
    assert not rec.tampers("ct_table_removed")


@pytest.mark.privileged
async def test_the_periodic_check_finds_a_removal_whose_event_was_lost(lab: Any) -> None:
    rec = Rec()
    async with running(lab, rec) as src:
        watch = src.watches[NAME]
        asyncio.get_running_loop().remove_reader(watch.nft_sock.fileno())
        lab.exec(lab.ns_a, "nft", "delete", "table", "inet", TABLE)
        with contextlib.suppress(BlockingIOError):  # its events are "lost"
            for _ in range(100):
                watch.nft_sock.recv(1 << 16)
        await until(lambda: rec.tampers("ct_table_removed") and table_present(lab))
    assert "periodic check" in rec.tampers("ct_table_removed")[0].detail


@pytest.mark.privileged
@pytest.mark.parametrize(("sysctl", "what", "restored"), [
    ("nf_conntrack_acct", "acct_disabled", "1"),
    ("nf_conntrack_timestamp", "timestamp_disabled", "1"),
    ("nf_conntrack_events", "events_disabled", "2"),
])  # fmt: skip
async def test_switching_a_sysctl_off_is_tamper_and_repaired(
    lab: Any, sysctl: str, what: str, restored: str
) -> None:
    rec = Rec()
    key = f"net.netfilter.{sysctl}"
    async with running(lab, rec):
        lab.exec(lab.ns_a, "sysctl", "-qw", f"{key}=0")
        await until(lambda: rec.tampers(what))
        await until(lambda: lab.exec(lab.ns_a, "sysctl", "-n", key).strip() == restored)
    (t,) = rec.tampers(what)
    assert key in t.detail and t.container == NAME
    assert rec.system("tamper_repaired")[0]["what"] == what


@pytest.mark.privileged
async def test_attach_is_idempotent_early_and_quiet_for_a_vanished_container(lab: Any) -> None:
    rec = Rec()
    src = ConntrackSource({"interval": 0.3})
    info = ContainerInfo(name=NAME, init_pid=lab.init_pid)
    await src.attach(info)  # before run: remembered
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(src.run(rec.ctx(), ready))
    try:
        await asyncio.wait_for(asyncio.shield(ready), 5)
        assert table_present(lab) and NAME in src.watches
        await src.attach(info)
        assert len(rec.system("conntrack_attached")) == 1
        dead = subprocess.Popen(["true"])
        dead.wait()
        await src.attach(ContainerInfo(name="gone", init_pid=dead.pid))
        assert "gone" not in src.watches and rec.system("attach_skipped")
        await src.release(NAME)
        await src.release(NAME)
        assert not table_present(lab) and not src.watches
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not rec.tampers("ct_table_removed")  # our own removal is no tamper


@pytest.mark.privileged
async def test_a_container_fighting_us_is_reported_and_repaired_at_a_bounded_rate(
    lab: Any,
) -> None:
    rec = Rec()
    async with running(lab, rec) as src:
        fight = "; ".join([f"nft delete table inet {TABLE}; nft add table inet {TABLE}"] * 5)
        lab.exec(lab.ns_a, "sh", "-c", fight)
        await until(lambda: rec.tampers("ct_table_removed"))
        await asyncio.sleep(0.5)
        assert len(rec.tampers("ct_table_removed")) == 1  # the rest are held and counted
        await until(lambda: "ct state new" in lab.exec(lab.ns_a, "nft", "list", "table",
                                                       "inet", TABLE), timeout=5)
        assert src.watches[NAME].stats["tamper"] >= 2
        assert len(rec.system("tamper_repaired")) <= 2


@pytest.mark.privileged
@pytest.mark.parametrize("updates", [False, True])
async def test_updates_are_published_only_when_asked_for(lab: Any, updates: bool) -> None:
    rec = Rec()
    async with running(lab, rec, updates=updates):
        cli, srv = tcp_pair(lab, 7004)
        with cli, srv:
            pump(cli, srv, 1000)
        await until(lambda: rec.flows("new", 7004))
        if updates:
            await until(lambda: rec.flows("update", 7004))
        else:
            await asyncio.sleep(0.3)
    assert bool(rec.flows("update", 7004)) == updates
