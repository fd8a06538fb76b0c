"""Compile one parsed Sigma rule into an immutable :class:`CompiledRule`.

Strategy: pySigma parses the YAML and applies the value modifiers; this module turns the
result into closures once, at load time, and never looks at the rule objects again:

1. metadata: id, level, tags (MITRE technique ids from ``attack.tNNNN``), ``coi.action``
   and ``coi.mode`` (custom attributes; ``coi: {action, mode}`` is accepted too);
2. the log source through :func:`coi_watch.rules.fields.logsource_spec` (E004);
3. every selection into a tree of detection items; each item's field is checked against
   the log source (E003), its modifiers against :data:`~coi_watch.rules.modifiers.MODIFIERS`
   (E002), its values compiled by :func:`~coi_watch.rules.modifiers.value_tests` (E005);
4. per event kind of the log source, the condition(s) are parsed
   (:mod:`coi_watch.rules.condition`), resolved (E006), constant-folded with that kind's
   constant and unobservable fields and compiled into one predicate; a kind where the
   rule folds to false is dropped, and a rule left with no kind is an error (E003, E004 or
   E007 with the reasons);
5. a prefilter guard per kind (see :func:`coi_watch.rules.condition.guard`).

Items compile into the cheapest code that is exact: a set lookup for exact values,
``str.startswith``/``endswith`` with a tuple, ``in`` for contains, RE2 only for real
patterns. Field values come from an :class:`~coi_watch.rules.fields.EventView`, so every
field of an event is computed once, whatever the number of rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sigma.conditions import ConditionAND, ConditionOR
from sigma.modifiers import reverse_modifier_mapping
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaRule
from sigma.types import SigmaString, SpecialChars

from coi_watch.errors import (
    RuleError,
    RuleLocation,
    RuleSyntaxError,
    UnknownFieldError,
    UnknownModifierError,
)
from coi_watch.events import Event
from coi_watch.rules._items import ItemDetail, item_expr, item_result, item_value
from coi_watch.rules.condition import (
    AllOf,
    AnyOf,
    Const,
    Expr,
    Guard,
    closure,
    fold,
    guard,
    parse_condition,
    resolve,
)
from coi_watch.rules.fields import (
    EventView,
    Exposure,
    LogSourceSpec,
    UnsupportedLogsourceError,
    logsource_spec,
)
from coi_watch.rules.lint import Diagnostic, diagnostic
from coi_watch.rules.modifiers import (
    MAX_VALUES,
    MODIFIERS,
    Context,
    InvalidValueError,
    value_tests,
)
from coi_watch.verdicts import Action

__all__ = (
    "SIGMA_KEYS",
    "CompiledRule",
    "ItemDetail",
    "NeverMatchesError",
    "RuleDetail",
    "SelectionDetail",
    "compile_rule",
    "item_result",
    "item_value",
    "mitre_ids",
)

SIGMA_KEYS = frozenset({
    "title", "id", "name", "status", "description", "references", "author", "date",
    "modified", "tags", "logsource", "detection", "fields", "falsepositives", "level",
    "related", "license", "taxonomy", "scope", "correlation", "filter", "generate",
    "action",
})
"""Top-level keys of Sigma rules, correlations and filters (anything else is custom)."""

_MODES = ("enforce", "monitor")
_ACTIONS = tuple(a.value for a in Action)


class NeverMatchesError(RuleError):
    """A rule that can never match (E007)."""

    code = "E007"


# --------------------------------------------------------------------------- structure


@dataclass(frozen=True, slots=True)
class SelectionDetail:
    """A selection (or a nested group of it): items AND-ed (a mapping) or OR-ed (a list)."""

    linking: str
    members: tuple[ItemDetail | SelectionDetail, ...]

    def items(self) -> Iterator[ItemDetail]:
        """Every item, depth first."""
        for m in self.members:
            if isinstance(m, ItemDetail):
                yield m
            else:
                yield from m.items()


@dataclass(frozen=True, slots=True)
class RuleDetail:
    """What explain and lint need of a compiled rule."""

    spec: LogSourceSpec
    selections: Mapping[str, SelectionDetail]
    conditions: tuple[str, ...]
    exposures: Mapping[str, Exposure]
    """The exposure of each kind the rule applies to."""


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A Sigma rule compiled once into immutable closures.

    ``match(ev)`` is the whole rule (it builds its own :class:`EventView`); the engine
    calls ``predicates[ev.kind](view)`` with one shared view instead. ``fields(ev)`` gives
    the Sigma-named fields of an event as the rule's log source sees them.
    """

    id: str
    name: str | None
    title: str
    level: str
    tags: tuple[str, ...]
    mitre: tuple[str, ...]
    kinds: frozenset[str]
    match: Callable[[Event], bool]
    source: RuleLocation
    action: str
    mode: str
    fields: Callable[[Event], dict[str, Any]]
    predicates: Mapping[str, Callable[[EventView], bool]] = field(default_factory=dict)
    guards: Mapping[str, Guard] = field(default_factory=dict)
    key_fields: tuple[str, ...] = ()
    """Observed fields the rule tests, in order: the evidence and the dedup key."""
    detail: RuleDetail | None = None
    warnings: tuple[Diagnostic, ...] = ()
    description: str = ""
    status: str = ""


# --------------------------------------------------------------------------- metadata

_MITRE = re.compile(r"t\d{4}(?:\.\d{3})?")


def mitre_ids(tags: Sequence[str]) -> tuple[str, ...]:
    """ATT&CK technique ids from Sigma tags: ``attack.t1059.004`` -> ``T1059.004``."""
    out = []
    for tag in tags:
        ns, _, name = tag.partition(".")
        if ns == "attack" and _MITRE.fullmatch(name):
            out.append(name.upper())
    return tuple(dict.fromkeys(out))


def _coi_attrs(custom: Mapping[str, Any], loc: Callable[[str], RuleLocation]
               ) -> tuple[str, str]:
    attrs: dict[str, Any] = {}
    nested = custom.get("coi")
    if nested is not None:
        if not isinstance(nested, Mapping):
            raise RuleSyntaxError("'coi' must be a mapping (action, mode)", loc("coi"))
        attrs.update({f"coi.{k}": v for k, v in nested.items()})
    attrs.update({k: v for k, v in custom.items() if k.startswith("coi.")})
    for key in attrs:
        if key not in ("coi.action", "coi.mode"):
            raise RuleSyntaxError(f"unknown attribute {key!r}: coi-watch knows coi.action and "
                                  "coi.mode", loc(key))
    action = attrs.get("coi.action", "")
    if action not in ("", *_ACTIONS):
        raise RuleSyntaxError(f"coi.action {action!r} is not one of {', '.join(_ACTIONS)}",
                              loc("coi.action"))
    mode = attrs.get("coi.mode", "enforce")
    if mode not in _MODES:
        raise RuleSyntaxError(f"coi.mode {mode!r} is not one of {', '.join(_MODES)}",
                              loc("coi.mode"))
    return str(action), str(mode)


# --------------------------------------------------------------------------- items


def _modifier_ids(item: SigmaDetectionItem, source: RuleLocation) -> tuple[str, ...]:
    ids = []
    for cls in item.modifiers:
        mod_id = reverse_modifier_mapping.get(cls.__name__, cls.__name__)
        mod = MODIFIERS.get(mod_id)
        if mod is None or not mod.supported:
            why = f": {mod.reason}" if mod is not None else ""
            raise UnknownModifierError(f"modifier {mod_id!r} is not supported{why}", source)
        ids.append(mod_id)
    return tuple(ids)


def _item(item: SigmaDetectionItem, spec: LogSourceSpec, ctx: Context, line: int
          ) -> ItemDetail:
    source = ctx.source
    assert source is not None
    loc = RuleLocation(source.path, line or source.line)
    mods = _modifier_ids(item, loc)
    ctx = Context(loc, ctx.placeholders)
    for name in [item.field] if item.field else []:
        _check_field(name, spec, loc)
    originals = item.original_value if item.original_value is not None else item.value
    if not item.value:
        what = f"{item.field}: an empty value list" if item.field else "an empty selection"
        raise NeverMatchesError(f"{what} matches nothing (write null to test that a field "
                                "is absent)", loc)
    values = item.value if item.field else [_anywhere(v) for v in item.value]
    groups = tuple(tuple(value_tests(v, ctx)) for v in values)
    if sum(len(g) for g in groups) > MAX_VALUES:
        raise InvalidValueError(
            f"{item.field or 'keywords'}: {sum(len(g) for g in groups)} values (after "
            f"expansion) exceed the limit of {MAX_VALUES}; split the list or use a regex",
            loc)
    for t in (t for g in groups for t in g if t.ref):
        _check_field(t.ref or "", spec, loc)
    return ItemDetail(
        field=item.field, modifiers=mods, values=tuple(str(v) for v in originals),
        groups=groups, all=item.value_linking is ConditionAND, negated=item.negated,
        line=loc.line)


def _anywhere(value: Any) -> Any:
    """Keywords search the text: ``foo`` means ``*foo*`` (full-text search semantics)."""
    if type(value) is not SigmaString:
        return value
    if not value.startswith(SpecialChars.WILDCARD_MULTI):
        value = SpecialChars.WILDCARD_MULTI + value
    if not value.endswith(SpecialChars.WILDCARD_MULTI):
        value = value + SpecialChars.WILDCARD_MULTI
    return value


def _check_field(name: str, spec: LogSourceSpec, loc: RuleLocation) -> None:
    if all(e.classify(name) == "unknown" for e in spec.exposures):
        raise UnknownFieldError(spec.unknown_field_message(name), loc)


def _selection(det: SigmaDetection, spec: LogSourceSpec, ctx: Context,
               lines: Mapping[tuple[Any, ...], int], path: tuple[Any, ...]) -> SelectionDetail:
    members: list[ItemDetail | SelectionDetail] = []
    for i, member in enumerate(det.detection_items):
        line = lines.get((*path, i), 0) or lines.get(path, 0)
        if isinstance(member, SigmaDetection):
            members.append(_selection(member, spec, ctx, lines, (*path, i)))
        else:
            members.append(_item(member, spec, ctx, line))
    linking = "or" if det.item_linking is ConditionOR else "and"
    return SelectionDetail(linking, tuple(members))


def _selection_expr(sel: SelectionDetail, exp: Exposure, spec: LogSourceSpec) -> Expr:
    args = tuple(item_expr(m, exp, spec) if isinstance(m, ItemDetail)
                 else _selection_expr(m, exp, spec) for m in sel.members)
    if len(args) == 1:
        return args[0]
    return AllOf(args) if sel.linking == "and" else AnyOf(args)


# --------------------------------------------------------------------------- the rule


def compile_rule(
    rule: SigmaRule,
    *,
    source: RuleLocation,
    placeholders: Mapping[str, Sequence[str]] | None = None,
    lines: Mapping[tuple[Any, ...], int] | None = None,
) -> CompiledRule:
    """Compile ``rule`` (from ``source``) into a :class:`CompiledRule`.

    ``lines`` maps YAML paths of the rule document (``("detection", "sel", 0)`` is the first
    key of selection ``sel``) to line numbers, for precise error locations.

    Raises:
        RuleError: a subclass with a code (E001 ... E007) and the location of the problem.
    """
    lines = lines or {}

    def loc(*path: Any) -> RuleLocation:
        return RuleLocation(source.path, lines.get(path, 0) or source.line)

    ctx = Context(source, placeholders or {})
    warnings: list[Diagnostic] = []
    rule_id = str(rule.id) if rule.id is not None else (rule.name or rule.title)
    if rule.id is None or rule.level is None:
        missing = " and ".join(k for k, v in (("id", rule.id), ("level", rule.level)) if v is None)
        warnings.append(diagnostic("W105", f"rule {rule.title!r} has no {missing}", source,
                                   rule_id))
    for key in sorted(k for k in rule.custom_attributes if k not in SIGMA_KEYS
                      and k != "coi" and not k.startswith("coi.")):
        warnings.append(diagnostic("W104", f"unknown key {key!r} kept as a custom attribute",
                                   loc(key), rule_id))
    action, mode = _coi_attrs(rule.custom_attributes, lambda k: loc(k))
    ls = rule.logsource
    try:
        spec = logsource_spec(ls.category, ls.product, ls.service)
    except UnsupportedLogsourceError as exc:
        raise UnsupportedLogsourceError(exc.message, loc("logsource")) from None

    det_loc = loc("detection")
    selections = {
        name: _selection(d, spec, Context(det_loc, ctx.placeholders), lines,
                         ("detection", name))
        for name, d in rule.detection.detections.items()
    }
    cond_loc = loc("detection", "condition")
    trees = [parse_condition(c, cond_loc) for c in rule.detection.condition]

    predicates: dict[str, Callable[[EventView], bool]] = {}
    guards: dict[str, Guard] = {}
    exposures: dict[str, Exposure] = {}
    never: list[tuple[str, tuple[tuple[str, str, int], ...]]] = []
    used: set[str] = set()
    for exp in spec.exposures:
        sel_exprs = {n: _selection_expr(s, exp, spec) for n, s in selections.items()}
        roots = [resolve(t, sel_exprs, cond_loc, used) for t in trees]
        folded = fold(roots[0] if len(roots) == 1 else AnyOf(tuple(roots)))
        if isinstance(folded, Const) and not folded.value:
            never.append((exp.kind, folded.why))
            continue
        if isinstance(folded, Const):
            warnings.append(diagnostic(
                "W106", f"the condition is true for every {exp.kind} event", cond_loc, rule_id))
        pred = closure(folded)
        if exp.ops is not None:
            pred = _with_ops(pred, exp.ops)
        predicates[exp.kind] = pred
        guards[exp.kind] = guard(folded)
        exposures[exp.kind] = exp
    if not predicates:
        raise _never_error(spec, never, cond_loc)

    for name in selections:
        if name not in used:
            warnings.append(diagnostic("W101", f"selection {name!r} is not used by the condition",
                                       loc("detection", name), rule_id))
    key_fields: list[str] = []
    for sel in selections.values():
        for it in sel.items():
            for f in it.fields():
                classes = [e.classify(f) for e in exposures.values()]
                if "observed" in classes:
                    key_fields.append(f)
                elif "unobserved" in classes and all(c != "constant" for c in classes):
                    why = next(e.unobserved[f] for e in exposures.values() if f in e.unobserved)
                    warnings.append(diagnostic(
                        "W103", f"{f} is not observed for {spec.name} ({why}): treated as "
                        "absent", RuleLocation(source.path, it.line), rule_id))
    level = rule.level.name.lower() if rule.level is not None else "medium"
    tags = tuple(str(t) for t in rule.tags)
    frozen_preds = MappingProxyType(predicates)
    frozen_exps = MappingProxyType(exposures)
    return CompiledRule(
        id=rule_id, name=rule.name, title=rule.title, level=level, tags=tags,
        mitre=mitre_ids(tags), kinds=frozenset(predicates), match=_matcher(frozen_preds),
        source=source, action=action, mode=mode, fields=_fields_of(frozen_exps),
        predicates=frozen_preds, guards=MappingProxyType(guards),
        key_fields=tuple(dict.fromkeys(key_fields)),
        detail=RuleDetail(spec, MappingProxyType(selections),
                          tuple(rule.detection.condition), frozen_exps),
        warnings=tuple(dict.fromkeys(warnings)), description=rule.description or "",
        status=rule.status.name.lower() if rule.status is not None else "",
    )


def _with_ops(pred: Callable[[EventView], bool], ops: frozenset[str]
              ) -> Callable[[EventView], bool]:
    def with_ops(view: EventView) -> bool:
        return getattr(view.ev, "op", None) in ops and pred(view)

    return with_ops


def _matcher(preds: Mapping[str, Callable[[EventView], bool]]) -> Callable[[Event], bool]:
    def match(ev: Event) -> bool:
        pred = preds.get(ev.kind)
        return pred is not None and pred(EventView(ev))

    return match


def _fields_of(exposures: Mapping[str, Exposure]) -> Callable[[Event], dict[str, Any]]:
    def fields(ev: Event) -> dict[str, Any]:
        exp = exposures.get(ev.kind)
        return {} if exp is None else exp.values(ev)

    return fields


def _never_error(spec: LogSourceSpec, never: list[tuple[str, tuple[tuple[str, str, int], ...]]],
                 where: RuleLocation) -> RuleError:
    reasons = [why for _, whys in never for why in whys]
    if not reasons:
        reasons = [("E007", "the condition is false for every event", where.line)]
    text = "; ".join(dict.fromkeys(r for _, r, _ in reasons))
    code, _, line = reasons[0]
    where = RuleLocation(where.path, line or where.line)
    msg = f"the rule ({spec.name}) can never match coi-watch events: {text}"
    if code == "E003":
        return UnknownFieldError(msg, where)
    if code == "E004":
        return UnsupportedLogsourceError(msg, where)
    return NeverMatchesError(msg, where)
