"""The Correlator over a rule set: routing matches, chained correlations (the Sigma spec's
"many failed logins, then a success" example), and the ``generate`` flag."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationRule

from coi_watch.errors import RuleLocation
from coi_watch.events import Event, ProcExec
from coi_watch.rules.correlation import (
    CompiledCorrelation,
    Correlator,
    compile_correlation,
    dependency_order,
    suppressed_rules,
)

S = 1_000_000_000
LOC = RuleLocation("rules/login.yml", 1)


def _fields(ev: Event) -> dict[str, Any]:
    assert isinstance(ev, ProcExec)
    return {"User": str(ev.uid), "Host": ev.container}


@dataclass(frozen=True)
class Rule:
    id: str
    name: str | None = None
    level: str = "low"
    fields: Callable[[Event], Mapping[str, Any]] = _fields


FAILED = Rule("53ba33fd-3a50-4468-a5ef-c583635cfa92", "failed_login")
SUCCESS = Rule("4d0a2c83-c62c-4ed4-b475-c7e23a9269b8", "successful_login")

DOCS = """
title: Multiple failed logins followed by a successful one
id: b180ead8-d58f-40b2-ae54-c8940995b9b6
level: high
correlation:
  type: temporal_ordered
  rules: [multiple_failed_login, successful_login]
  group-by: [User]
  timespan: 10m
---
title: Multiple failed logins
id: a8418a5a-5fc4-46b5-b23b-6c73beb19d41
name: multiple_failed_login
correlation:
  type: event_count
  rules: [failed_login]
  group-by: [User]
  timespan: 10m
  condition: {gte: 3}
"""


def compile_all(docs: str = DOCS) -> list[CompiledCorrelation]:
    # pySigma orders referenced rules first once references resolve; we only need the
    # correlations here, compiled inner first so the outer can name the inner.
    parsed = SigmaCollection.from_yaml(docs, resolve_references=False)
    corr_rules = [r for r in parsed.rules if isinstance(r, SigmaCorrelationRule)]
    base = {r.id: r for r in (FAILED, SUCCESS)} | {
        r.name: r for r in (FAILED, SUCCESS) if r.name
    }
    done: dict[str, CompiledCorrelation] = {}
    pending = list(corr_rules)
    while pending:
        for rule in list(pending):
            try:
                c = compile_correlation(rule, source=LOC, base=base, correlations=done)
            except Exception:
                continue
            done[c.id] = c
            if c.name:
                done[c.name] = c
            pending.remove(rule)
    return list({c.id: c for c in done.values()}.values())


def login(rule: Rule, t: float, uid: int = 1000) -> tuple[Rule, ProcExec]:
    ts = int(t * S)
    return rule, ProcExec(ts_ns=ts, wall_ns=ts, container="agent-1", pid=1, uid=uid)


def test_chained_correlation_fires_through_the_inner_one() -> None:
    corrs = compile_all()
    cor = Correlator(corrs)
    out = []
    for t, rule in enumerate([FAILED, FAILED, SUCCESS, FAILED, SUCCESS]):
        r, ev = login(rule, t)
        out.extend(cor.feed(r, ev, ev.ts_ns))
    # The inner event_count (3 failures) fires at t=3 but is suppressed (generate false);
    # the outer temporal_ordered fires on the success after it.
    assert [v.detector for v in out] == ["sigma:b180ead8-d58f-40b2-ae54-c8940995b9b6"]
    assert out[0].ts_ns == 4 * S


def test_success_first_does_not_fire() -> None:
    cor = Correlator(compile_all())
    out = []
    for t, rule in enumerate([SUCCESS, FAILED, FAILED, FAILED]):
        r, ev = login(rule, t)
        out.extend(cor.feed(r, ev, ev.ts_ns))
    assert out == []


def test_generate_false_suppresses_referenced_rules() -> None:
    corrs = compile_all()
    inner = "a8418a5a-5fc4-46b5-b23b-6c73beb19d41"
    assert suppressed_rules(corrs) == {FAILED.id, SUCCESS.id, inner}
    cor = Correlator(corrs)
    assert cor.suppressed == suppressed_rules(corrs)
    assert cor.referenced == {FAILED.id, SUCCESS.id, inner}


def test_generate_true_anywhere_wins() -> None:
    docs = DOCS.replace("  condition: {gte: 3}\n", "  condition: {gte: 3}\n  generate: true\n")
    corrs = compile_all(docs)
    assert FAILED.id not in suppressed_rules(corrs)
    assert SUCCESS.id in suppressed_rules(corrs)
    cor = Correlator(corrs)
    out = []
    for t in range(3):
        r, ev = login(FAILED, t)
        out.extend(cor.feed(r, ev, ev.ts_ns))
    assert out == []  # the inner correlation is still suppressed by the outer's default


def test_aliases_group_across_field_names() -> None:
    docs = """
title: Same id in two fields
id: c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f
correlation:
  type: temporal
  rules: [failed_login, successful_login]
  group-by: [who]
  timespan: 1m
  aliases:
    who:
      failed_login: User
      successful_login: Host
"""
    corr = compile_all(docs)[0]
    assert dict(corr.aliases["who"]) == {FAILED.id: "User", SUCCESS.id: "Host"}
    cor = Correlator([corr])
    r, ev = login(FAILED, 0, uid=7)
    assert cor.feed(r, ev, ev.ts_ns) == []
    ts = 1 * S
    ev2 = ProcExec(ts_ns=ts, wall_ns=ts, container="agent-1", pid=1, uid=99)
    assert cor.feed(SUCCESS, ev2, ts) == []  # Host = agent-1 != "7"

    def host_is_7(ev: Event) -> dict[str, Any]:
        return {"Host": "7"}

    success7 = Rule(SUCCESS.id, SUCCESS.name, fields=host_is_7)
    (v,) = cor.feed(success7, ev2, ts)
    assert v.evidence["group"] == {"who": "7"}


def test_dependency_order_puts_referenced_correlations_first() -> None:
    parsed = SigmaCollection.from_yaml(DOCS + "---\n" + DOCS.split("---\n")[1].replace(
        "a8418a5a-5fc4-46b5-b23b-6c73beb19d41", "a8418a5a-5fc4-46b5-b23b-6c73beb19d42").replace(
        "name: multiple_failed_login", "name: unrelated"), resolve_references=False)
    rules = [r for r in parsed.rules if isinstance(r, SigmaCorrelationRule)]
    assert [r.name for r in rules] == [None, "multiple_failed_login", "unrelated"]
    ordered = dependency_order(rules, lambda r: r)
    assert [r.name for r in ordered] == ["multiple_failed_login", None, "unrelated"]
    # Compiled in that order, each correlation finds the ones it references.
    base: dict[str, Any] = {FAILED.id: FAILED, "failed_login": FAILED,
                            SUCCESS.id: SUCCESS, "successful_login": SUCCESS}
    for r in ordered:
        c = compile_correlation(r, source=LOC, base=base)
        base[c.id] = c
        if c.name:
            base[c.name] = c
    outer = base["b180ead8-d58f-40b2-ae54-c8940995b9b6"]
    assert outer.rule_refs == ("a8418a5a-5fc4-46b5-b23b-6c73beb19d41", SUCCESS.id)
