"""value_sum correlations: the sum of a numeric field per group within a sliding window
(exfiltration: bytes_out of finished flows to one destination)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sigma.correlations import SigmaCorrelationRule

from coi_watch.errors import RuleLocation
from coi_watch.events import Event, NetFlow
from coi_watch.rules.correlation import compile_correlation

S = 1_000_000_000
MB = 1_000_000
LOC = RuleLocation("rules/exfil.yml", 1)


def _fields(ev: Event) -> dict[str, Any]:
    assert isinstance(ev, NetFlow)
    return {"DestinationIp": ev.dst, "bytes_out": ev.bytes_out}


@dataclass(frozen=True)
class Rule:
    id: str
    name: str | None = None
    level: str = "informational"
    fields: Callable[[Event], Mapping[str, Any]] = _fields


BASE = Rule("flow-end", "flow_end")

EXFIL = """
title: Large upload
id: 3b7c2a10-5e8f-4d2b-9c1a-7f6e5d4c3b2a
level: critical
correlation:
  type: value_sum
  rules: [flow_end]
  group-by: [DestinationIp]
  timespan: 8h
  condition: {gte: 100000000, field: bytes_out}
"""


def compiled(text: str = EXFIL) -> Any:
    rule = SigmaCorrelationRule.from_yaml(text)
    return compile_correlation(rule, source=LOC, base={"flow_end": BASE})


def flow(state: Any, t: float, nbytes: int, dst: str = "198.51.100.4",
         container: str = "agent-1") -> list[Any]:
    ts = int(t * S)
    ev = NetFlow(ts_ns=ts, wall_ns=ts, container=container, event="destroy", family=4,
                 proto="tcp", src="10.0.0.2", sport=40000, dst=dst, dport=443,
                 bytes_out=nbytes)
    return list(state.feed(BASE, ev, ts))


def test_fires_when_the_sum_reaches_the_threshold() -> None:
    state = compiled().new_state()
    assert flow(state, 0, 40 * MB) == []
    assert flow(state, 3600, 40 * MB) == []
    (v,) = flow(state, 7200, 20 * MB)
    assert v.evidence["sum"] == 100 * MB
    assert v.evidence["condition"] == {"gte": 100 * MB, "field": "bytes_out"}
    assert v.evidence["timespan"] == "8h"
    assert v.severity.value == "critical"


def test_old_bytes_leave_the_window() -> None:
    state = compiled().new_state()
    flow(state, 0, 60 * MB)
    assert flow(state, 8 * 3600 + 200, 60 * MB) == []  # the first 60 MB are > 8 h old
    assert len(flow(state, 8 * 3600 + 300, 40 * MB)) == 1


def test_destinations_and_containers_do_not_mix() -> None:
    state = compiled().new_state()
    flow(state, 0, 60 * MB, dst="198.51.100.4")
    assert flow(state, 1, 60 * MB, dst="198.51.100.5") == []
    assert flow(state, 2, 60 * MB, container="agent-2") == []


def test_many_small_values_are_coalesced_into_bounded_slots() -> None:
    state = compiled(EXFIL.replace("gte: 100000000", "gte: 10000000000")).new_state()
    for i in range(20_000):
        flow(state, i * 1.0, 1000)  # one flow a second for 5.5 hours
    assert state.retained() <= 257
    (v,) = flow(state, 20_000, 10_000_000_000)
    assert v.evidence["sum"] == 20_000 * 1000 + 10_000_000_000


def test_coalescing_never_drops_bytes_early() -> None:
    state = compiled().new_state()
    span = 8 * 3600
    flow(state, 0, 50 * MB)
    flow(state, 10, 30 * MB)  # same slot as t=0 (slot = 8h/256 = 112.5 s)
    # At span + 5 s the t=0 bytes are exact-window expired, but the t=10 bytes are not:
    # the slot is kept (over-counting by at most a slot), never under-counted.
    (v,) = flow(state, span + 5, 20 * MB)
    assert v.evidence["sum"] == 100 * MB


def test_non_numeric_values_are_skipped() -> None:
    corr = compiled()
    state = corr.new_state()

    def weird(ev: Event) -> dict[str, Any]:
        return {"DestinationIp": "x", "bytes_out": "lots"}

    odd = Rule("flow-end", "flow_end", fields=weird)
    ev = NetFlow(ts_ns=0, wall_ns=0, container="agent-1", event="destroy", family=4,
                 proto="tcp", src="a", dst="b")
    assert state.feed(odd, ev, 0) == []
    assert state.retained() == 0


def test_lte_fires_while_the_sum_stays_low() -> None:
    state = compiled(EXFIL.replace("gte: 100000000", "lte: 1000")).new_state()
    assert len(flow(state, 0, 600)) == 1
    assert flow(state, 1, 600) == []  # 1200 in the window
