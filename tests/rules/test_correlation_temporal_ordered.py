"""temporal_ordered correlations: the referenced rules matched in the listed order, first
to last within the timespan (download, chmod +x, execute)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from sigma.correlations import SigmaCorrelationRule

from coi_watch.errors import RuleLocation
from coi_watch.events import Event, ProcExec
from coi_watch.rules.correlation import CorrelationError, compile_correlation

S = 1_000_000_000
LOC = RuleLocation("rules/dropper.yml", 1)


def _fields(ev: Event) -> dict[str, Any]:
    assert isinstance(ev, ProcExec)
    return {"User": "root" if ev.uid == 0 else str(ev.uid)}


@dataclass(frozen=True)
class Rule:
    id: str
    name: str | None = None
    level: str = "low"
    fields: Callable[[Event], Mapping[str, Any]] = _fields


DL, CHMOD, RUN = Rule("r-dl", "download"), Rule("r-chmod", "chmod_x"), Rule("r-run", "run_tmp")
BASE = {r.name or r.id: r for r in (DL, CHMOD, RUN)}

DROPPER = """
title: Download, chmod, execute
id: 2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f
level: high
correlation:
  type: temporal_ordered
  rules: [download, chmod_x, run_tmp]
  group-by: [User]
  timespan: 10m
"""


def compiled(text: str = DROPPER) -> Any:
    return compile_correlation(SigmaCorrelationRule.from_yaml(text), source=LOC, base=BASE)


def hit(state: Any, rule: Rule, t: float, uid: int = 0, container: str = "agent-1") -> list[Any]:
    ts = int(t * S)
    ev = ProcExec(ts_ns=ts, wall_ns=ts, container=container, pid=100, uid=uid)
    return list(state.feed(rule, ev, ts))


def run(state: Any, steps: list[tuple[Rule, float]], **kw: Any) -> list[Any]:
    out: list[Any] = []
    for rule, t in steps:
        out.extend(hit(state, rule, t, **kw))
    return out


def test_in_order_fires_on_the_last_step() -> None:
    state = compiled().new_state()
    assert run(state, [(DL, 0), (CHMOD, 5)]) == []
    (v,) = hit(state, RUN, 9)
    assert v.evidence["steps"] == 3
    assert v.evidence["group"] == {"User": "root"}


@pytest.mark.parametrize("order", [
    [(CHMOD, 0), (DL, 1), (RUN, 2)],
    [(DL, 0), (RUN, 1), (CHMOD, 2)],
    [(RUN, 0), (CHMOD, 1), (DL, 2)],
])
def test_out_of_order_does_not_fire(order: list[tuple[Rule, float]]) -> None:
    assert run(compiled().new_state(), order) == []


def test_first_to_last_must_fit_in_the_timespan() -> None:
    state = compiled().new_state()
    assert run(state, [(DL, 0), (CHMOD, 300), (RUN, 600)]) == []


def test_a_later_start_is_used_when_the_first_has_expired() -> None:
    state = compiled().new_state()
    run(state, [(DL, 0), (DL, 400), (CHMOD, 500)])
    assert len(hit(state, RUN, 700)) == 1  # 400 -> 500 -> 700 fits in 10 minutes


def test_interleaved_noise_does_not_break_the_chain() -> None:
    state = compiled().new_state()
    assert run(state, [(DL, 0), (RUN, 1), (CHMOD, 2), (DL, 3), (CHMOD, 4)]) == []
    assert len(hit(state, RUN, 5)) == 1


def test_a_rule_listed_twice_needs_two_matches() -> None:
    text = DROPPER.replace("[download, chmod_x, run_tmp]", "[download, run_tmp, download]")
    state = compiled(text).new_state()
    assert run(state, [(DL, 0), (RUN, 1)]) == []
    assert len(hit(state, DL, 2)) == 1
    state = compiled(text).new_state()
    assert run(state, [(RUN, 0), (DL, 1)]) == []  # one match never counts twice


def test_groups_do_not_mix() -> None:
    state = compiled().new_state()
    run(state, [(DL, 0), (CHMOD, 1)], uid=0)
    assert hit(state, RUN, 2, uid=1000) == []
    assert hit(state, RUN, 3, container="agent-2") == []
    assert len(hit(state, RUN, 4)) == 1


def test_memory_is_one_slot_per_step() -> None:
    state = compiled().new_state()
    for i in range(1000):
        hit(state, DL if i % 2 else CHMOD, i * 0.01)
    assert state.retained() <= 3


def test_extended_condition_is_not_supported_for_ordered() -> None:
    text = """
title: x
correlation:
  type: temporal_ordered
  timespan: 1m
  condition: download and chmod_x
"""
    with pytest.raises(CorrelationError, match="temporal only"):
        compiled(text)
