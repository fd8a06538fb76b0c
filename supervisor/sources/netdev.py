"""Host network devices coming and going (veth pairs of containers), from kernel uevents.

Strategy: a pyudev monitor on the *kernel* uevent netlink group
(``Monitor.from_netlink(ctx, source="kernel")``, filtered to subsystem ``net``), read with
``loop.add_reader``, so a veth is known within a couple of milliseconds (p50 1.4 ms in
``notes/kernel-sources.md`` section 5) without polling. ``source="udev"`` would start
without error and never deliver anything on this host: there is no udevd to re-broadcast.

Uevents carry the interface name and ``IFINDEX`` but not the link kind, so on ``add`` the
driver is asked with the ``SIOCETHTOOL``/``ETHTOOL_GDRVINFO`` ioctl (``veth``, ``bridge``,
``tun``, ...). By the time a ``remove`` arrives the device is gone, so kinds are remembered
from ``add`` (and from a scan of ``/sys/class/net`` at start). A device that vanished (or
was moved into a container's namespace) before its kind could be read has kind ``""``.

Only devices of the host network namespace produce uevents here: a veth created inside
a container's namespace is silent, and moving a host veth into a namespace shows up as a
``remove`` on the host (how Incus hands the peer of a container's NIC to the container).
The host end that stays is the ``host_name`` Incus reports for the NIC, which is what the
NFLOG rules match on.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import os
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

__all__ = ("NetdevEvent", "NetdevWatcher", "link_kind")

SIOCETHTOOL: Final = 0x8946  # linux/sockios.h
ETHTOOL_GDRVINFO: Final = 0x00000003  # linux/ethtool.h
# struct ethtool_drvinfo: __u32 cmd; char driver[32]; version[32]; fw_version[32];
# bus_info[32]; erom_version[32]; reserved2[12]; __u32 n_priv_flags, n_stats, testinfo_len,
# eedump_len, regdump_len.
_DRVINFO_SIZE: Final = 4 + 32 * 5 + 12 + 4 * 5
_IFNAMSIZ: Final = 16
_RCVBUF: Final = 1 << 20
_SYS_NET: Final = "/sys/class/net"


@dataclass(frozen=True, slots=True, kw_only=True)
class NetdevEvent:
    """A network device appeared (``add``), went (``remove``) or was renamed (``move``,
    ``old_name`` set). ``kind`` is the driver name (``veth``) or ``""`` when unknown;
    ``seq`` the kernel's uevent ``SEQNUM``."""

    action: str
    name: str
    ifindex: int
    kind: str = ""
    old_name: str = ""
    seq: int = 0


def link_kind(name: str, sock: socket.socket | None = None) -> str:
    """The driver of interface ``name`` in our network namespace (``ETHTOOL_GDRVINFO``),
    or ``""`` if it does not exist (any more) or does not say."""
    raw = name.encode("utf-8", "surrogateescape")
    if not raw or len(raw) >= _IFNAMSIZ:
        return ""
    info = array.array("B", struct.pack("=I", ETHTOOL_GDRVINFO) + bytes(_DRVINFO_SIZE - 4))
    addr, _ = info.buffer_info()
    ifreq = struct.pack(f"@{_IFNAMSIZ}sP", raw, addr).ljust(40, b"\0")  # struct ifreq
    own = sock is None
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
    except OSError:
        return ""
    finally:
        if own:
            s.close()
    return bytes(info[4:36]).split(b"\0", 1)[0].decode("ascii", "replace")


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


class NetdevWatcher:
    """Reports host network devices of the chosen kinds to ``callback`` as they come and go.

    ``kinds`` (default ``{"veth"}``; ``None`` for every device) filters what is reported;
    ``known`` is the current set (name -> ifindex), seeded from ``/sys/class/net`` by
    :meth:`start`. ``callback`` runs in the event loop's thread, inside the reader; it must
    not block. ``stats`` counts ``uevents``, ``reported`` and ``errors`` (receive failures,
    e.g. ``ENOBUFS`` when uevents came faster than we read: the next ``add``/``remove``
    still corrects :attr:`known`).

    Raises (from :meth:`start`):
        OSError: the uevent socket cannot be opened.
    """

    def __init__(
        self,
        callback: Callable[[NetdevEvent], None],
        *,
        kinds: frozenset[str] | None = frozenset({"veth"}),
        sys_net: str = _SYS_NET,
    ) -> None:
        self.callback = callback
        self.kinds = kinds
        self.stats: dict[str, int] = dict.fromkeys(("uevents", "reported", "errors"), 0)
        self._sys_net = sys_net
        self._devices: dict[str, tuple[int, str]] = {}  # name -> (ifindex, kind)
        self._monitor: Any = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def known(self) -> Mapping[str, int]:
        """Devices of the wanted kinds present now: name -> ifindex."""
        return {n: i for n, (i, k) in self._devices.items() if self._wants(k)}

    def _wants(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds

    # -------------------------------------------------------------- lifecycle

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Subscribe to kernel uevents, then take stock of the devices already there.

        Subscribing first means a device added meanwhile is seen twice at worst, never
        missed.

        Raises:
            OSError: the netlink socket cannot be opened (needs no privilege normally).
        """
        import pyudev  # local: importing pyudev loads libudev

        if self._monitor is not None:
            return
        self._loop = loop or asyncio.get_running_loop()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
        monitor.filter_by("net")
        with contextlib.suppress(OSError):  # SO_RCVBUFFORCE needs root; the default works
            monitor.set_receive_buffer_size(_RCVBUF)
        monitor.start()
        self._monitor = monitor
        self._loop.add_reader(monitor.fileno(), self._on_readable)
        self._scan()

    def close(self) -> None:
        """Unsubscribe and close the sockets. Idempotent."""
        if self._monitor is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._monitor.fileno())
            # pyudev closes the netlink socket when the last reference to the monitor goes;
            # drop ours now so that happens here and not at some later collection.
            self._monitor = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> NetdevWatcher:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -------------------------------------------------------------- input

    def _scan(self) -> None:
        try:
            names = os.listdir(self._sys_net)
        except OSError:
            return
        for name in names:
            if name in self._devices:
                continue
            try:
                with open(f"{self._sys_net}/{name}/ifindex", "rb") as f:
                    ifindex = int(f.read().strip() or 0)
            except (OSError, ValueError):
                continue
            self._devices[name] = (ifindex, link_kind(name, self._sock))

    def _on_readable(self) -> None:
        monitor = self._monitor
        for _ in range(256):  # bounded: stay fair to the loop
            if monitor is None:
                return
            try:
                device = monitor.poll(timeout=0)
            except OSError:
                self.stats["errors"] += 1
                continue
            if device is None:
                return
            self.stats["uevents"] += 1
            self.handle(str(device.action or ""), str(device.sys_name or ""),
                        dict(device.properties))

    def handle(self, action: str, name: str, props: Mapping[str, Any]) -> None:
        """Handle one uevent (``ACTION``, interface name, its properties); public so tests
        can feed recorded uevents."""
        name = str(props.get("INTERFACE") or name)
        ifindex = _int(props.get("IFINDEX"))
        seq = _int(props.get("SEQNUM"))
        if action == "add":
            kind = link_kind(name, self._sock)
            self._devices[name] = (ifindex, kind)
            ev = NetdevEvent(action="add", name=name, ifindex=ifindex, kind=kind, seq=seq)
        elif action == "remove":
            old = self._devices.pop(name, None)
            kind = old[1] if old else ""
            ev = NetdevEvent(action="remove", name=name, ifindex=ifindex or (old[0] if old else 0),
                             kind=kind, seq=seq)
        elif action == "move":
            old_name = os.path.basename(str(props.get("DEVPATH_OLD") or ""))
            old = self._devices.pop(old_name, None)
            kind = old[1] if old else link_kind(name, self._sock)
            self._devices[name] = (ifindex, kind)
            ev = NetdevEvent(action="move", name=name, ifindex=ifindex, kind=kind,
                             old_name=old_name, seq=seq)
        else:
            return  # "change" and friends: nothing about presence
        if self._wants(ev.kind):
            self.stats["reported"] += 1
            self.callback(ev)
