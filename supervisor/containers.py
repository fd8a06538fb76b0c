"""What the supervisor knows about one watched container, for sources that need it.

Strategy: when a container is attached (at start, or when Incus reports it started), the
supervisor reads its state once (``GET /1.0/instances/NAME/state``: ``pid`` and ``network``)
into a frozen :class:`ContainerInfo` and hands it to every source that has an ``attach``
hook; ``release(name)`` follows when it stops. Sources then work from these facts alone:
the init pid gives ``/proc/PID/ns/net`` (the container's network namespace, for conntrack)
and ``/proc/PID/root`` (its mounts, for fanotify); each NIC's ``host_name`` is the host-side
veth, on which host-namespace nftables rules match (container root cannot touch those).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ("ContainerInfo", "Nic", "info_from_state")


@dataclass(frozen=True, slots=True, kw_only=True)
class Nic:
    """One network interface of a container, as Incus reports it."""

    name: str
    host_name: str = ""
    hwaddr: str = ""
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerInfo:
    """A watched container: its name, init pid (host view) and NICs (loopback excluded)."""

    name: str
    init_pid: int
    nics: tuple[Nic, ...] = ()

    @property
    def host_veths(self) -> tuple[str, ...]:
        """Host-side interface names of the container's NICs."""
        return tuple(n.host_name for n in self.nics if n.host_name)

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every address of the container's NICs."""
        return tuple(a for n in self.nics for a in n.addresses)


def info_from_state(name: str, state: Mapping[str, Any]) -> ContainerInfo:
    """Build a :class:`ContainerInfo` from Incus's instance state object."""
    nics = []
    for nic_name, nic in (state.get("network") or {}).items():
        if nic.get("type") == "loopback":
            continue
        addrs = tuple(a["address"] for a in nic.get("addresses") or () if a.get("address"))
        nics.append(Nic(name=nic_name, host_name=nic.get("host_name") or "",
                        hwaddr=nic.get("hwaddr") or "", addresses=addrs))
    return ContainerInfo(name=name, init_pid=int(state.get("pid") or 0), nics=tuple(nics))
