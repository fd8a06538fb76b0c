"""event_count correlations: N matches of the referenced rules per group within a sliding
window in event time; bounded memory; compile errors carry the rule's location."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from sigma.correlations import SigmaCorrelationRule

from coi_watch.errors import RuleLocation, RuleSyntaxError
from coi_watch.events import Event, NetConnect
from coi_watch.rules.correlation import CorrelationError, compile_correlation
from coi_watch.verdicts import Severity

S = 1_000_000_000
LOC = RuleLocation("rules/corr.yml", 3)
RULE_ID = "5638f7c0-ac70-491d-8465-2a65075e0d86"


def _fields(ev: Event) -> dict[str, Any]:
    assert isinstance(ev, NetConnect)
    return {"DestinationIp": ev.dst, "DestinationPort": ev.dport}


@dataclass(frozen=True)
class Rule:
    """Stand-in for rules.compile.CompiledRule (what a correlation reads of it)."""

    id: str
    name: str | None = None
    level: str = "low"
    fields: Callable[[Event], Mapping[str, Any]] = _fields


BASE = Rule(RULE_ID, "outbound_conn")


def connect(t_s: float, dst: str = "203.0.113.7", container: str = "agent-1") -> NetConnect:
    ts = int(t_s * S)
    return NetConnect(ts_ns=ts, wall_ns=ts, container=container, family=4, proto="tcp",
                      src="10.0.0.2", dst=dst, dport=443)


def correlation(body: str, **kw: Any) -> Any:
    yaml_text = (
        "title: Many connections\n"
        "id: 0e95725d-7320-415d-80f7-004da920fc11\n"
        "name: many_conns\n"
        "level: high\n"
        "tags: [attack.t1046, attack.discovery]\n"
        "coi: {action: pause, mode: monitor}\n"
        "correlation:\n" + body
    )
    rule = SigmaCorrelationRule.from_yaml(yaml_text)
    base = {BASE.id: BASE, "outbound_conn": BASE}
    return compile_correlation(rule, source=LOC, base=base, **kw)


GTE3 = """
  type: event_count
  rules: [outbound_conn]
  group-by: [DestinationIp]
  timespan: 60s
  condition: {gte: 3}
"""


def feed_all(state: Any, times: list[float], **kw: Any) -> list[Any]:
    out = []
    for t in times:
        ev = connect(t, **kw)
        out.extend(state.feed(BASE, ev, ev.ts_ns))
    return out


def test_fires_on_the_nth_event_within_the_window() -> None:
    state = correlation(GTE3).new_state()
    assert feed_all(state, [0, 10]) == []
    (v,) = feed_all(state, [20])
    assert v.detector == "sigma:0e95725d-7320-415d-80f7-004da920fc11"
    assert v.title == "Many connections"
    assert v.container == "agent-1"
    assert v.ts_ns == 20 * S
    assert v.severity is Severity.HIGH
    assert v.mitre == ("T1046",)
    assert (v.action, v.mode) == ("pause", "monitor")
    assert v.event_kind == "net.connect"
    assert v.evidence["count"] == 3
    assert v.evidence["group"] == {"DestinationIp": "203.0.113.7"}
    assert v.evidence["condition"] == {"gte": 3}
    assert v.evidence["window_start_ns"] == -40 * S
    assert v.evidence["rules"] == [RULE_ID]
    assert v.evidence["rule"] == "0e95725d-7320-415d-80f7-004da920fc11"
    assert v.evidence["file"] == "rules/corr.yml:3"
    assert "agent-1" in v.dedup_key and "203.0.113.7" in v.dedup_key


def test_window_slides_an_event_timespan_old_has_left() -> None:
    state = correlation(GTE3).new_state()
    assert feed_all(state, [0, 30, 60]) == []  # the event at 0 is exactly 60 s old at 60
    (v,) = feed_all(state, [61])  # 30, 60, 61
    assert v.evidence["count"] == 3


def test_window_slides_just_inside_fires() -> None:
    state = correlation(GTE3).new_state()
    assert len(feed_all(state, [0, 30, 59.999])) == 1


def test_sliding_not_tumbling() -> None:
    # 50, 70, 100: three events within 60 s that straddle any fixed minute boundary.
    state = correlation(GTE3).new_state()
    assert len(feed_all(state, [50, 70, 100])) == 1


def test_fires_once_per_burst_then_needs_a_fresh_set() -> None:
    state = correlation(GTE3).new_state()
    verdicts = feed_all(state, [0, 1, 2, 3, 4, 5, 6])
    assert [v.ts_ns // S for v in verdicts] == [2, 5]


def test_groups_and_containers_never_mix() -> None:
    state = correlation(GTE3).new_state()
    assert feed_all(state, [0, 1], dst="198.51.100.1") == []
    assert feed_all(state, [2], dst="198.51.100.2") == []
    assert feed_all(state, [3], dst="198.51.100.1", container="agent-2") == []
    (v,) = feed_all(state, [4], dst="198.51.100.1")
    assert v.evidence["group"] == {"DestinationIp": "198.51.100.1"}
    assert len(state) == 0 + 2  # the fired group reset; two others remain


def test_gt_needs_one_more() -> None:
    state = correlation(GTE3.replace("gte: 3", "gt: 3")).new_state()
    assert feed_all(state, [0, 1, 2]) == []
    assert len(feed_all(state, [3])) == 1


def test_lt_is_a_rarity_condition_evaluated_at_each_event() -> None:
    # "connects to this address fewer than 2 times in a minute": fires on a first
    # contact, not on a repeat within the minute, again once the minute has passed.
    state = correlation(GTE3.replace("gte: 3", "lt: 2")).new_state()
    assert len(feed_all(state, [0])) == 1
    assert feed_all(state, [10]) == []
    assert feed_all(state, [30]) == []
    assert len(feed_all(state, [91])) == 1


def test_time_going_backwards_is_clamped() -> None:
    state = correlation(GTE3).new_state()
    feed_all(state, [100, 101])
    # A replayed older event counts at the latest time seen, not in the past.
    (v,) = feed_all(state, [5])
    assert v.evidence["window_end_ns"] == 101 * S


def test_per_group_memory_is_capped_at_threshold_plus_one() -> None:
    corr = correlation(GTE3.replace("gte: 3", "lt: 3"))
    state = corr.new_state()
    feed_all(state, [i * 0.001 for i in range(10_000)])
    assert state.retained() <= 4


def test_groups_are_capped_lru_and_evictions_counted() -> None:
    state = correlation(GTE3, max_groups=2).new_state()
    feed_all(state, [0, 1], dst="198.51.100.1")
    feed_all(state, [2], dst="198.51.100.2")
    feed_all(state, [3], dst="198.51.100.3")  # evicts .1, the least recently touched
    assert len(state) == 2
    assert state.evicted == 1
    assert feed_all(state, [4], dst="198.51.100.1") == []  # its two earlier events are gone


def test_idle_groups_are_dropped_without_counting_as_evictions() -> None:
    state = correlation(GTE3).new_state()
    feed_all(state, [0], dst="198.51.100.1")
    feed_all(state, [120], dst="198.51.100.2")
    assert len(state) == 1
    assert state.evicted == 0


def test_matches_of_unreferenced_rules_are_ignored() -> None:
    state = correlation(GTE3).new_state()
    other = Rule("other")
    for t in range(5):
        ev = connect(t)
        assert state.feed(other, ev, ev.ts_ns) == []


def test_unknown_rule_reference_is_an_error_with_location() -> None:
    with pytest.raises(CorrelationError) as exc:
        correlation(GTE3.replace("[outbound_conn]", "[nope]"))
    assert exc.value.source == LOC
    assert "nope" in exc.value.message
    assert exc.value.code == "E009"


def test_reference_by_uuid() -> None:
    corr = correlation(GTE3.replace("[outbound_conn]", f"['{RULE_ID.upper()}']"))
    assert corr.rule_refs == (RULE_ID,)


def test_missing_timespan_is_an_error() -> None:
    rule = SigmaCorrelationRule.from_yaml(
        "title: t\ncorrelation:\n" + GTE3
    )
    rule.timespan = None  # type: ignore[assignment]
    with pytest.raises(CorrelationError, match="timespan"):
        compile_correlation(rule, source=LOC, base={"outbound_conn": BASE})


def test_unsupported_type_is_an_error() -> None:
    body = GTE3.replace("event_count", "value_avg").replace("gte: 3", "gte: 3, field: x")
    with pytest.raises(CorrelationError, match="unsupported correlation type"):
        correlation(body)


def test_level_defaults_to_the_highest_referenced_rule() -> None:
    rule = SigmaCorrelationRule.from_yaml("title: t\nid: 0e95725d-7320-415d-80f7-004da920fc12\n"
                                          "correlation:\n" + GTE3)
    corr = compile_correlation(rule, source=LOC, base={"outbound_conn": Rule("x", level="low")})
    assert corr.level == "low"
    assert corr.mode == "enforce" and corr.action == ""


def test_severity_table_is_the_engines() -> None:
    from coi_watch.rules.correlation import severity_of
    from coi_watch.rules.engine import SEVERITY

    assert {lv: severity_of(lv) for lv in SEVERITY} == dict(SEVERITY)


@pytest.mark.parametrize("coi,match", [
    ("coi: {action: nuke}", "coi.action 'nuke'"),
    ("coi: {mode: loud}", "coi.mode 'loud'"),
    ("coi: {colour: red}", "unknown attribute 'coi.colour'"),
    ("coi: pause", "must be a mapping"),
])
def test_coi_attributes_are_checked_like_a_rules(coi: str, match: str) -> None:
    text = ("title: t\nid: 0e95725d-7320-415d-80f7-004da920fc13\n" + coi + "\n"
            "correlation:\n" + GTE3)
    with pytest.raises(RuleSyntaxError, match=match) as exc:
        compile_correlation(SigmaCorrelationRule.from_yaml(text), source=LOC,
                            base={"outbound_conn": BASE})
    assert exc.value.source == LOC
