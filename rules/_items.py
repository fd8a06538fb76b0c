"""Detection items: their compiled form, their fast predicates, their prefilter guards.

Strategy: one :class:`ItemDetail` per ``field|modifiers: values`` of a selection, holding the
:class:`~coi_watch.rules.modifiers.ValueTest` alternatives of each value. Two evaluations
exist and must agree (a property test checks it against a naive reference):

- :func:`item_pred` builds the closure the engine runs: one field read per form from the
  shared :class:`~coi_watch.rules.fields.EventView`, exact values in a ``frozenset``,
  prefixes and suffixes as one ``str.startswith``/``endswith`` call with a tuple, contains as
  ``in``, everything else (wildcards, regexes, CIDR, numbers, null, fieldref) after that;
- :func:`groups_result` is the slow, obviously right evaluation, used to fold items on
  constant or unobservable fields at load time and by ``explain``.

:func:`item_expr` picks between them for one event kind: a :class:`Leaf` with its
prefilter guard (:func:`item_guard`) when the item reads observed fields, a :class:`Const`
(with the reason) when it can be decided at load time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from coi_watch.rules.condition import Const, Expr, Guard, Leaf
from coi_watch.rules.fields import EventView, Exposure, LogSourceSpec
from coi_watch.rules.modifiers import ValueTest

__all__ = (
    "ItemDetail",
    "contradiction",
    "groups_result",
    "item_expr",
    "item_guard",
    "item_pred",
    "item_result",
    "item_value",
)


@dataclass(frozen=True, slots=True)
class ItemDetail:
    """One detection item: ``field|modifiers: values``, compiled."""

    field: str | None
    modifiers: tuple[str, ...]
    values: tuple[str, ...]
    groups: tuple[tuple[ValueTest, ...], ...]
    """One tuple of OR-ed alternatives per value (an expansion has several)."""
    all: bool
    negated: bool
    line: int

    @property
    def key(self) -> str:
        """The item as written: ``field|mod1|mod2``."""
        return "|".join([self.field or "", *self.modifiers]) if self.modifiers else (
            self.field or "<keywords>")

    def fields(self) -> list[str]:
        """The fields this item reads (its own and a ``fieldref`` target)."""
        out = [self.field] if self.field else []
        out += [t.ref for g in self.groups for t in g if t.ref]
        return out



def item_value(item_field: str, exposure: Exposure, view: EventView) -> Any:
    """The raw value an item sees for ``item_field`` under ``exposure`` (constants and
    unobservable fields resolved as the compiler folds them)."""
    cls = exposure.classify(item_field)
    if cls == "constant":
        return exposure.constants[item_field][0]
    if cls != "observed":
        return None
    return view.raw(item_field)


def _form(value: Any, form: str) -> Any:
    if form == "raw" or value is None:
        return value
    text = value if isinstance(value, str) else (
        ("true" if value else "false") if isinstance(value, bool) else str(value))
    return text.lower() if form == "lower" else text


def _test_value(t: ValueTest, value: Any, other: Any = None) -> bool:
    if t.form == "fieldref":
        if value is None or other is None:
            return False
        return t.test((_form(value, "lower"), _form(other, "lower")))
    v = _form(value, t.form)
    if t.form != "raw" and v is None:
        return False
    return t.test(v)


def groups_result(item: ItemDetail, get: Callable[[str], Any], fields: Sequence[str]) -> bool:
    """The slow, obviously right evaluation of an item (folding, explain)."""
    def group_ok(g: tuple[ValueTest, ...]) -> bool:
        return any(_test_value(t, get(f), get(t.ref) if t.ref else None)
                   for f in fields for t in g)

    hit = all(map(group_ok, item.groups)) if item.all else any(map(group_ok, item.groups))
    return hit is not item.negated


def item_result(item: ItemDetail, exposure: Exposure, view: EventView) -> bool:
    """Evaluate one item the slow, obviously right way (explain, and the tests' oracle for
    the fast paths): constants and unobservable fields resolved as the compiler folds them."""
    fields = [item.field] if item.field else list(exposure.keyword_fields)
    return groups_result(item, lambda f: item_value(f, exposure, view), fields)


# The fast paths: one field read per form, set/tuple tests in C.
def _or_pred(field: str, tests: Sequence[ValueTest]) -> Callable[[EventView], bool]:
    exact = frozenset(t.literal or "" for t in tests if t.form == "lower" and t.shape == "exact")
    prefixes = tuple(t.literal or "" for t in tests if t.form == "lower" and t.shape == "prefix")
    suffixes = tuple(t.literal or "" for t in tests if t.form == "lower" and t.shape == "suffix")
    contains = tuple(t.literal or "" for t in tests
                     if t.form == "lower" and t.shape == "contains")
    fast = {"exact", "prefix", "suffix", "contains"}
    lower_other = tuple(t.test for t in tests if t.form == "lower" and t.shape not in fast)
    text_tests = tuple(t.test for t in tests if t.form == "text")
    raw_tests = tuple(t.test for t in tests if t.form == "raw")
    ref_tests = tuple(t for t in tests if t.form == "fieldref")
    only_lower = not (text_tests or raw_tests or ref_tests)

    if only_lower and not lower_other and not exact and not prefixes and not suffixes:
        if len(contains) == 1:
            (c,) = contains

            def contains_one(view: EventView) -> bool:
                v = view.lower(field)
                return v is not None and c in v

            return contains_one

        def contains_any(view: EventView) -> bool:
            v = view.lower(field)
            if v is None:
                return False
            for c in contains:  # noqa: SIM110 - a loop beats any()/all() on a generator here
                if c in v:
                    return True
            return False

        return contains_any
    if only_lower and not lower_other and not contains and not exact and not prefixes:
        def suffix(view: EventView) -> bool:
            v = view.lower(field)
            return v is not None and v.endswith(suffixes)

        return suffix
    if only_lower and not lower_other and not contains and not prefixes and not suffixes:
        def exact_in(view: EventView) -> bool:
            return view.lower(field) in exact

        return exact_in

    def generic(view: EventView) -> bool:
        v = view.lower(field)
        if v is not None:
            if v in exact:
                return True
            if prefixes and v.startswith(prefixes):
                return True
            if suffixes and v.endswith(suffixes):
                return True
            for c in contains:
                if c in v:
                    return True
            for t in lower_other:
                if t(v):
                    return True
        if text_tests:
            s = view.text(field)
            if s is not None:
                for t in text_tests:
                    if t(s):
                        return True
        if raw_tests:
            r = view.raw(field)
            for t in raw_tests:
                if t(r):
                    return True
        for rt in ref_tests:
            if v is not None and (o := view.lower(rt.ref or "")) is not None and rt.test((v, o)):
                return True
        return False

    return generic


def item_pred(item: ItemDetail, fields: Sequence[str]) -> Callable[[EventView], bool]:
    if len(fields) == 1 and not item.all:
        pred = _or_pred(fields[0], [t for g in item.groups for t in g])
    elif len(fields) == 1:
        (f,) = fields
        per_group = tuple(_or_pred(f, g) for g in item.groups)

        def all_groups(view: EventView) -> bool:
            for p in per_group:  # noqa: SIM110 - a loop beats any()/all() on a generator here
                if not p(view):
                    return False
            return True

        pred = all_groups
    else:  # keywords: any field, per value
        per = tuple(tuple(_or_pred(f, g) for f in fields) for g in item.groups)
        need_all = item.all

        def keywords(view: EventView) -> bool:
            for ps in per:
                hit = False
                for p in ps:
                    if p(view):
                        hit = True
                        break
                if hit and not need_all:
                    return True
                if not hit and need_all:
                    return False
            return need_all

        pred = keywords
    if item.negated:
        inner = pred
        return lambda view: not inner(view)
    return pred


def item_guard(item: ItemDetail, fields: Sequence[str]) -> Guard:
    if item.negated or not fields:
        return None

    def lits(g: tuple[ValueTest, ...]) -> list[str] | None:
        out = [t.literal.lower() for t in g if t.literal and t.shape != "number"]
        return out if len(out) == len(g) and all(len(x) >= 2 for x in out) else None

    per_group = [lits(g) for g in item.groups]
    if item.all:
        usable = [g for g in per_group if g]
        if not usable:
            return None
        chosen = [max(usable, key=lambda g: min(map(len, g)))]
    elif all(per_group):
        chosen = [g for g in per_group if g]
    else:
        return None
    return frozenset((f, lit) for f in fields for g in chosen for lit in g)


def contradiction(item: ItemDetail) -> str | None:
    if not item.all or item.negated or item.field is None:
        return None
    exact = {t.literal for g in item.groups if len(g) == 1 for t in g
             if t.shape == "exact" and t.form in ("lower", "text")}
    if len(exact) > 1:
        return (f"{item.key} requires the field to equal {len(exact)} different values at "
                "once")
    return None


def item_expr(item: ItemDetail, exp: Exposure, spec: LogSourceSpec) -> Expr:
    why = contradiction(item)
    if why:
        return Const(False, (("E007", why, item.line),))
    if item.field is None:
        fields = list(exp.keyword_fields)
        return Leaf(item_pred(item, fields), item_guard(item, fields), item.key)
    names = item.fields()
    classes = {n: exp.classify(n) for n in names}
    if all(c == "observed" for c in classes.values()):
        return Leaf(item_pred(item, [item.field]), item_guard(item, [item.field]), item.key)
    if any(c == "observed" for c in classes.values()):  # fieldref across kinds of fields
        exposure = exp

        def mixed(view: EventView) -> bool:
            return groups_result(item, lambda f: item_value(f, exposure, view), [names[0]])

        return Leaf(mixed, None, item.key)
    value = {n: (exp.constants[n][0] if c == "constant" else None) for n, c in classes.items()}
    result = groups_result(item, value.get, [item.field])
    reasons = []
    for n, c in classes.items():
        if c == "constant":
            code = "E004" if spec.name == "auditd" else "E007"
            reasons.append((code, f"{n} is always {value[n]!r} on {exp.kind} events "
                                  f"({exp.constants[n][1]})", item.line))
        else:
            reasons.append(("E003", f"{n} is not observed on {exp.kind} events "
                                    f"({exp.unobserved.get(n, 'unknown field')})", item.line))
    return Const(result, () if result else tuple(reasons))
