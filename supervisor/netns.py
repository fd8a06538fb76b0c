"""Work inside another network namespace: sockets, sysctl files and commands.

Strategy: ``setns(2)`` changes the namespace of the calling *thread* only, and Python 3.11
has no ``os.setns`` (``notes/kernel-sources.md``, environment facts), so it is called
through ctypes on a **fresh, throwaway thread**: the thread enters the namespace, runs one
callable and ends. It never has to switch back, so a failed switch-back can never leave the
event loop's thread (or a pooled worker) stranded in a container's namespace. What the
callable creates stays bound to the namespace it was made in after the thread is gone:

- a socket (``NETLINK_NETFILTER`` for conntrack and nftables events) belongs to the netns
  it was created in;
- a ``/proc/sys/net/...`` file descriptor belongs to the netns that opened it: the sysctl
  table is chosen at lookup (``net_ctl_header_lookup`` uses ``current->nsproxy->net_ns``,
  ``net/sysctl_net.c``), and reads, writes and the permission check later go through that
  table's header (``proc_sys_call_handler``, ``fs/proc/proc_sysctl.c``). So a sysctl can be
  opened once and re-read cheaply from the loop thread; once the namespace is gone the fd
  fails with ``ENOENT``.

Namespaces are named by an open fd (:func:`open_netns`, e.g. on ``/proc/PID/ns/net``) so a
recycled pid cannot redirect us to another container later. Commands (``nft``) run with
``nsenter --net=/proc/self/fd/N`` and the fd passed down; ``nsenter`` without ``--pid``
execs the program in place, so the pid we get is the program's own (the conntrack source
uses it to recognise its own nftables changes).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = (
    "CLONE_NEWNET",
    "Ran",
    "acall_in_netns",
    "call_in_netns",
    "netns_inode",
    "open_netns",
    "proc_netns_path",
    "run_in_netns",
    "setns",
    "socket_in_netns",
)

T = TypeVar("T")
NetNs = int | str
"""A namespace: an fd from :func:`open_netns`, or a path (``/proc/PID/ns/net``,
``/run/netns/NAME``)."""

CLONE_NEWNET = 0x40000000  # linux/sched.h
_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.setns.restype = ctypes.c_int


def proc_netns_path(pid: int) -> str:
    """``/proc/PID/ns/net``: the network namespace of a process (a container's init)."""
    return f"/proc/{pid}/ns/net"


def open_netns(path: str) -> int:
    """An ``O_RDONLY | O_CLOEXEC`` fd on a namespace file; close it with ``os.close``.

    Raises:
        OSError: the path does not exist (the process is gone) or is not readable.
    """
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def netns_inode(ns: NetNs) -> int:
    """The namespace's inode number: equal inodes (on nsfs) mean the same namespace."""
    return os.stat(ns).st_ino


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the *calling thread* into the namespace ``fd`` refers to.

    Raises:
        OSError: from ``setns(2)`` (``EPERM`` without ``CAP_SYS_ADMIN`` over it, ``EINVAL``
            when ``fd`` is not a namespace of type ``nstype``).
    """
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _enter(ns: NetNs) -> None:
    if isinstance(ns, int):
        setns(ns)
        return
    fd = open_netns(ns)
    try:
        setns(fd)
    finally:
        os.close(fd)


def call_in_netns(ns: NetNs, fn: Callable[[], T]) -> T:
    """Run ``fn()`` on a fresh thread inside ``ns`` and return (or raise) what it did.

    Blocks the caller until ``fn`` returns (microseconds for a socket or a sysctl); the
    thread is discarded afterwards, still in ``ns``.
    """
    box: list[Any] = []

    def body() -> None:
        try:
            _enter(ns)
            box.append((True, fn()))
        except BaseException as exc:  # handed to the caller, re-raised there
            box.append((False, exc))

    t = threading.Thread(target=body, name="coi-netns", daemon=True)
    t.start()
    t.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


async def acall_in_netns(ns: NetNs, fn: Callable[[], T]) -> T:
    """:func:`call_in_netns` without blocking the event loop.

    If the caller is cancelled while ``fn`` runs, a result with a ``close`` method (a
    socket, a file) is closed when it arrives, so nothing leaks.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if fut.cancelled():
            if ok and hasattr(value, "close"):
                value.close()
        elif ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def body() -> None:
        try:
            _enter(ns)
            result: tuple[bool, Any] = (True, fn())
        except BaseException as exc:
            result = (False, exc)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(deliver, *result)

    threading.Thread(target=body, name="coi-netns", daemon=True).start()
    return await fut


def socket_in_netns(ns: NetNs, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside ``ns`` (it stays there; the caller may use it anywhere)."""
    return call_in_netns(ns, lambda: socket.socket(family, kind, proto))


@dataclass(frozen=True, slots=True)
class Ran:
    """A finished command: its pid, exit status and output."""

    pid: int
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def error(self) -> str:
        """stderr as text, for messages."""
        return self.stderr.decode("utf-8", "backslashreplace").strip()


async def run_in_netns(
    ns: NetNs,
    argv: Sequence[str],
    *,
    stdin: bytes | None = None,
    timeout: float = 10.0,
    on_start: Callable[[int], None] | None = None,
) -> Ran:
    """Run ``argv`` inside ``ns`` through ``nsenter --net`` (no other namespace changes).

    The command keeps our mount namespace, so host binaries (``nft``) are used, and acts
    on the target's network namespace only. ``on_start(pid)`` is called as soon as the
    process exists and before it is given ``stdin`` (so a command that reads its work from
    stdin, like ``nft -f -``, has done nothing yet); ``nsenter`` execs in place, so this is
    the pid of ``argv[0]`` itself.

    Raises:
        OSError: ``nsenter`` cannot be started.
        TimeoutError: the command did not finish in ``timeout`` seconds (it is killed).
    """
    pass_fds: tuple[int, ...] = ()
    if isinstance(ns, int):
        target, pass_fds = f"--net=/proc/self/fd/{ns}", (ns,)
    else:
        target = f"--net={ns}"
    proc = await asyncio.create_subprocess_exec(
        "nsenter", target, "--", *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, pass_fds=pass_fds,
    )  # fmt: skip
    if on_start is not None:
        on_start(proc.pid)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(TimeoutError, ProcessLookupError):
            await asyncio.wait_for(proc.wait(), 2.0)
        raise
    return Ran(proc.pid, proc.returncode if proc.returncode is not None else -1, out, err)
