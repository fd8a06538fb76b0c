"""temporal correlations: every referenced rule matched within the timespan, any order
(credential read and an outbound connection by the same container within 5 minutes)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from sigma.correlations import SigmaCorrelationRule

from coi_watch.errors import RuleLocation
from coi_watch.events import Event, FileAccess, NetConnect, ProcExec
from coi_watch.rules.correlation import CorrelationError, compile_correlation

S = 1_000_000_000
LOC = RuleLocation("rules/steal.yml", 1)


def _no_fields(ev: Event) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Rule:
    id: str
    name: str | None = None
    level: str = "medium"
    fields: Callable[[Event], Mapping[str, Any]] = _no_fields


READ = Rule("r-read", "cred_read")
CONN = Rule("r-conn", "outbound")
EXEC = Rule("r-exec", "curl_exec")
BASE = {r.name or r.id: r for r in (READ, CONN, EXEC)} | {r.id: r for r in (READ, CONN, EXEC)}

STEAL = """
title: Credentials read then sent
id: 9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d
level: critical
correlation:
  type: temporal
  rules: [cred_read, outbound]
  timespan: 5m
"""


def compiled(text: str = STEAL) -> Any:
    return compile_correlation(SigmaCorrelationRule.from_yaml(text), source=LOC, base=BASE)


def ev_for(rule: Rule, t: float, container: str = "agent-1") -> Event:
    ts = int(t * S)
    if rule is READ:
        return FileAccess(ts_ns=ts, wall_ns=ts, container=container, pid=7, op="open",
                          path="/root/.aws/credentials")
    if rule is CONN:
        return NetConnect(ts_ns=ts, wall_ns=ts, container=container, family=4, proto="tcp",
                          src="10.0.0.2", dst="203.0.113.1", dport=443)
    return ProcExec(ts_ns=ts, wall_ns=ts, container=container, pid=8, exe="/usr/bin/curl")


def hit(state: Any, rule: Rule, t: float, container: str = "agent-1") -> list[Any]:
    ev = ev_for(rule, t, container)
    return list(state.feed(rule, ev, ev.ts_ns))


def test_default_condition_is_all_rules() -> None:
    corr = compiled()
    assert corr.condition.as_dict() == {"gte": 2}
    assert corr.rule_refs == ("r-read", "r-conn")


@pytest.mark.parametrize("first,second", [(READ, CONN), (CONN, READ)])
def test_any_order_within_the_timespan(first: Rule, second: Rule) -> None:
    state = compiled().new_state()
    assert hit(state, first, 0) == []
    (v,) = hit(state, second, 299)
    assert sorted(v.evidence["matched"]) == ["r-conn", "r-read"]
    assert v.evidence["trigger_rule"] == second.id
    assert v.event_kind == ev_for(second, 0).kind


def test_too_far_apart_does_not_fire() -> None:
    state = compiled().new_state()
    hit(state, READ, 0)
    assert hit(state, CONN, 300) == []


def test_one_rule_repeated_is_not_enough() -> None:
    state = compiled().new_state()
    for t in range(5):
        assert hit(state, READ, t) == []


def test_containers_do_not_mix() -> None:
    state = compiled().new_state()
    hit(state, READ, 0, container="agent-1")
    assert hit(state, CONN, 1, container="agent-2") == []


def test_fires_once_then_needs_both_again() -> None:
    state = compiled().new_state()
    hit(state, READ, 0)
    assert len(hit(state, CONN, 1)) == 1
    assert hit(state, CONN, 2) == []
    assert len(hit(state, READ, 3)) == 1


def test_extended_condition() -> None:
    text = """
title: Read, then curl or a connection
id: 1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d
correlation:
  type: temporal
  timespan: 1m
  condition: cred_read and (curl_exec or outbound)
"""
    corr = compiled(text)
    assert set(corr.rule_refs) == {"r-read", "r-exec", "r-conn"}
    state = corr.new_state()
    assert hit(state, EXEC, 0) == []
    assert len(hit(state, READ, 1)) == 1
    assert hit(state, READ, 2) == []
    assert len(hit(state, CONN, 3)) == 1


def test_extended_condition_with_not() -> None:
    text = """
title: Read without an exec
id: 1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5e
correlation:
  type: temporal
  timespan: 1m
  condition: cred_read and not curl_exec
"""
    state = compiled(text).new_state()
    assert hit(state, EXEC, 0) == []
    assert hit(state, READ, 1) == []  # curl_exec was seen within the minute
    assert len(hit(state, READ, 61)) == 1


def test_count_condition_any_two_of_three() -> None:
    text = STEAL.replace("[cred_read, outbound]", "[cred_read, outbound, curl_exec]")
    text += "  condition: {gte: 2}\n"
    state = compiled(text).new_state()
    hit(state, EXEC, 0)
    assert len(hit(state, CONN, 1)) == 1


def test_unknown_rule_in_extended_condition() -> None:
    text = """
title: x
correlation:
  type: temporal
  timespan: 1m
  condition: cred_read and ghost
"""
    with pytest.raises(CorrelationError, match="ghost"):
        compiled(text)
