"""``|cidr``: IPv4 and IPv6 networks."""

from __future__ import annotations

from typing import Any

import yaml

from coi_watch.events import NetConnect
from coi_watch.rules.compile import CompiledRule
from coi_watch.rules.load import load_text


def rule(detection: dict[str, Any]) -> CompiledRule:
    doc = {"title": "t", "id": "0b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "level": "high",
           "logsource": {"category": "network_connection", "product": "linux"},
           "detection": detection}
    res = load_text(yaml.safe_dump(doc, sort_keys=False))
    assert not res.errors, res.errors
    return res.rules[0]


def conn(dst: str, family: int = 4) -> NetConnect:
    return NetConnect(ts_ns=1, wall_ns=1, container="c", family=family, proto="tcp",
                      src="10.0.0.2", dst=dst, dport=443)


def test_ipv4_and_ipv6_networks() -> None:
    r = rule({"sel": {"DestinationIp|cidr": ["10.0.0.0/8", "fc00::/7"]}, "condition": "sel"})
    assert r.match(conn("10.200.1.1"))
    assert r.match(conn("fd12::1", 6))
    assert not r.match(conn("11.0.0.1"))
    assert not r.match(conn("2001:db8::1", 6))


def test_filter_private_ranges() -> None:
    r = rule({"sel": {"DestinationPort": 443},
              "filter": {"DestinationIp|cidr": ["127.0.0.0/8", "169.254.0.0/16"]},
              "condition": "sel and not filter"})
    assert r.match(conn("198.18.0.1"))
    assert not r.match(conn("169.254.169.254"))


def test_invalid_network_does_not_load() -> None:
    doc = {"title": "t", "id": "0b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
           "logsource": {"category": "network_connection"},
           "detection": {"sel": {"DestinationIp|cidr": "10.0.0.0/33"}, "condition": "sel"}}
    assert [d.code for d in load_text(yaml.safe_dump(doc)).errors] == ["E005"]
