"""value_count correlations: distinct values of a field per group within a sliding window
(a port scan: one container, many destination ports in a minute)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaCorrelationRuleError

from coi_watch.errors import RuleLocation
from coi_watch.events import Event, NetConnect
from coi_watch.rules.correlation import compile_correlation

S = 1_000_000_000
LOC = RuleLocation("rules/scan.yml", 1)


def _fields(ev: Event) -> dict[str, Any]:
    assert isinstance(ev, NetConnect)
    return {"DestinationIp": ev.dst, "DestinationPort": ev.dport or None}


@dataclass(frozen=True)
class Rule:
    id: str
    name: str | None = None
    level: str = "low"
    fields: Callable[[Event], Mapping[str, Any]] = _fields


BASE = Rule("conn-rule", "outbound_conn")

SCAN = """
title: Port scan
id: 6d3f1c8e-2b4a-4c1e-9f7a-0a1b2c3d4e5f
level: high
correlation:
  type: value_count
  rules: [outbound_conn]
  group-by: [DestinationIp]
  timespan: 1m
  condition: {gte: 3, field: DestinationPort}
"""


def compiled(text: str = SCAN) -> Any:
    rule = SigmaCorrelationRule.from_yaml(text)
    return compile_correlation(rule, source=LOC, base={"outbound_conn": BASE})


def probe(state: Any, t: float, port: int, dst: str = "10.0.0.9",
          container: str = "agent-1") -> list[Any]:
    ts = int(t * S)
    ev = NetConnect(ts_ns=ts, wall_ns=ts, container=container, family=4, proto="tcp",
                    src="10.0.0.2", dst=dst, dport=port)
    return list(state.feed(BASE, ev, ts))


def test_fires_on_the_nth_distinct_value() -> None:
    state = compiled().new_state()
    assert probe(state, 0, 22) == []
    assert probe(state, 1, 22) == []  # a repeat is not a new value
    assert probe(state, 2, 80) == []
    (v,) = probe(state, 3, 443)
    assert v.evidence["distinct"] == 3
    assert sorted(v.evidence["values"]) == [22, 80, 443]
    assert v.evidence["condition"] == {"gte": 3, "field": "DestinationPort"}
    assert v.evidence["group"] == {"DestinationIp": "10.0.0.9"}


def test_values_expire_from_their_last_sighting() -> None:
    state = compiled().new_state()
    probe(state, 0, 22)
    probe(state, 10, 80)
    probe(state, 55, 22)  # 22 seen again: its window restarts
    assert probe(state, 75, 8080) == []  # 80 (t=10) has expired; 22 and 8080 remain
    (v,) = probe(state, 76, 9090)
    assert sorted(v.evidence["values"]) == [22, 8080, 9090]


def test_events_without_the_field_are_skipped() -> None:
    state = compiled().new_state()
    probe(state, 0, 22)
    probe(state, 1, 80)
    assert probe(state, 2, 0) == []  # dport 0 -> field absent (None)
    assert state.retained() == 2


def test_groups_do_not_mix() -> None:
    state = compiled().new_state()
    probe(state, 0, 22, dst="10.0.0.9")
    probe(state, 1, 80, dst="10.0.0.10")
    assert probe(state, 2, 443, container="agent-2") == []
    assert probe(state, 3, 8443, dst="10.0.0.9") == []
    assert len(probe(state, 4, 9443, dst="10.0.0.9")) == 1


def test_distinct_values_held_are_capped_at_threshold_plus_one() -> None:
    state = compiled(SCAN.replace("gte: 3", "lte: 3")).new_state()
    for i in range(5_000):
        probe(state, i * 0.001, 1000 + i)
    assert state.retained() <= 4


def test_fires_once_then_resets() -> None:
    state = compiled().new_state()
    fired = [t for t, port in enumerate([1, 2, 3, 4, 5, 6, 7]) if probe(state, t, port)]
    assert fired == [2, 5]


def test_needs_a_field() -> None:
    with pytest.raises(SigmaCorrelationRuleError):
        SigmaCorrelationRule.from_yaml(SCAN.replace(", field: DestinationPort", ""))
