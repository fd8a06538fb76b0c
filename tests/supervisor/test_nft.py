"""Tests for coi_watch.nft: rule documents (unit) and the table against a real kernel.

The privileged tests build their own world: a namespace ``h`` (plays the host: a bridge
``br0`` with ``198.18.N.1``) and a namespace ``c`` (plays a container, ``198.18.N.2``) joined by
a veth pair whose ``h`` end is a port of ``br0``; the manager works inside ``h``. Nothing in the
root namespace is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
from support.bridge_lab import BridgeLab

from coi_watch.containers import ContainerInfo, Nic
from coi_watch.netns import socket_in_netns
from coi_watch.nft import (
    CHAIN_PRIORITY,
    PREFIX_ANSWER,
    PREFIX_DNS,
    PREFIX_NEW,
    PREFIX_NEW_DNS,
    NftManager,
    Quarantine,
    TableState,
    chain_name,
    container_rules,
    current,
    observe_rules,
    owner_of,
    parse_table_changes,
    process_start,
    skeleton,
    table_name,
)
from coi_watch.wire.nfnetlink import message, nla

# --------------------------------------------------------------------------- unit


def _logs(rules: list[list[dict]]) -> list[dict]:
    return [s["log"] for r in rules for s in r if "log" in s]


def test_table_names_round_trip_and_ignore_other_tables() -> None:
    assert owner_of(table_name(123, 456)) == (123, 456)
    assert owner_of(table_name(123, 456, 2)) == (123, 456)
    for other in ("incus", "coi_watch", "coi_watch_x_1", "coi_watch_1", "my_coi_watch_1_2",
                  "coi_watch_1_2_x", "filter"):
        assert owner_of(other) is None, other


def test_process_start_is_stable_and_none_for_a_dead_pid() -> None:
    me = process_start(os.getpid())
    assert me is not None and me == process_start(os.getpid())
    p = subprocess.Popen(["true"])
    p.wait()
    assert process_start(p.pid) is None


def test_chain_names_accept_incus_names_only() -> None:
    assert chain_name("coi-agent-1") == "c_coi-agent-1"
    for bad in ("", "a b", "x;y", "-lead", "a" * 64, 'q"uote'):
        with pytest.raises(ValueError):
            chain_name(bad)


def test_observe_rules_log_to_one_group_with_our_prefixes() -> None:
    rules = observe_rules(4242, snaplen_new=128, snaplen_dns=400)
    logs = _logs(rules)
    assert {lg["group"] for lg in logs} == {4242}
    assert {lg["prefix"] for lg in logs} == {PREFIX_NEW, PREFIX_DNS, PREFIX_NEW_DNS}
    # First packets of non-DNS flows are cut to headers; DNS queries to their question.
    for lg in logs:
        assert lg["snaplen"] == (128 if lg["prefix"] == PREFIX_NEW else 400)
    # Every rule ends the chain walk once it logged.
    assert all(r[-1] == {"return": None} for r in rules)


def test_first_packet_rules_remember_then_fail_open() -> None:
    rules = observe_rules(7)
    adds = [r for r in rules if any("set" in s and s["set"].get("op") == "add" for s in r)]
    assert {next(s["set"]["set"] for s in r if "set" in s) for r in adds} == {
        "@flow4", "@flow6", "@host4", "@host6"}
    for r in adds:
        i = rules.index(r)
        fallback = rules[i + 1]
        # Same match and log, without the "add": logs when the set is full.
        assert [s for s in r if "set" not in s] == fallback
        # In the first rule the add comes before the log (a failed add ends the rule).
        kinds = [next(iter(s)) for s in r]
        assert kinds.index("set") < kinds.index("log")
        lookup = next(s["match"] for s in r if "match" in s
                      and str(s["match"]["right"]).startswith("@"))
        assert lookup["left"]["concat"][0] == {"meta": {"key": "iifname"}}


def test_skeleton_hooks_bridge_prerouting_and_dispatches_on_the_veth() -> None:
    cmds = skeleton("coi_watch_1_2", 9, flow_timeout_s=30, set_size=1000)
    doc = orjson.loads(orjson.dumps({"nftables": cmds}))  # JSON-clean
    chains = [c["add"]["chain"] for c in doc["nftables"] if "chain" in c.get("add", {})]
    base = next(c for c in chains if c["name"] == "egress")
    assert (base["hook"], base["prio"], base["type"]) == ("prerouting", CHAIN_PRIORITY, "filter")
    assert all(c["family"] == "bridge" and c["table"] == "coi_watch_1_2" for c in chains)
    sets = {c["add"]["set"]["name"]: c["add"]["set"] for c in cmds if "set" in c.get("add", {})
            and c["add"]["set"]["name"] != "answer_ports"}
    assert sets["flow4"]["type"] == ["ifname", "ipv4_addr", "ipv4_addr", "inet_proto",
                                     "inet_service"]
    assert sets["host6"]["type"] == ["ifname", "ipv6_addr", "ipv6_addr", "inet_proto"]
    assert {s["timeout"] for s in sets.values()} == {30}
    assert {s["size"] for s in sets.values()} == {1000}
    vmap = [c["add"]["rule"]["expr"] for c in cmds if "rule" in c.get("add", {})
            and c["add"]["rule"]["chain"] == "egress"]
    assert vmap == [[{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@ports"}}]]
    # DNS answers: postrouting, to our veths, from port 53, with their own prefix.
    ingress = next(c for c in chains if c["name"] == "ingress")
    assert (ingress["hook"], ingress["prio"]) == ("postrouting", CHAIN_PRIORITY)
    answers = [c["add"]["rule"]["expr"] for c in cmds if "rule" in c.get("add", {})
               and c["add"]["rule"]["chain"] == "ingress"]
    assert [r[0]["match"] for r in answers] == [
        {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@answer_ports"}] * 2
    assert {r[1]["match"]["left"]["payload"]["protocol"] for r in answers} == {"udp", "tcp"}
    assert {r[-1]["log"]["prefix"] for r in answers} == {PREFIX_ANSWER}
    # Fixed chains are flushed before their rules are added again (idempotent restart).
    order = [next(iter(c)) for c in cmds]
    assert order.index("flush") < order.index("add", order.index("flush"))
    # Without a group there are no NFLOG rules at all (quarantine-only table).
    assert not _logs([c["add"]["rule"]["expr"] for c in skeleton("t", None)
                      if "rule" in c.get("add", {})])


def test_quarantine_rules_keep_permitted_and_dns_to_resolvers_then_drop() -> None:
    q = Quarantine.of(["198.18.7.0/24", "198.18.9.9", "2001:2::/48"], ["198.18.7.1", "2001:2::1"])
    rules = container_rules(True, q)
    assert rules[0] == [{"jump": {"target": "observe"}}]
    assert rules[-1] == [{"counter": None}, {"drop": None}]
    text = orjson.dumps(rules).decode()
    assert '{"prefix":{"addr":"198.18.7.0","len":24}}' in text
    assert '"198.18.9.9"' in text and '{"prefix":{"addr":"2001:2::","len":48}}' in text
    resolver = [r for r in rules if any(s.get("match", {}).get("right") == 53 for s in r)]
    assert len(resolver) == 2  # one per family
    assert all(r[-1] == {"accept": None} for r in resolver)
    arp = rules[1]
    assert arp[0]["match"]["right"] == "arp"
    with pytest.raises(ValueError):
        Quarantine.of(["not-an-address"])
    assert container_rules(False, None) == []


def test_table_state_parses_listing_output() -> None:
    table = [
        {"metainfo": {"json_schema_version": 1}},
        {"table": {"family": "bridge", "name": "t", "handle": 3}},
        {"map": {"family": "bridge", "table": "t", "name": "ports", "type": "ifname",
                 "map": "verdict"}},
        {"set": {"family": "bridge", "table": "t", "name": "flow4"}},
        {"chain": {"family": "bridge", "table": "t", "name": "egress", "handle": 1}},
        {"chain": {"family": "bridge", "table": "t", "name": "c_a", "handle": 2}},
        {"chain": {"family": "bridge", "table": "t", "name": "empty", "handle": 4}},
        {"rule": {"family": "bridge", "table": "t", "chain": "egress", "handle": 7, "expr": []}},
        {"rule": {"family": "bridge", "table": "t", "chain": "c_a", "handle": 9, "expr": []}},
        {"rule": {"family": "bridge", "table": "t", "chain": "c_a", "handle": 11, "expr": []}},
    ]
    ports = [{"map": {"name": "ports", "elem": [["veth1", {"jump": {"target": "c_a"}}],
                                               ["veth2", {"goto": {"target": "c_b"}}]]}}]
    st = TableState.parse(table, ports)
    assert st.exists
    assert st.chains == {"egress": (7,), "c_a": (9, 11), "empty": ()}
    assert st.ports == {"veth1": "c_a", "veth2": "c_b"}
    assert st.sets == {"ports", "flow4"}
    assert not TableState.parse([{"metainfo": {}}], []).exists


def test_table_change_notifications_name_the_table() -> None:
    def note(op: int, table: str, family: int = 7, pid: int = 4321) -> bytes:
        m = bytearray(message(10, op, nla(1, table.encode() + b"\0"), family=family, flags=0))
        m[12:16] = pid.to_bytes(4, "little")
        return bytes(m)

    buf = note(8, "coi_watch_1_2") + note(15, "") + note(2, "incus", family=1)
    changes = parse_table_changes(buf)
    assert [(c.what, c.family, c.table, c.portid) for c in changes] == [
        ("delrule", "bridge", "coi_watch_1_2", 4321), ("deltable", "inet", "incus", 4321)]


async def test_managers_register_per_namespace_and_close_without_start() -> None:
    a, b = NftManager(5), NftManager(5)
    try:
        assert a.table != b.table and owner_of(b.table) == owner_of(a.table)
        assert current() is a
    finally:
        await a.close()
        await a.close()  # idempotent
        assert current() is b
        b.close_sync()
    assert current() is None


# --------------------------------------------------------------------------- a bridge lab


class Lab(BridgeLab):
    """The shared bridge lab (tests/support/bridge_lab.py), with nftables helpers."""

    def __init__(self) -> None:
        super().__init__("coi-n")

    def nft(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.sh("ip", "netns", "exec", self.h, "nft", *args, check=check)

    def tables(self) -> set[tuple[str, str]]:
        out = orjson.loads(self.nft("-j", "list", "tables", check=True).stdout)
        return {(o["table"]["family"], o["table"]["name"]) for o in out["nftables"]
                if "table" in o}

    def connects(self, dst: str, port: int, timeout: float = 0.5) -> bool:
        fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
        s = socket_in_netns(self.path(self.c), fam, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((dst, port))
            return True
        except OSError:
            return False
        finally:
            s.close()


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        yield lab.up()
    finally:
        lab.down()


@pytest.fixture
async def listener(lab: Lab) -> AsyncIterator[list[socket.socket]]:
    socks = []
    try:
        for addr, fam in ((lab.h_ip, socket.AF_INET), (lab.h_ip2, socket.AF_INET),
                          (lab.h_ip6, socket.AF_INET6)):
            s = socket_in_netns(lab.path(lab.h), fam, socket.SOCK_STREAM)
            s.bind((addr, 8080))
            s.listen(16)
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------- privileged


@pytest.mark.privileged
async def test_attach_release_are_idempotent_and_close_removes_the_table(lab: Lab) -> None:
    m = NftManager(77, netns=lab.path(lab.h))
    try:
        await m.start()
        await m.start()
        assert not m.owned  # the default
        assert ("bridge", m.table) in lab.tables()
        await m.attach(lab.info())
        await m.attach(lab.info())
        st = await m.read_state()
        assert st.ports == {lab.veth: "c_ct1"}
        assert st.answer_ports == {lab.veth}
        assert len(st.chains["c_ct1"]) == 1  # jump observe, once
        assert len(st.chains["egress"]) == 1
        assert await m.verify() == []
        await m.release("ct1")
        await m.release("ct1")
        await m.release("never-attached")
        st = await m.read_state()
        assert st.ports == {} and "c_ct1" not in st.chains and not st.answer_ports
    finally:
        await m.close()
        await m.close()
    assert not [t for t in lab.tables() if owner_of(t[1])]


@pytest.mark.privileged
async def test_a_renamed_veth_moves_the_jump(lab: Lab) -> None:
    m = NftManager(77, netns=lab.path(lab.h))
    try:
        await m.start()
        await m.attach(lab.info())
        moved = ContainerInfo(name="ct1", init_pid=0, nics=(Nic(name="eth0", host_name="vethX"),))
        await m.attach(moved)
        assert (await m.read_state()).ports == {"vethX": "c_ct1"}
        await m.attach(lab.info("ct2"))  # another container, the old veth name
        assert (await m.read_state()).ports == {"vethX": "c_ct1", lab.veth: "c_ct2"}
    finally:
        await m.close()


@pytest.mark.privileged
async def test_owner_flag_only_where_nft_prints_it_correctly(lab: Lab) -> None:
    m = NftManager(77, netns=lab.path(lab.h), owner=True)
    try:
        await m.start()
        await m.attach(lab.info())
        assert m.nft_version >= (0, 9)
        if m.nft_version <= (1, 0, 6):
            # Refused: nft 1.0.6 would print corrupt JSON for everyone on the host.
            assert not m.owned
            orjson.loads(lab.nft("-j", "list", "ruleset", check=True).stdout)
        else:
            assert m.owned
            for cmd in (("delete", "table", "bridge", m.table),
                        ("flush", "chain", "bridge", m.table, "observe")):
                assert "Operation not permitted" in lab.nft(*cmd).stderr, cmd
        assert await m.verify() == []
    finally:
        await m.close()


@pytest.mark.privileged
async def test_sweep_deletes_dead_runs_tables_and_nothing_else(lab: Lab) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    alive = subprocess.Popen(["sleep", "30"])
    try:
        start = process_start(alive.pid)
        assert start is not None
        stale = [("bridge", table_name(gone.pid, 1)), ("inet", table_name(gone.pid, 2, 3)),
                 ("bridge", table_name(alive.pid, start + 1))]  # pid recycled: stale too
        kept = [("bridge", table_name(alive.pid, start)), ("inet", "incus"),
                ("bridge", "coi_watch"), ("inet", "unrelated_filter")]
        for fam, name in stale + kept:
            lab.nft("add", "table", fam, name, check=True)
        m = NftManager(None, netns=lab.path(lab.h))
        try:
            await m.start()
            assert sorted(m.swept) == sorted(f"{f} {n}" for f, n in stale)
            tables = lab.tables()
            assert set(kept) <= tables and not set(stale) & tables
        finally:
            await m.close()
        assert set(kept) <= lab.tables()
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.privileged
async def test_tamper_is_found_and_repaired_on_an_unowned_table(lab: Lab) -> None:
    m = NftManager(77, netns=lab.path(lab.h), backend="cli")
    try:
        await m.start()
        assert not m.owned
        await m.attach(lab.info())
        lab.nft("flush", "chain", "bridge", m.table, "observe", check=True)
        probs = await m.repair()
        assert [(p.container, p.what) for p in probs] == [("", "rules_changed")]
        assert m.affected(probs) == ["ct1"]
        assert await m.verify() == []
        lab.nft("delete", "element", "bridge", m.table, "ports", f'{{ "{lab.veth}" }}',
                check=True)
        assert [(p.container, p.what) for p in await m.repair()] == [("ct1", "port_missing")]
        lab.nft("delete", "table", "bridge", m.table, check=True)
        assert [p.what for p in await m.verify()] == ["table_missing"]
        await m.repair()
        st = await m.read_state()
        assert st.ports == {lab.veth: "c_ct1"} and len(st.chains["observe"]) > 10
        assert await m.verify() == []
    finally:
        await m.close()
    assert not [t for t in lab.tables() if owner_of(t[1])]


@pytest.mark.privileged
async def test_quarantine_drops_egress_except_permitted(lab: Lab, listener: list) -> None:
    m = NftManager(None, netns=lab.path(lab.h))
    try:
        await m.start()
        assert lab.connects(lab.h_ip2, 8080) and lab.connects(lab.h_ip6, 8080)
        await m.quarantine(lab.info(), [f"{lab.h_ip}/32"], [lab.h_ip])
        await m.quarantine(lab.info(), [f"{lab.h_ip}/32"], [lab.h_ip])  # idempotent
        assert m.quarantined("ct1") is not None
        assert lab.connects(lab.h_ip, 8080)
        assert not lab.connects(lab.h_ip2, 8080)
        assert not lab.connects(lab.h_ip6, 8080)
        # DNS to the resolver passes (UDP): a server in h sees the datagram.
        srv = socket_in_netns(lab.path(lab.h), socket.AF_INET, socket.SOCK_DGRAM)
        cli = socket_in_netns(lab.path(lab.c), socket.AF_INET, socket.SOCK_DGRAM)
        other = socket_in_netns(lab.path(lab.h), socket.AF_INET, socket.SOCK_DGRAM)
        try:
            srv.bind((lab.h_ip, 53))
            other.bind((lab.h_ip2, 53))
            srv.settimeout(2)
            other.settimeout(0.3)
            cli.sendto(b"\x12\x34" + bytes(10), (lab.h_ip, 53))
            assert srv.recv(100).startswith(b"\x12\x34")
            cli.sendto(b"\x56\x78" + bytes(10), (lab.h_ip2, 53))
            with pytest.raises(TimeoutError):
                other.recv(100)
        finally:
            for s in (srv, cli, other):
                s.close()
        await m.lift_quarantine("ct1")
        await m.lift_quarantine("ct1")
        assert m.quarantined("ct1") is None
        assert lab.connects(lab.h_ip2, 8080)
        assert (await m.read_state()).ports == {}  # not attached for logging: all gone
    finally:
        await m.close()


_CHILD = """
import asyncio, signal
from coi_watch.nft import NftManager
from coi_watch.containers import ContainerInfo, Nic

async def main():
    m = NftManager(77, netns={ns!r}, backend={backend!r})
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await m.start()
        nic = Nic(name="e", host_name={veth!r})
        await m.attach(ContainerInfo(name="ct1", init_pid=0, nics=(nic,)))
        print(m.table, flush=True)
        await stop.wait()
    finally:
        await m.close()

asyncio.run(main())
"""


async def _child(lab: Lab, backend: str) -> tuple[asyncio.subprocess.Process, str]:
    code = _CHILD.format(ns=lab.path(lab.h), backend=backend, veth=lab.veth)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code,
                                                stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    table = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
    assert owner_of(table), table
    assert ("bridge", table) in lab.tables()
    return proc, table


@pytest.mark.privileged
async def test_sigterm_removes_the_table(lab: Lab) -> None:
    proc, table = await _child(lab, "auto")
    try:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert ("bridge", table) not in lab.tables()


@pytest.mark.privileged
@pytest.mark.parametrize("backend", ["lib", "cli"])
async def test_table_of_a_killed_run_is_swept_at_next_start(lab: Lab, backend: str) -> None:
    proc, table = await _child(lab, backend)
    proc.kill()
    await asyncio.wait_for(proc.wait(), 20)
    assert ("bridge", table) in lab.tables()  # SIGKILL: nobody could remove it
    m = NftManager(77, netns=lab.path(lab.h))
    try:
        await m.start()
        assert m.swept == [f"bridge {table}"]
        assert ("bridge", table) not in lab.tables()
    finally:
        await m.close()


@pytest.mark.privileged
async def test_atexit_removes_the_table_when_nobody_closed_it(lab: Lab) -> None:
    code = _CHILD.replace("await stop.wait()", "import os; os._exit(0) if False else None")
    code = code.replace("        await m.close()\n", "        pass\n")
    code = code.format(ns=lab.path(lab.h), backend="lib", veth=lab.veth)
    done = await asyncio.create_subprocess_exec(sys.executable, "-c", code,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(done.communicate(), 20)
    table = out.decode().strip()
    assert owner_of(table) and done.returncode == 0
    assert ("bridge", table) not in lab.tables()
