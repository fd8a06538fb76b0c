"""Enrich an exec event from ``/proc``: argv, exe, cwd, ids, stdio sockets, ancestry.

Strategy: read everything the detectors need at once, while the process still exists, and
never raise. Each read is defensive because the pid can vanish between two syscalls; what
could be read is returned and ``partial=True`` says the rest is missing.

Where the data comes from, and why:

- ``ppid`` and ``uid`` (effective, host id): psutil (``/proc/PID/stat`` and ``status``).
- ``exe``, ``cwd`` and fd targets: ``readlink`` as bytes, ourselves. psutil strips a
  `` (deleted)`` suffix after checking the path on the *host's* filesystem, which loses the
  sign of a deleted or ``memfd`` executable and is meaningless for a container's paths; and a
  ``str`` readlink would smuggle lone surrogates (undecodable bytes) into the event.
- ``comm``: ``/proc/PID/comm``, the kernel's name exactly as PROC_EVENT_COMM reports it
  (psutil's ``name()`` substitutes argv[0] for 15-character names).
- ``argv``: ``/proc/PID/cmdline`` as bytes, capped at :data:`ARGV_CAP`, decoded as UTF-8 with
  backslash escapes, so binary arguments become safe ``str`` that orjson can always write.
- stdio: ``/proc/PID/fd/{0,1,2}``; a ``socket:[INODE]`` is looked up in
  ``/proc/PID/net/{tcp,tcp6,udp,udp6,unix}``, which is the process's *own* network namespace
  (psutil's ``net_connections()`` reads the host's tables and returns ``[]`` for container
  processes: ``notes/kernel-sources.md`` section 3). Tables are read lazily, once per
  enrichment, and only as far as needed to find the inodes.
- ancestry: up to :data:`ANCESTRY_DEPTH` parents from ``/proc/PID/stat``, stopping at pid 1 or
  at the first process that is not in the same container.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

import psutil

from coi_watch.events import Ancestor, Fd, ProcExec, wall_from_mono
from coi_watch.sources.attribution import Attribution, container_of

__all__ = (
    "ANCESTOR_CMDLINE_CAP",
    "ANCESTRY_DEPTH",
    "ARGV_CAP",
    "NET_TABLES",
    "TCP_STATES",
    "UNIX_STATES",
    "Argv",
    "NetTables",
    "SockInfo",
    "classify_fd",
    "decode_inet_addr",
    "enrich_exec",
    "parse_inet_table",
    "parse_unix_table",
    "read_ancestry",
    "read_argv",
    "read_comm",
    "read_stat",
    "read_stdio",
    "split_argv",
)

ARGV_CAP = 256 * 1024
"""Bytes of ``/proc/PID/cmdline`` kept for a ProcExec (all arguments together)."""
ANCESTOR_CMDLINE_CAP = 1024
ANCESTRY_DEPTH = 8
_LINK_MAX = 4096  # PATH_MAX: a readlink target longer than this is cut by the kernel anyway

# include/net/tcp_states.h. /proc/net/udp uses the same numbers (1 = connected, 7 = none).
TCP_STATES: Mapping[int, str] = MappingProxyType(
    {
        1: "ESTABLISHED",
        2: "SYN_SENT",
        3: "SYN_RECV",
        4: "FIN_WAIT1",
        5: "FIN_WAIT2",
        6: "TIME_WAIT",
        7: "CLOSE",
        8: "CLOSE_WAIT",
        9: "LAST_ACK",
        10: "LISTEN",
        11: "CLOSING",
        12: "NEW_SYN_RECV",
        13: "BOUND_INACTIVE",
    }
)
# include/uapi/linux/net.h, socket_state (column "St" of /proc/net/unix).
UNIX_STATES: Mapping[int, str] = MappingProxyType(
    {0: "FREE", 1: "UNCONNECTED", 2: "CONNECTING", 3: "CONNECTED", 4: "DISCONNECTING"}
)
_SO_ACCEPTCON = 0x10000  # include/linux/net.h __SO_ACCEPTCON: a listening unix socket

NET_TABLES: tuple[tuple[str, bool], ...] = (
    ("tcp", False),
    ("tcp6", True),
    ("udp", False),
    ("udp6", True),
)
"""The inet tables searched for a socket inode, in order, with their "is IPv6" flag."""


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


# --------------------------------------------------------------------------- small readers


class Argv(NamedTuple):
    """``argv`` read from ``/proc/PID/cmdline``; ``ok`` is false when the read failed."""

    argv: tuple[str, ...]
    truncated: bool
    ok: bool


def split_argv(raw: bytes, *, truncated: bool = False) -> tuple[str, ...]:
    """Split raw ``cmdline`` bytes at NULs and decode each argument safely.

    A complete cmdline ends with a NUL (dropped); a truncated one keeps its cut last argument.
    A process that rewrote its argv area (setproctitle) may have no NULs at all: one argument.
    """
    if not raw:
        return ()
    if raw.endswith(b"\0") and not truncated:
        raw = raw[:-1]
    return tuple(_text(a) for a in raw.split(b"\0"))


def read_argv(pid: int, cap: int = ARGV_CAP, proc: str = "/proc") -> Argv:
    """Read up to ``cap`` bytes of ``/proc/PID/cmdline`` (never raises)."""
    chunks: list[bytes] = []
    total = 0
    try:
        fd = os.open(f"{proc}/{pid}/cmdline", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return Argv((), False, False)
    try:
        while total <= cap:
            chunk = os.read(fd, min(cap + 1 - total, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError:
        # ESRCH mid-read: the process exited. Keep what we had.
        return Argv(split_argv(b"".join(chunks)[:cap], truncated=True), total > 0, False)
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    truncated = len(raw) > cap
    return Argv(split_argv(raw[:cap], truncated=truncated), truncated, True)


def read_comm(pid: int, proc: str = "/proc") -> str | None:
    """``/proc/PID/comm`` without the newline, or ``None`` when unreadable."""
    try:
        with open(f"{proc}/{pid}/comm", "rb") as f:
            return _text(f.read(64).rstrip(b"\n"))
    except OSError:
        return None


def read_stat(pid: int, proc: str = "/proc") -> tuple[str, int] | None:
    """``(comm, ppid)`` from ``/proc/PID/stat``, or ``None`` when unreadable.

    The comm is in parentheses and may itself hold ``)`` or spaces, so the fields after it
    are found from the *last* ``)`` (``proc_pid_stat(5)``: ``pid (comm) state ppid ...``).
    """
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            raw = f.read(4096)
    except OSError:
        return None
    lp, rp = raw.find(b"("), raw.rfind(b")")
    if lp < 0 or rp < lp:
        return None
    rest = raw[rp + 1 :].split()
    try:
        ppid = int(rest[1])
    except (IndexError, ValueError):
        return None
    return _text(raw[lp + 1 : rp]), ppid


def _readlink(path: str) -> str | None:
    try:
        return _text(os.readlink(os.fsencode(path)))
    except OSError:
        return None


# --------------------------------------------------------------------------- sockets


class SockInfo(NamedTuple):
    """One row of a ``/proc/PID/net`` table, ready for an :class:`Fd`."""

    proto: str
    state: str
    local: str
    remote: str


def decode_inet_addr(field: str, v6: bool) -> str:
    """``0100007F:115C`` -> ``127.0.0.1:4444``; IPv6 in brackets.

    The kernel prints each 32-bit word of the (network-order) address with ``%08X`` after
    loading it as a native integer (``tcp4_seq_show``/``tcp6_seq_show``), so packing each word
    back in native order restores the address bytes on any endianness. The port is printed
    already in host order.

    Raises:
        ValueError: the field is not ``HEX:HEX`` of the right width.
    """
    addr_hex, _, port_hex = field.partition(":")
    words = 4 if v6 else 1
    if len(addr_hex) != 8 * words or not port_hex:
        raise ValueError(f"bad address field {field!r}")
    packed = b"".join(
        struct.pack("=I", int(addr_hex[8 * i : 8 * i + 8], 16)) for i in range(words)
    )
    port = int(port_hex, 16)
    if v6:
        return f"[{socket.inet_ntop(socket.AF_INET6, packed)}]:{port}"
    return f"{socket.inet_ntop(socket.AF_INET, packed)}:{port}"


def parse_inet_table(text: str, proto: str, v6: bool) -> dict[int, SockInfo]:
    """Parse ``/proc/PID/net/{tcp,tcp6,udp,udp6}`` into ``inode -> SockInfo``.

    Columns (``tcp4_seq_show``): ``sl local rem st tx:rx tr:when retrnsmt uid timeout inode``.
    Malformed lines are skipped; inode 0 (sockets being torn down) is ignored.
    """
    out: dict[int, SockInfo] = {}
    for line in text.splitlines()[1:]:
        f = line.split()
        try:
            inode = int(f[9])
            st = int(f[3], 16)
            local = decode_inet_addr(f[1], v6)
            remote = decode_inet_addr(f[2], v6)
        except (IndexError, ValueError):
            continue
        if inode:
            out[inode] = SockInfo(proto, TCP_STATES.get(st, str(st)), local, remote)
    return out


def parse_unix_table(text: str) -> dict[int, SockInfo]:
    """Parse ``/proc/PID/net/unix`` into ``inode -> SockInfo`` (``local`` = bound path).

    Columns (``unix_seq_show``): ``Num RefCount Protocol Flags Type St Inode [Path]``; the
    path may contain spaces, abstract names start with ``@``.
    """
    out: dict[int, SockInfo] = {}
    for line in text.splitlines()[1:]:
        f = line.split(None, 7)
        try:
            flags = int(f[3], 16)
            st = int(f[5], 16)
            inode = int(f[6])
        except (IndexError, ValueError):
            continue
        state = "LISTEN" if flags & _SO_ACCEPTCON else UNIX_STATES.get(st, str(st))
        out[inode] = SockInfo("unix", state, f[7].rstrip("\n") if len(f) > 7 else "", "")
    return out


class NetTables:
    """The socket tables of one process's network namespace, read lazily and only once.

    ``lookup`` reads the tables in :data:`NET_TABLES` order, then ``unix``, and stops as
    soon as the inode is found; tables already read are kept for the next lookup (stdio often
    holds the same socket three times). ``ok`` turns false if a table could not be read.
    """

    def __init__(self, pid: int, proc: str = "/proc") -> None:
        self._base = f"{proc}/{pid}/net"
        self._pending: list[tuple[str, bool | None]] = [*NET_TABLES, ("unix", None)]
        self._rows: dict[int, SockInfo] = {}
        self.ok = True

    def lookup(self, inode: int) -> SockInfo | None:
        while inode not in self._rows and self._pending:
            name, v6 = self._pending.pop(0)
            try:
                with open(f"{self._base}/{name}", "rb") as f:
                    text = f.read().decode("ascii", "replace")
            except OSError:
                # A missing table (no IPv6 in that netns) is normal; a vanished process
                # makes every table disappear, which read_stdio reports as partial.
                self.ok = self.ok and os.path.isdir(self._base)
                continue
            rows = parse_unix_table(text) if v6 is None else parse_inet_table(text, name, v6)
            for ino, row in rows.items():
                self._rows.setdefault(ino, row)
        return self._rows.get(inode)


def classify_fd(fd: int, target: str | None) -> Fd:
    """An :class:`Fd` from a ``readlink /proc/PID/fd/N`` result (``None``: unreadable)."""
    if target is None:
        return Fd(fd=fd, type="gone")
    if target.startswith("socket:["):
        kind = "socket"
    elif target.startswith("pipe:["):
        kind = "pipe"
    elif target.startswith("anon_inode:"):
        kind = "anon"
    elif target.startswith(("/dev/pts/", "/dev/tty", "/dev/console")) or target == "/dev/ptmx":
        kind = "tty"
    elif target.startswith("/"):
        kind = "file"
    else:
        kind = "other"
    return Fd(fd=fd, type=kind, target=target)


def _socket_inode(target: str) -> int | None:
    try:
        return int(target[len("socket:[") : -1])
    except ValueError:
        return None


def read_stdio(
    pid: int, proc: str = "/proc", fds: Iterable[int] = (0, 1, 2)
) -> tuple[tuple[Fd, ...], bool]:
    """What fds 0, 1, 2 point to, sockets resolved in the process's own netns.

    Returns ``(fds, ok)``. A closed fd is left out; if the process vanished its fds are
    ``gone`` and ``ok`` is false.
    """
    out: list[Fd] = []
    ok = True
    tables: NetTables | None = None
    for n in fds:
        target = _readlink(f"{proc}/{pid}/fd/{n}")
        if target is None:
            if os.path.isdir(f"{proc}/{pid}/fd"):
                continue  # fd n is simply not open
            ok = False
        fd = classify_fd(n, target)
        if fd.type == "socket":
            inode = _socket_inode(fd.target)
            if inode is not None:
                tables = tables or NetTables(pid, proc)
                row = tables.lookup(inode)
                if row is not None:
                    fd = Fd(fd=n, type="socket", target=fd.target, proto=row.proto,
                            state=row.state, local=row.local, remote=row.remote)
                ok = ok and tables.ok
        out.append(fd)
    return tuple(out), ok


# --------------------------------------------------------------------------- ancestry


def read_ancestry(
    ppid: int,
    *,
    container: str | None,
    attribute: Callable[[int], Attribution] = container_of,
    proc: str = "/proc",
    depth: int = ANCESTRY_DEPTH,
) -> tuple[Ancestor, ...]:
    """The parent chain from ``ppid`` upwards, nearest first, while it stays in
    ``container`` (per ``attribute``), for at most ``depth`` steps and never pid 0 or 1."""
    out: list[Ancestor] = []
    pid, seen = ppid, set[int]()
    while pid > 1 and len(out) < depth and pid not in seen:
        seen.add(pid)
        if attribute(pid) != container:
            break
        stat = read_stat(pid, proc)
        if stat is None:
            break
        comm, parent = stat
        args = read_argv(pid, ANCESTOR_CMDLINE_CAP, proc)
        cmdline = " ".join(args.argv)[:ANCESTOR_CMDLINE_CAP]
        exe = _readlink(f"{proc}/{pid}/exe") or ""
        out.append(Ancestor(pid=pid, comm=comm, exe=exe, cmdline=cmdline))
        pid = parent
    return tuple(out)


# --------------------------------------------------------------------------- the event


@dataclass(slots=True)
class _Ids:
    ppid: int = 0
    uid: int = -1
    ok: bool = False


def _ids(pid: int) -> _Ids:
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            return _Ids(ppid=proc.ppid(), uid=proc.uids().effective, ok=True)
    except (psutil.Error, OSError):
        # NoSuchProcess / ZombieProcess (exited), AccessDenied: nothing reliable to report.
        return _Ids()


def enrich_exec(
    pid: int,
    *,
    container: str,
    ts_ns: int,
    attribute: Callable[[int], Attribution] = container_of,
) -> ProcExec:
    """Build the :class:`~coi_watch.events.ProcExec` for an exec of ``pid`` in ``container``.

    ``ts_ns`` is the kernel's ``CLOCK_MONOTONIC`` stamp of the exec; ``attribute`` decides
    which ancestors still belong to ``container``. Never raises: a vanished process gives an
    event with what was read and ``partial=True``.
    """
    args = read_argv(pid)
    comm = read_comm(pid)
    exe = _readlink(f"/proc/{pid}/exe")
    cwd = _readlink(f"/proc/{pid}/cwd")
    ids = _ids(pid)
    stdio, stdio_ok = read_stdio(pid)
    ancestry = (
        read_ancestry(ids.ppid, container=container, attribute=attribute) if ids.ok else ()
    )
    # A zombie (exited, not yet reaped) still has /proc/PID but no exe link and an empty
    # cmdline: the exe read is what tells it apart from a live process exec'd with argc 0.
    partial = not (
        args.ok and comm is not None and exe is not None and cwd is not None
        and ids.ok and stdio_ok
    )
    return ProcExec(
        ts_ns=ts_ns,
        wall_ns=wall_from_mono(ts_ns),
        container=container,
        pid=pid,
        ppid=ids.ppid,
        uid=ids.uid,
        comm=comm or "",
        exe=exe or "",
        argv=args.argv,
        argv_truncated=args.truncated,
        cwd=cwd or "",
        stdio=stdio,
        ancestry=ancestry,
        partial=partial,
    )
