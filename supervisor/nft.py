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

Code: this module holds the manager and its state; the rule documents and names are in
``_nft_rules``, the libnftables / ``nft`` backends in ``_nft_backend`` and the change
notifications in ``_nft_monitor`` (all re-exported here).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from coi_watch._nft_backend import Backend, NftError, _backend, _objects, _version, check_table
from coi_watch._nft_monitor import NFNL_SUBSYS_NFTABLES as NFNL_SUBSYS_NFTABLES
from coi_watch._nft_monitor import NFNLGRP_NFTABLES as NFNLGRP_NFTABLES
from coi_watch._nft_monitor import TableChange, TableMonitor, parse_table_changes
from coi_watch._nft_rules import (
    CHAIN_PRIORITY,
    FAMILY,
    PREFIX_ANSWER,
    PREFIX_DNS,
    PREFIX_NEW,
    PREFIX_NEW_DNS,
    TABLE_PREFIX,
    Quarantine,
    TableState,
    _chain,
    _check_ifname,
    _doc,
    _element,
    _rule,
    answer_rules,
    chain_name,
    container_rules,
    observe_rules,
    owner_of,
    process_start,
    quarantine_rules,
    skeleton,
    table_name,
)
from coi_watch.containers import ContainerInfo

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


# --------------------------------------------------------------------------- state


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

