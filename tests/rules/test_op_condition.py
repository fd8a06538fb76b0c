"""Conditions: and/or/not, parentheses, ``1 of``/``all of`` patterns and ``them``,
condition lists, and the parser's errors."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from coi_watch.errors import RuleSyntaxError
from coi_watch.events import ProcExec
from coi_watch.rules.compile import CompiledRule
from coi_watch.rules.condition import Not, Op, Quant, Ref, parse_condition
from coi_watch.rules.load import LoadResult, load_text

SELS = {
    "sel_a": {"CommandLine|contains": "alpha"},
    "sel_b": {"CommandLine|contains": "beta"},
    "filter_c": {"CommandLine|contains": "gamma"},
    "_hidden": {"CommandLine|contains": "delta"},
}


def load(condition: Any) -> LoadResult:
    doc = {"title": "t", "id": "0b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "level": "high",
           "logsource": {"category": "process_creation", "product": "linux"},
           "detection": {**SELS, "condition": condition}}
    return load_text(yaml.safe_dump(doc, sort_keys=False))


def rule(condition: Any) -> CompiledRule:
    res = load(condition)
    assert not res.errors, res.errors
    return res.rules[0]


def hits(condition: Any) -> set[str]:
    r = rule(condition)
    words = ["alpha", "beta", "gamma", "delta"]
    out = set()
    for mask in range(16):
        argv = tuple(w for i, w in enumerate(words) if mask >> i & 1)
        ev = ProcExec(ts_ns=1, wall_ns=1, container="c", pid=2, exe="/x", argv=argv or ("-",))
        if r.match(ev):
            out.add(" ".join(argv))
    return out


def combos(pred: Any) -> set[str]:
    words = ["alpha", "beta", "gamma", "delta"]
    out = set()
    for mask in range(16):
        present = {w for i, w in enumerate(words) if mask >> i & 1}
        if pred(present):
            out.add(" ".join(w for w in words if w in present))
    return out


@pytest.mark.parametrize(("condition", "pred"), [
    ("sel_a and sel_b", lambda p: {"alpha", "beta"} <= p),
    ("sel_a or sel_b", lambda p: bool({"alpha", "beta"} & p)),
    ("sel_a and not filter_c", lambda p: "alpha" in p and "gamma" not in p),
    ("not sel_a or sel_b and filter_c",
     lambda p: "alpha" not in p or ("beta" in p and "gamma" in p)),
    ("(not sel_a or sel_b) and filter_c",
     lambda p: ("alpha" not in p or "beta" in p) and "gamma" in p),
    ("not not sel_a", lambda p: "alpha" in p),
    ("1 of sel_*", lambda p: bool({"alpha", "beta"} & p)),
    ("any of sel_*", lambda p: bool({"alpha", "beta"} & p)),
    ("all of sel_*", lambda p: {"alpha", "beta"} <= p),
    ("1 of them", lambda p: bool({"alpha", "beta", "gamma"} & p)),
    ("all of them", lambda p: {"alpha", "beta", "gamma"} <= p),
    ("1 of sel_* and not 1 of filter_*",
     lambda p: bool({"alpha", "beta"} & p) and "gamma" not in p),
    ("not 1 of sel_*", lambda p: not {"alpha", "beta"} & p),
    ("1 of _*", lambda p: "delta" in p),
    ("sel_a and _hidden", lambda p: {"alpha", "delta"} <= p),
    (["sel_a", "filter_c"], lambda p: bool({"alpha", "gamma"} & p)),
])
def test_truth_tables(condition: Any, pred: Any) -> None:
    assert hits(condition) == combos(pred)


def test_precedence_tree() -> None:
    tree = parse_condition("not a or b and 1 of c*")
    assert tree == Op("or", (Not(Ref("a", 5)), Op("and", (Ref("b", 10), Quant(False, "c*", 16)))))


def test_selection_named_like_a_keyword_prefix() -> None:
    assert parse_condition("notes and order") == Op("and", (Ref("notes", 1), Ref("order", 11)))


@pytest.mark.parametrize(("condition", "where"), [
    ("sel_a and", "end"), ("(sel_a", "')'"), ("sel_a sel_b", "'sel_b'"), ("", "empty"),
    ("sel_* and sel_b", "needs '1 of'"), ("1 of", "after '1 of'"), ("sel_a & sel_b", "'&'"),
    ("count() > 3", "'>'"),
])
def test_syntax_errors_say_where(condition: str, where: str) -> None:
    with pytest.raises(RuleSyntaxError) as exc:
        parse_condition(condition)
    assert where in exc.value.message
    assert exc.value.code == "E001"


def test_deprecated_aggregation_and_near_point_at_correlations() -> None:
    for condition in ("sel_a | count() by Image > 5", "sel_a near sel_b"):
        res = load(condition)
        assert [d.code for d in res.errors] == ["E001"]
        assert "correlation" in res.errors[0].message


def test_missing_selection_and_empty_pattern_are_e006() -> None:
    for condition in ("sel_a and selection", "1 of nothing_*"):
        res = load(condition)
        assert [d.code for d in res.errors] == ["E006"]
        assert "sel_a" in res.errors[0].message  # lists what the rule defines
