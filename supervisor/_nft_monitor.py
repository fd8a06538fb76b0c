"""nftables change notifications: who changed which table (``NFNLGRP_NFTABLES``).

Strategy: a raw ``NETLINK_NETFILTER`` socket bound to the nftables multicast group, read
without blocking; each message is reduced to its type, family, table name (attribute 1 in
every message type) and the sender's port id, so the NFLOG source can verify coi-watch's
table right after someone touched it (:class:`coi_watch.nft.NftManager`). Lost datagrams
(``ENOBUFS``) are reported, not hidden. :mod:`coi_watch.nft` re-exports the public names.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from coi_watch._nft_backend import NftError
from coi_watch.errors import WireError
from coi_watch.netns import call_in_netns
from coi_watch.wire.netlink import iter_messages
from coi_watch.wire.nfnetlink import NETLINK_NETFILTER, cstring, nfgen_header, split_type

__all__ = ("NFNLGRP_NFTABLES", "NFNL_SUBSYS_NFTABLES", "TableChange", "TableMonitor",
           "parse_table_changes")

# linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h
NFNLGRP_NFTABLES: Final = 7
NFNL_SUBSYS_NFTABLES: Final = 10
_NFT_MSG: Final[Mapping[int, str]] = {
    0: "newtable", 2: "deltable", 3: "newchain", 5: "delchain", 6: "newrule", 8: "delrule",
    9: "newset", 11: "delset", 12: "newsetelem", 14: "delsetelem", 15: "newgen",
    16: "newobj", 18: "delobj", 22: "newflowtable", 24: "delflowtable",
}  # fmt: skip
# Attribute 1 names the table in every one of these (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE,
# NFTA_RULE_TABLE, NFTA_SET_TABLE, NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE, ...).
_NFTA_TABLE = 1
_FAMILIES: Final[Mapping[int, str]] = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge",
                                       10: "ip6"}


@dataclass(frozen=True, slots=True)
class TableChange:
    """One nftables change notification: ``what`` (``delrule``, ...), family, table, and
    the netlink port id of the socket that made it (``nlmsg_pid``)."""

    what: str
    family: str
    table: str
    portid: int


def parse_table_changes(buf: bytes | memoryview) -> list[TableChange]:
    """The table changes in one ``NFNLGRP_NFTABLES`` datagram (``newgen`` is skipped).

    Raises:
        WireError: bad framing.
    """
    from coi_watch.wire.netlink import iter_attrs

    out: list[TableChange] = []
    for msg in iter_messages(buf):
        subsys, op = split_type(msg.type)
        what = _NFT_MSG.get(op) if subsys == NFNL_SUBSYS_NFTABLES else None
        if what is None or what == "newgen":
            continue
        fam = nfgen_header(msg.payload).family
        table = ""
        for typ, val in iter_attrs(msg.payload, 4):
            if typ == _NFTA_TABLE:
                table = cstring(val)
                break
        out.append(TableChange(what, _FAMILIES.get(fam, str(fam)), table, msg.pid))
    return out


class TableMonitor:
    """A non-blocking socket subscribed to nftables change notifications in ``netns``.

    Read it with ``loop.add_reader`` and :meth:`read`; close it when done.

    Raises:
        NftError: the socket cannot be opened or subscribed (needs CAP_NET_ADMIN).
    """

    def __init__(self, netns: str | None = None) -> None:
        def make() -> socket.socket:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)

        try:
            self.sock = call_in_netns(netns, make) if netns else make()
        except OSError as exc:
            raise NftError(f"cannot open an nfnetlink socket: {exc}") from exc
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 1 << 20)  # SO_RCVBUFFORCE
        try:
            self.sock.bind((0, 1 << (NFNLGRP_NFTABLES - 1)))
            self.sock.setblocking(False)
        except OSError as exc:
            self.sock.close()
            raise NftError(f"cannot subscribe to nftables changes: {exc}") from exc

    def fileno(self) -> int:
        """The socket's fd (for ``add_reader``)."""
        return self.sock.fileno()

    def read(self, limit: int = 64) -> tuple[list[TableChange], bool]:
        """Drain up to ``limit`` datagrams: the changes, and whether some were lost
        (``ENOBUFS``: assume anything may have changed)."""
        changes: list[TableChange] = []
        lost = False
        for _ in range(limit):
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == 105:  # ENOBUFS
                    lost = True
                    continue
                raise
            try:
                changes += parse_table_changes(data)
            except WireError:
                lost = True
        return changes, lost

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
