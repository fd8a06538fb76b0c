"""Network helpers shared by the network detectors: addresses, domains, entropy.

Strategy: everything here is called per event on data a container controls, so each helper
is linear in its input, never uses a regex, and caches only in bounded tables.

- **Addresses.** :func:`canon` parses an address string once (:mod:`ipaddress`) and caches the
  result; IPv4-mapped (``::ffff:a.b.c.d``) and NAT64 (``64:ff9b::/96``) IPv6 addresses are
  judged by the IPv4 address inside them, so ``::ffff:169.254.169.254`` is still the cloud
  metadata service. :func:`classify` names the address class (``loopback``, ``private``
  RFC 1918, ``cgnat`` 100.64/10 RFC 6598, ``link-local`` 169.254/16 and fe80::/10, ``ula``
  fc00::/7 RFC 4193, ``multicast``, ``broadcast``, ``unspecified``, ``public``, ``invalid``).
  :class:`CidrSet` answers "is this address in one of these networks" with one shift and one
  set look-up per distinct prefix length.
- **Domains.** :func:`registered_domain` gives the eTLD+1 ("registered domain") of a name
  with the Public Suffix List bundled in the ``publicsuffixlist`` package (offline, no
  download; private suffixes such as ``cloudfront.net`` or ``github.io`` count, so every
  customer zone under them is its own domain). Without the package, a small built-in list of
  multi-label suffixes and the last two labels are used (:data:`FALLBACK_SUFFIXES`). Only
  the last :data:`PSL_LABELS` labels are looked at (the deepest PSL rule has 7 labels), so a
  255-byte name of 127 labels costs no more than a short one. Caches are cleared when full
  and never hold a key longer than a real address (72 characters) or tail (256).
- **Entropy.** :func:`shannon` is the Shannon entropy in bits per character, computed with
  :class:`collections.Counter` (one C-speed pass).

Config validation (keys, numbers, levels, address lists) is in
:mod:`coi_watch.detectors._config`, shared with the host detectors.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import socket
from collections import Counter
from collections.abc import Iterable
from typing import Any

__all__ = (
    "FALLBACK_SUFFIXES",
    "PSL_LABELS",
    "CidrSet",
    "IPAddress",
    "Network",
    "addr_key",
    "canon",
    "classify",
    "is_reverse_name",
    "parse_network",
    "registered_domain",
    "shannon",
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# ----------------------------------------------------------------------------- addresses

_CACHE_CAP = 65536
_canon_cache: dict[str, IPAddress | None] = {}
_class_cache: dict[str, str] = {}

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V4_CLASSES: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), cls)
    for net, cls in (
        ("127.0.0.0/8", "loopback"),
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("100.64.0.0/10", "cgnat"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
    )
)
_V6_CLASSES: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), cls)
    for net, cls in (
        ("::1/128", "loopback"),
        ("::/128", "unspecified"),
        ("fe80::/10", "link-local"),
        ("fc00::/7", "ula"),
        ("ff00::/8", "multicast"),
    )
)

_V4_MASKS = tuple((int(n.netmask), int(n.network_address), c) for n, c in _V4_CLASSES)
_V6_MASKS = tuple((int(n.netmask), int(n.network_address), c) for n, c in _V6_CLASSES)


def canon(text: str) -> IPAddress | None:
    """The address in ``text`` (brackets and a ``%zone`` allowed), IPv4 for an IPv4-mapped or
    NAT64 IPv6 address; ``None`` when it is not an address. Cached (bounded)."""
    if text in _canon_cache:
        return _canon_cache[text]
    if len(text) > 72:  # longer than any address with brackets and a zone: not cached
        return None
    addr: IPAddress | None = None
    raw = text.strip("[]").partition("%")[0]
    if len(raw) <= 64:
        try:  # inet_pton is strict (dotted quads only) and much faster than ip_address
            addr = ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, raw))
        except (OSError, ValueError):
            with contextlib.suppress(OSError, ValueError):
                addr = ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, raw))
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        elif addr in _NAT64:
            addr = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if len(_canon_cache) >= _CACHE_CAP:
        _canon_cache.clear()
    _canon_cache[text] = addr
    return addr


def addr_key(addr: IPAddress) -> int:
    """A cheap hashable key for an address (``IPv4Address.__hash__`` is Python code): the
    integer, with bit 128 set for IPv6."""
    if isinstance(addr, ipaddress.IPv4Address):
        return int(addr)
    return int(addr) | _V6_BIT


_V6_BIT = 1 << 128


def classify(text: str) -> str:
    """The class of the address ``text`` (see the module docstring). Cached (bounded)."""
    hit = _class_cache.get(text)
    if hit is not None:
        return hit
    if len(text) > 72:
        return "invalid"
    addr = canon(text)
    cls = "invalid"
    if addr is not None:
        cls = "public"
        value = int(addr)
        table = _V4_MASKS if isinstance(addr, ipaddress.IPv4Address) else _V6_MASKS
        for mask, net, name in table:
            if value & mask == net:
                cls = name
                break
    if len(_class_cache) >= _CACHE_CAP:
        _class_cache.clear()
    _class_cache[text] = cls
    return cls


def parse_network(text: str) -> Network:
    """``10.0.0.0/8``, ``192.0.2.7`` (a /32), ``[fd00::1]`` or ``fd00::/8`` as a network;
    IPv4-mapped IPv6 networks become IPv4. Raises ``ValueError``."""
    raw = text.strip().strip("[]")
    net = ipaddress.ip_network(raw, strict=False)
    if isinstance(net, ipaddress.IPv6Network):
        mapped = net.network_address.ipv4_mapped
        if mapped is not None and net.prefixlen >= 96:
            return ipaddress.IPv4Network((int(mapped), net.prefixlen - 96))
    return net


class CidrSet:
    """A set of networks with a fast membership test for parsed addresses."""

    __slots__ = ("_groups", "networks")

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        self.networks: tuple[Network, ...] = tuple(networks)
        groups: dict[tuple[int, int], set[int]] = {}
        for net in self.networks:
            bits = net.max_prefixlen
            shift = bits - net.prefixlen
            groups.setdefault((net.version, shift), set()).add(int(net.network_address) >> shift)
        # longest prefixes first: the most specific match is usually the one configured
        self._groups = tuple(sorted(((v, s, frozenset(n)) for (v, s), n in groups.items()),
                                    key=lambda g: g[1]))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __len__(self) -> int:
        return len(self.networks)

    def contains(self, addr: IPAddress | None) -> bool:
        """Whether ``addr`` lies in one of the networks (``None`` never does)."""
        if addr is None:
            return False
        version = 4 if isinstance(addr, ipaddress.IPv4Address) else 6
        value = int(addr)
        for v, shift, nets in self._groups:  # noqa: SIM110 - a plain loop is faster here
            if v == version and (value >> shift) in nets:
                return True
        return False

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and self.contains(canon(text))


# ----------------------------------------------------------------------------- domains

PSL_LABELS = 8
"""Labels from the right that :func:`registered_domain` looks at (deepest PSL rule: 7)."""

FALLBACK_SUFFIXES: frozenset[str] = frozenset(
    {
        # ICANN second-level registries seen most often
        "co.uk", "org.uk", "ac.uk", "gov.uk", "me.uk", "ltd.uk", "plc.uk", "net.uk",
        "com.au", "net.au", "org.au", "edu.au", "gov.au", "co.nz", "org.nz", "co.jp",
        "ne.jp", "or.jp", "ac.jp", "co.kr", "or.kr", "com.br", "net.br", "org.br",
        "com.cn", "net.cn", "org.cn", "gov.cn", "com.tw", "com.hk", "com.sg", "com.my",
        "co.in", "net.in", "org.in", "co.za", "com.mx", "com.ar", "com.tr", "co.il",
        "com.ua", "co.id", "com.vn", "com.ph", "com.pl", "com.ru",
        # private suffixes whose customer zones must not be lumped together
        "github.io", "githubusercontent.com", "gitlab.io", "pages.dev", "workers.dev",
        "vercel.app", "netlify.app", "herokuapp.com", "azurewebsites.net",
        "cloudfront.net", "s3.amazonaws.com", "appspot.com", "web.app", "firebaseapp.com",
        "blogspot.com", "readthedocs.io", "ngrok.io", "ngrok-free.app", "duckdns.org",
        "no-ip.org", "trycloudflare.com", "azureedge.net", "fly.dev", "onrender.com",
        "in-addr.arpa", "ip6.arpa",
    }
)

try:  # the bundled Public Suffix List (offline), when the package is installed
    from publicsuffixlist import PublicSuffixList as _PSL

    _psl: Any = _PSL()
except ImportError:  # pragma: no cover - exercised by forcing the fallback in tests
    _psl = None

_domain_cache: dict[str, str] = {}
_DOMAIN_CACHE_CAP = 16384  # keys of at most 256 characters: 8 MB at most


def _fallback_domain(labels: list[str]) -> str:
    for depth in (3, 2):  # a suffix of 2 or 3 labels, then one more label
        if len(labels) > depth - 1 and ".".join(labels[-(depth - 1):]) in FALLBACK_SUFFIXES:
            return ".".join(labels[-depth:])
    return ".".join(labels[-2:])


def registered_domain(name: str, *, use_psl: bool = True) -> str:
    """The registered domain (eTLD+1) of a lower-case name without a trailing dot.

    ``a.b.example.co.uk`` -> ``example.co.uk``; a name that is itself a public suffix (or a
    single label) is returned whole. Linear in the name; cached on the last labels (bounded).
    """
    if not name:
        return ""
    parts = name.rsplit(".", PSL_LABELS)
    tail_labels = parts[-PSL_LABELS:]
    tail = ".".join(tail_labels)
    psl = _psl if use_psl else None
    key = tail if psl is not None else "\0" + tail
    cacheable = len(key) <= 256
    hit = _domain_cache.get(key) if cacheable else None
    if hit is not None:
        return hit
    result: str | None = None
    if psl is not None and "" not in tail_labels:
        # None: the tail is itself a public suffix (no PSL rule is 8 labels deep, so then
        # the tail is the whole name)
        result = psl.privatesuffix(tail) or tail
    if result is None:
        result = _fallback_domain([p for p in tail_labels if p] or [tail])
    if cacheable:
        if len(_domain_cache) >= _DOMAIN_CACHE_CAP:
            _domain_cache.clear()
        _domain_cache[key] = result
    return result


def is_reverse_name(name: str) -> bool:
    """A well-formed reverse look-up name: up to 4 decimal octets (0-255) then
    ``in-addr.arpa``, or up to 32 single hex nibbles then ``ip6.arpa``. Anything else under
    ``.arpa`` (data where the octets belong) is not."""
    if name.endswith(".in-addr.arpa"):
        labels = name[: -len(".in-addr.arpa")].split(".", 4)
        return len(labels) <= 4 and all(
            0 < len(x) <= 3 and x.isdigit() and x.isascii() and int(x) <= 255 for x in labels
        )
    if name.endswith(".ip6.arpa"):
        body = name[: -len(".ip6.arpa")]
        if len(body) > 63:
            return False
        labels = body.split(".")
        return all(len(x) == 1 and x in "0123456789abcdef" for x in labels)
    return False


# ----------------------------------------------------------------------------- entropy


def shannon(text: str) -> float:
    """Shannon entropy of ``text`` in bits per character (0.0 for an empty string)."""
    n = len(text)
    if n == 0:
        return 0.0
    log2 = math.log2
    return -sum(c / n * log2(c / n) for c in Counter(text).values())

