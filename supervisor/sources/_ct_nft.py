"""Sans-I/O side of coi-watch's nftables table in a container's netns: the table itself,
decoding of nftables change events, and the rule-list query that backs them up.

Strategy: :data:`RULESET` is the smallest rule set that switches conntrack on.
:class:`NftWatch` reads ``NFNLGRP_NFTABLES`` datagrams, collects the operations on
``inet TABLE`` until the transaction's ``NFT_MSG_NEWGEN`` (which names the process that
made it) and returns them as an :class:`NftChange` unless that process was our own ``nft``.
:func:`rule_query` builds the rule-dump request for our chain and :func:`rules_with_ct`
counts the rules of a dump that still hold a ``ct`` expression. No sockets here:
:mod:`coi_watch.sources.conntrack` owns them and re-exports these names.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from coi_watch.wire.netlink import iter_attrs, iter_messages
from coi_watch.wire.nfnetlink import (
    NFGENMSG_LEN,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    cstring,
    message,
    nfgen_header,
    nla,
)

__all__ = (
    "CHAIN",
    "RULESET",
    "TABLE",
    "NftChange",
    "NftWatch",
    "rule_query",
    "rules_with_ct",
)

TABLE = "coi_watch_ct"
CHAIN = "out"
RULESET = f"""table inet {TABLE} {{
\tchain {CHAIN} {{
\t\ttype filter hook output priority 0; policy accept;
\t\tct state new counter comment "coi-watch: switches conntrack on for the host supervisor"
\t}}
}}
"""
"""coi-watch's table in a container's netns: the smallest rule set that makes the kernel
track every flow there (any ``ct`` expression does; the chain never drops anything)."""

_OWN_PIDS = 16

# linux/netfilter/nfnetlink.h, linux/netfilter.h, linux/netfilter/nf_tables.h
NFNL_SUBSYS_NFTABLES = 10
NFNLGRP_NFTABLES = 7
NFPROTO_INET = 1
NFT_MSG_NEWGEN = 15
NFT_MSG_GETRULE = 7
_NFT_OPS = {  # enum nf_tables_msg_types: the ones that change a table's content
    0: "newtable", 2: "deltable", 3: "newchain", 5: "delchain", 6: "newrule", 8: "delrule",
    9: "newset", 11: "delset", 12: "newsetelem", 14: "delsetelem", 18: "newobj",
    20: "delobj", 22: "newflowtable", 24: "delflowtable", 26: "destroytable",
    27: "destroychain", 28: "destroyrule", 29: "destroyset", 30: "destroysetelem",
    31: "destroyobj", 32: "destroyflowtable",
}
_NFT_REMOVALS = frozenset({"deltable", "delchain", "delrule", "destroytable", "destroychain",
                           "destroyrule"})
NFTA_TABLE = 1  # NFTA_{TABLE_NAME,CHAIN_TABLE,RULE_TABLE,SET_TABLE,OBJ_TABLE,...} are all 1
NFTA_RULE_CHAIN = 2
NFTA_RULE_EXPRESSIONS = 4
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME = 1
NFTA_GEN_PROC_PID = 2
NFTA_GEN_PROC_NAME = 3


@dataclass(frozen=True, slots=True)
class NftChange:
    """One nftables transaction by another process that touched our table."""

    ops: tuple[str, ...]
    pid: int
    comm: str

    @property
    def removed(self) -> bool:
        """True when the transaction deleted our table, chain or rule."""
        return any(op in _NFT_REMOVALS for op in self.ops)

    def describe(self) -> str:
        what = ", ".join(dict.fromkeys(self.ops))
        return f"{what} on table inet {TABLE} by pid {self.pid} ({self.comm or '?'})"


@dataclass(slots=True)
class NftWatch:
    """Sans-I/O reader of nftables events (``NFNLGRP_NFTABLES``) in one netns.

    Collects the operations on ``inet TABLE`` until the transaction's ``NEWGEN`` and returns
    them as an :class:`NftChange` unless the pid is one of ``own`` (our ``nft`` runs).
    """

    own: collections.deque[int] = field(default_factory=lambda: collections.deque(
        maxlen=_OWN_PIDS))
    _ops: list[str] = field(default_factory=list)

    def feed(self, data: bytes) -> list[NftChange]:
        """Changes completed in this datagram.

        Raises:
            WireError: bad framing.
        """
        out = []
        for msg in iter_messages(data):
            if msg.type >> 8 != NFNL_SUBSYS_NFTABLES:
                continue
            op = msg.type & 0xFF
            if op == NFT_MSG_NEWGEN:
                attrs = dict(iter_attrs(msg.payload, NFGENMSG_LEN))
                pid_raw = attrs.get(NFTA_GEN_PROC_PID)
                pid = int.from_bytes(pid_raw, "big") if pid_raw is not None and len(
                    pid_raw) == 4 else 0
                comm = cstring(attrs[NFTA_GEN_PROC_NAME]) if NFTA_GEN_PROC_NAME in attrs else ""
                if self._ops and pid not in self.own:
                    out.append(NftChange(tuple(self._ops), pid, comm))
                self._ops.clear()
                continue
            name = _NFT_OPS.get(op)
            if name is None or nfgen_header(msg.payload).family != NFPROTO_INET:
                continue
            for typ, val in iter_attrs(msg.payload, NFGENMSG_LEN):
                if typ == NFTA_TABLE:
                    if cstring(val) == TABLE:
                        self._ops.append(name)
                    break
        return out

    def reset(self) -> None:
        """Forget a half-seen transaction (after ``ENOBUFS``)."""
        self._ops.clear()


def rule_query(seq: int) -> bytes:
    """A dump request for the rules of our chain (``NFT_MSG_GETRULE`` filtered by table and
    chain: ``nf_tables_dump_rules`` honours both)."""
    attrs = nla(NFTA_TABLE, TABLE.encode() + b"\0") + nla(NFTA_RULE_CHAIN, CHAIN.encode() + b"\0")
    return message(NFNL_SUBSYS_NFTABLES, NFT_MSG_GETRULE, attrs, family=NFPROTO_INET,
                   flags=NLM_F_REQUEST | NLM_F_DUMP, seq=seq)


def rules_with_ct(data: bytes) -> int:
    """How many ``NEWRULE`` messages in a rule-dump datagram hold a ``ct`` expression.

    Raises:
        WireError: bad framing.
    """
    n = 0
    for msg in iter_messages(data):
        if msg.type != (NFNL_SUBSYS_NFTABLES << 8) | 6:
            continue
        for typ, val in iter_attrs(msg.payload, NFGENMSG_LEN):
            if typ != NFTA_RULE_EXPRESSIONS:
                continue
            for etyp, elem in iter_attrs(val):
                if etyp != NFTA_LIST_ELEM:
                    continue
                if any(t == NFTA_EXPR_NAME and cstring(v) == "ct" for t, v in iter_attrs(elem)):
                    n += 1
                    break
    return n
