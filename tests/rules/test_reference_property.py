"""Property: compiled rules agree with a naive reference evaluator.

Hypothesis generates simple rules (fields, modifier chains, wildcard values, regexes,
keyword lists, nested and/or/not conditions, ``1 of``/``all of``) and process events; the
reference below interprets the rule *as written* with Python's ``re``, straight from the
Sigma specification, one obvious step at a time. Any disagreement with the compiled
closures (fast paths, folding, the engine's prefilter) is a bug in one of them.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from coi_watch.events import Ancestor, ProcExec
from coi_watch.rules.engine import RuleSet
from coi_watch.rules.fields import field_value
from coi_watch.rules.load import load_text

FIELDS = ["CommandLine", "Image", "CurrentDirectory", "User", "ParentImage",
          "LogonId"]  # LogonId: a field coi-watch does not observe (folded to null)
KEYWORD_FIELDS = ["CommandLine", "Image", "ParentCommandLine", "ParentImage"]
MODS = ["", "|contains", "|startswith", "|endswith", "|contains|all", "|cased",
        "|cased|contains", "|re", "|exists", "|neq", "|endswith|neq"]
REGEXES = ["a+", "^/b", "a.b", "[ab]/", "b$", "^$", "(ab|ba)", r"\s-", "A"]
WORDS = ["a", "b", "ab", "ba", "/b", "-a", "A", "/bin/ab", "root"]

PIECES = ["a", "b", "ab", "ba", "/b", "/bin/ab", "bin", "root", "-a", "A", "B", "/usr/bin/ba",
          "ab ba", "/", "/ab", "0", ""]


@st.composite
def value_text(draw: st.DrawFn) -> str:
    """Mostly pieces of what events hold (so rules do match), with wildcards mixed in."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.text(alphabet="abAB/ -*?", max_size=5))
    out = draw(st.sampled_from(PIECES))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(out)))
        out = out[:at] + draw(st.sampled_from(["*", "?", "*b", "a?"])) + out[at:]
    return out


@st.composite
def items(draw: st.DrawFn) -> tuple[str, Any]:
    field = draw(st.sampled_from(FIELDS))
    mod = draw(st.sampled_from(MODS))
    if mod == "|exists":
        return field + mod, draw(st.booleans())
    if mod == "|re":
        return field + mod, draw(st.sampled_from(REGEXES))
    values = draw(st.lists(value_text(), min_size=1, max_size=3))
    return field + mod, values if len(values) > 1 else values[0]


@st.composite
def selections(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 5)) == 0:
        return draw(st.lists(st.text(alphabet="ab/-", min_size=1, max_size=3), min_size=1,
                             max_size=3))
    pairs = draw(st.lists(items(), min_size=1, max_size=3, unique_by=lambda p: p[0]))
    return dict(pairs)


def conditions(names: list[str]) -> st.SearchStrategy[Any]:
    leaf = st.one_of(st.sampled_from(names).map(lambda n: ("ref", n)),
                     st.sampled_from(["1", "all"]).map(lambda q: ("quant", q)))
    return st.recursive(
        leaf,
        lambda sub: st.one_of(
            sub.map(lambda c: ("not", c)),
            st.tuples(st.sampled_from(["and", "or"]), sub, sub)),
        max_leaves=5)


def render(c: Any) -> str:
    if c[0] == "ref":
        return str(c[1])
    if c[0] == "quant":
        return f"{c[1]} of sel*"
    if c[0] == "not":
        return f"not ({render(c[1])})"
    return f"({render(c[1])}) {c[0]} ({render(c[2])})"


@st.composite
def rules(draw: st.DrawFn) -> tuple[dict[str, Any], Any]:
    n = draw(st.integers(1, 3))
    names = [f"sel{i}" for i in range(n)]
    sels = {name: draw(selections()) for name in names}
    return sels, draw(conditions(names))


events = st.builds(
    lambda argv, exe, cwd, uid, parent: ProcExec(
        ts_ns=1, wall_ns=1, container="c", pid=3, ppid=1, uid=uid, exe=exe, argv=tuple(argv),
        cwd=cwd, ancestry=(Ancestor(pid=1, exe=parent, cmdline=parent),) if parent else ()),
    st.lists(st.sampled_from(WORDS), max_size=4),
    st.sampled_from(["/bin/ab", "/usr/bin/ba", "/bin/busybox", "", "/A/b"]),
    st.sampled_from(["/", "/ab", "/b/a", ""]),
    st.sampled_from([1_000_000, 1_000_001, -1]),
    st.sampled_from(["", "/bin/ab", "/usr/bin/b"]),
)


# ------------------------------------------------------------------ the reference


def wildcard(value: str, prefix: bool, suffix: bool) -> str:
    out = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in value)
    if prefix and not value.startswith("*"):
        out = ".*" + out
    if suffix and not value.endswith("*"):
        out = out + ".*"
    return out


def text(ev: ProcExec, field: str) -> str | None:
    v = field_value(ev, field)
    return None if v is None or v == "" else str(v)


def ref_item(ev: ProcExec, key: str, value: Any) -> bool:
    field, *mods = key.split("|")
    v = text(ev, field)
    if "exists" in mods:
        return (v is not None) is value
    values = value if isinstance(value, list) else [value]
    if "re" in mods:
        return v is not None and re.search(values[0], v) is not None

    def one(val: str) -> bool:
        if v is None:
            return False
        pat = wildcard(val, "contains" in mods or "endswith" in mods,
                       "contains" in mods or "startswith" in mods)
        flags = 0 if "cased" in mods else re.IGNORECASE
        return re.fullmatch(pat, v, flags | re.DOTALL) is not None

    hit = all(map(one, values)) if "all" in mods else any(map(one, values))
    return not hit if "neq" in mods else hit


def ref_selection(ev: ProcExec, sel: Any) -> bool:
    if isinstance(sel, list):
        return any(v is not None and s.lower() in v.lower()
                   for s in sel for v in (text(ev, f) for f in KEYWORD_FIELDS))
    return all(ref_item(ev, k, v) for k, v in sel.items())


def ref_condition(ev: ProcExec, sels: dict[str, Any], c: Any) -> bool:
    if c[0] == "ref":
        return ref_selection(ev, sels[c[1]])
    if c[0] == "quant":
        results = [ref_selection(ev, s) for s in sels.values()]
        return any(results) if c[1] == "1" else all(results)
    if c[0] == "not":
        return not ref_condition(ev, sels, c[1])
    a, b = ref_condition(ev, sels, c[1]), ref_condition(ev, sels, c[2])
    return a and b if c[0] == "and" else a or b


# ------------------------------------------------------------------ the property


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules(), st.lists(events, min_size=1, max_size=8))
def test_compiled_rules_agree_with_the_reference(rule: tuple[dict[str, Any], Any],
                                                 evs: list[ProcExec]) -> None:
    sels, cond = rule
    doc = {"title": "p", "id": "0b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "level": "high",
           "logsource": {"category": "process_creation", "product": "linux"},
           "detection": {**sels, "condition": render(cond)}}
    res = load_text(yaml.safe_dump(doc, sort_keys=False))
    if res.errors:  # only "can never match" is a legitimate refusal here
        assert [d.code for d in res.errors] in (["E007"], ["E003"]), res.errors
        assert "never match" in res.errors[0].message
        assert not any(ref_condition(ev, sels, cond) for ev in evs)
        return
    (compiled,) = res.rules
    indexed = RuleSet.from_load(res)
    for ev in evs:
        expected = ref_condition(ev, sels, cond)
        event(f"matches: {expected}")
        assert compiled.match(ev) is expected, (ev, doc)
        assert bool(indexed.matches(ev)) is expected, (ev, doc)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(items(), min_size=1, max_size=2, unique_by=lambda p: p[0]),
       st.lists(events, min_size=3, max_size=10))
def test_single_selections_agree_with_the_reference(pairs: list[tuple[str, Any]],
                                                    evs: list[ProcExec]) -> None:
    """The same property, focused: one selection, so every fast path of every modifier is
    compared with the reference on its own (no and/or to mask a wrong answer)."""
    sel = dict(pairs)
    doc = {"title": "p", "id": "0b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "level": "high",
           "logsource": {"category": "process_creation", "product": "linux"},
           "detection": {"sel": sel, "condition": "sel"}}
    res = load_text(yaml.safe_dump(doc, sort_keys=False))
    if res.errors:
        assert "never match" in res.errors[0].message, res.errors
        assert not any(ref_selection(ev, sel) for ev in evs)
        return
    (compiled,) = res.rules
    for ev in evs:
        expected = ref_selection(ev, sel)
        event(f"matches: {expected}")
        assert compiled.match(ev) is expected, (ev, doc)
