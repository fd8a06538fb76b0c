"""A bridge lab in two network namespaces, for the NFLOG and nftables tests.

Namespace ``h`` (the "host": bridge ``br0`` with 198.18.N.1 and .3, 2001:2:0:N::1) and
namespace ``c`` (the "container": 198.18.N.2, 2001:2:0:N::2), joined by a veth whose host end
is a port of ``br0``, as an Incus NIC is. N is random; nothing touches the root namespace,
and every address is in the ranges reserved for tests (RFC 2544 / RFC 5180).
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import subprocess
import time

from coi_watch.containers import ContainerInfo, Nic
from coi_watch.netns import socket_in_netns

__all__ = ("BridgeLab",)


class BridgeLab:
    """Build with :meth:`up`, tear down with :meth:`down` (idempotent)."""

    def __init__(self, prefix: str = "coi-l") -> None:
        self.tag = secrets.token_hex(3)
        self.n = secrets.randbelow(256)
        self.h, self.c = f"{prefix}h-{self.tag}", f"{prefix}c-{self.tag}"
        self.veth = f"vh{self.tag}"
        self.h_ip, self.c_ip, self.h_ip2 = (f"198.18.{self.n}.{i}" for i in (1, 2, 3))
        # Canonical text (2001:2:0:0::1 is written 2001:2::1), as the kernel's addresses are.
        self.h_ip6, self.c_ip6 = (str(ipaddress.ip_address(f"2001:2:0:{self.n}::{i}"))
                                  for i in (1, 2))
        self.made: list[str] = []

    def sh(self, *cmd: str, check: bool = True, stdin: str | None = None
           ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, check=check, capture_output=True, text=True, input=stdin,
                              timeout=30)

    def up(self) -> BridgeLab:
        for ns in (self.h, self.c):
            self.sh("ip", "netns", "add", ns)
            self.made.append(ns)
        h, c = ("ip", "-n", self.h), ("ip", "-n", self.c)
        self.sh(*h, "link", "add", "br0", "type", "bridge")
        self.sh("ip", "link", "add", f"vc{self.tag}", "netns", self.c, "type", "veth", "peer",
                "name", self.veth, "netns", self.h)
        self.sh(*h, "link", "set", self.veth, "master", "br0")
        for addr in (f"{self.h_ip}/24", f"{self.h_ip2}/24"):
            self.sh(*h, "addr", "add", addr, "dev", "br0")
        self.sh(*h, "addr", "add", f"{self.h_ip6}/64", "dev", "br0", "nodad")
        self.sh(*c, "addr", "add", f"{self.c_ip}/24", "dev", f"vc{self.tag}")
        self.sh(*c, "addr", "add", f"{self.c_ip6}/64", "dev", f"vc{self.tag}", "nodad")
        for cmd, dev in ((h, "br0"), (h, self.veth), (h, "lo"), (c, f"vc{self.tag}"), (c, "lo")):
            self.sh(*cmd, "link", "set", dev, "up")
        for _ in range(100):  # bridge port forwarding state and carrier come up async
            if "forwarding" in self.sh("bridge", "-n", self.h, "link", "show", "dev",
                                       self.veth).stdout:
                break
            time.sleep(0.05)
        return self

    def down(self) -> None:
        while self.made:
            self.sh("ip", "netns", "del", self.made.pop(), check=False)

    def path(self, ns: str) -> str:
        return f"/run/netns/{ns}"

    def info(self, name: str = "ct1", *, v6: bool = True) -> ContainerInfo:
        """The lab's "container" as the supervisor would see it."""
        addrs = (self.c_ip, self.c_ip6) if v6 else (self.c_ip,)
        return ContainerInfo(name=name, init_pid=0, nics=(
            Nic(name="eth0", host_name=self.veth, addresses=addrs),))

    def sock(self, ns: str, family: int, kind: int) -> socket.socket:
        return socket_in_netns(self.path(ns), family, kind)
