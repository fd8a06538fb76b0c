"""Explain a rule against an event: which selections matched, and why.

Strategy: ``coi-watch rules explain RULE EVENT.json`` answers "why did (or didn't) this
rule fire?" without a debugger. Every detection item of every selection is evaluated on the
event the slow, obviously right way (:func:`~coi_watch.rules.compile.item_result`, the same
value tests as the compiled closures, with constant and unobservable fields resolved the
way the compiler folds them); each line shows the field, the modifier chain, the values,
what the event holds for that field, and the result. The verdict at the bottom is the
compiled rule's own ``match``, so the explanation never claims something the engine would
not do.
"""

from __future__ import annotations

from dataclasses import dataclass

from coi_watch.events import Event
from coi_watch.rules.compile import (
    CompiledRule,
    ItemDetail,
    SelectionDetail,
    item_result,
    item_value,
)
from coi_watch.rules.fields import EventView, Exposure

__all__ = ("Explanation", "ItemResult", "SelectionResult", "explain", "format_explanation")

_MAX_SHOWN = 120


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One detection item on the event."""

    field: str
    modifiers: tuple[str, ...]
    values: tuple[str, ...]
    event_value: object
    note: str
    result: bool
    line: int


@dataclass(frozen=True, slots=True)
class SelectionResult:
    """One selection on the event: its items (nested groups flattened, in order)."""

    name: str
    result: bool
    items: tuple[ItemResult, ...]


@dataclass(frozen=True, slots=True)
class Explanation:
    """Everything ``explain`` found; :func:`format_explanation` prints it."""

    rule: CompiledRule
    kind: str
    applies: bool
    reason: str
    selections: tuple[SelectionResult, ...]
    matched: bool


def _eval(sel: SelectionDetail, exp: Exposure, view: EventView,
          out: list[ItemResult]) -> bool:
    results = []
    for m in sel.members:
        if isinstance(m, ItemDetail):
            ok = item_result(m, exp, view)
            out.append(_item(m, exp, view, ok))
        else:
            ok = _eval(m, exp, view, out)
        results.append(ok)
    return all(results) if sel.linking == "and" else any(results)


def _item(item: ItemDetail, exp: Exposure, view: EventView, ok: bool) -> ItemResult:
    if item.field is None:
        shown: object = {f: view.raw(f) for f in exp.keyword_fields}
        note = "keywords: any of " + ", ".join(exp.keyword_fields)
    else:
        cls = exp.classify(item.field)
        shown = item_value(item.field, exp, view)
        note = {"constant": f"always this on {exp.kind}",
                "unobserved": f"not observed: {exp.unobserved.get(item.field, '')}"}.get(cls, "")
    if item.all:
        note = "; ".join(x for x in (note, "all values must match") if x)
    if item.negated:
        note = "; ".join(x for x in (note, "negated (neq)") if x)
    return ItemResult(item.field or "<keywords>", item.modifiers, item.values, shown, note, ok,
                      item.line)


def explain(rule: CompiledRule, ev: Event) -> Explanation:
    """Evaluate ``rule`` on ``ev`` item by item."""
    detail = rule.detail
    exp = detail.exposures.get(ev.kind) if detail else None
    if detail is None or exp is None:
        kinds = ", ".join(sorted(rule.kinds))
        return Explanation(rule, ev.kind, False,
                           f"the rule applies to {kinds} events, not {ev.kind}", (), False)
    reason = ""
    if exp.ops is not None and getattr(ev, "op", None) not in exp.ops:
        reason = (f"{detail.spec.name} only counts file operations "
                  f"{', '.join(sorted(exp.ops))}; this event is {getattr(ev, 'op', '?')!r}")
    view = EventView(ev)
    sels = []
    for name, sel in detail.selections.items():
        items: list[ItemResult] = []
        ok = _eval(sel, exp, view, items)
        sels.append(SelectionResult(name, ok, tuple(items)))
    return Explanation(rule, ev.kind, not reason, reason, tuple(sels), rule.match(ev))


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def format_explanation(x: Explanation) -> list[str]:
    """The explanation as printable lines."""
    r = x.rule
    lines = [f"rule      {r.id}  {r.title}", f"file      {r.source}",
             f"level     {r.level}" + (f"  action {r.action}" if r.action else "")
             + f"  mode {r.mode}", f"event     {x.kind}"]
    if r.detail is not None:
        lines += [f"condition {c}" for c in r.detail.conditions]
    if x.reason:
        lines.append(f"note      {x.reason}")
    for sel in x.selections:
        lines.append(f"{'MATCH' if sel.result else 'no   '}  selection {sel.name}")
        for it in sel.items:
            key = "|".join((it.field, *it.modifiers))
            values = list(it.values) if len(it.values) != 1 else it.values[0]
            lines.append(f"    {'yes' if it.result else 'no '}  {key}: {_short(values)}"
                         f"  (line {it.line})")
            lines.append(f"           event: {_short(it.event_value)}"
                         + (f"  [{it.note}]" if it.note else ""))
    lines.append(f"result    {'MATCH' if x.matched else 'no match'}")
    return lines
