"""Sigma v2 correlation rules, evaluated over sliding windows in event time.

Strategy: a correlation document (``correlation: {type, rules, group-by, timespan,
condition}``, parsed by pySigma into a ``SigmaCorrelationRule``) is compiled once into an
immutable :class:`CompiledCorrelation`; all mutable window state lives in a separate
:class:`CorrelationState` (``corr.new_state()``), so a rule set can be swapped or replayed
without sharing state, and a replay gives the same verdicts as live: time is only ever the
``now_ns`` passed to :meth:`CorrelationState.feed` (never a clock).

``state.feed(base_rule, ev, now_ns)`` takes one match of a base rule; the state keys a
*group* by ``ev.container`` plus the values of the ``group-by`` fields (read with
``base_rule.fields(ev)``, through ``aliases`` when given), so windows never mix
containers. The engine does not drive states itself: :class:`Correlator` holds one per
correlation of a rule set, routes each match to the correlations that reference the rule,
feeds a firing correlation to the correlations chained on it, and knows which rules
``generate`` silences. The loader compiles correlations in :func:`dependency_order` (a
chained correlation after the ones it names; ``base`` then holds both rules and
correlations already compiled).

Windows slide: at ``now`` a group holds what happened in ``(now - timespan, now]``; an
entry exactly ``timespan`` old has left. ``now_ns`` going backwards (two logs replayed one
after the other) is clamped to the highest time seen, so windows only move forwards.

What is measured per type (the current event included):

``event_count``      events of the referenced rules in the window;
``value_count``      distinct values of ``condition.field`` (events without it are skipped);
``value_sum``        sum of the numeric ``condition.field`` (e.g. ``bytes_out`` of
                     ``net.flow``: cumulative per flow, so sum ``destroy`` events only;
                     non-numeric or missing values are skipped);
``temporal``         distinct referenced rules matched in the window, any order (or an
                     extended condition string, ``a and (b or c)``, over the rules seen);
``temporal_ordered`` length of the longest prefix of ``rules`` matched *in that order*,
                     first to last within the timespan.

A condition is one operator (pySigma 2.0 refuses the spec's two-operator ranges: chain
two correlations instead), evaluated at every event fed to the group. ``gt``, ``gte`` and
``eq`` (and extended conditions) fire when the measure reaches the threshold and then
*reset the group*, so one burst gives one verdict and the next needs a fresh set of events
(counts grow one at a time, so ``eq`` behaves as ``gte`` except for ``value_sum``).
``lt``, ``lte`` and ``neq`` are rarity conditions: they fire at every event whose window
satisfies them ("this happened, and fewer than N times in the last hour") and never reset.

Memory is bounded per correlation: at most ``max_groups`` groups (least recently touched
evicted first and counted in :attr:`CorrelationState.evicted`; groups idle for a whole
timespan are dropped silently), and per group: ``event_count`` keeps at most
``threshold + 1`` timestamps, ``value_count`` at most ``threshold + 1`` most recently seen
values, ``value_sum`` coalesces values into at most about 256 time slots per window (a
value may stay up to ``timespan / 256`` longer than exact, never shorter), ``temporal``
one timestamp per referenced rule. The count caps never change a verdict (every condition
only needs to tell counts apart up to ``threshold + 1``); slot coalescing and group
eviction can, by at most one slot of time and by forgetting the evicted group.

``generate`` (Sigma v2, default false): rules referenced by a correlation do not emit
verdicts of their own, unless some correlation that references them says
``generate: true`` (an explicit request wins over the default). That applies to chained
correlations too. :func:`suppressed_rules` computes the set; the engine drops those rules'
own verdicts but still feeds their matches to the correlations.
"""

from __future__ import annotations

import math
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from sigma.correlations import (
    CorrelationConditionAND,
    CorrelationConditionItem,
    CorrelationConditionNOT,
    CorrelationConditionOR,
    SigmaCorrelationCondition,
    SigmaCorrelationRule,
    SigmaExtendedCorrelationCondition,
    SigmaRuleReference,
)

from coi_watch.errors import RuleError, RuleLocation, RuleSyntaxError
from coi_watch.events import Event
from coi_watch.rules.compile import mitre_ids
from coi_watch.verdicts import Action, Severity, Verdict

__all__ = (
    "MAX_GROUPS",
    "BaseRule",
    "CompiledCorrelation",
    "CorrelationError",
    "CorrelationState",
    "Correlator",
    "Threshold",
    "compile_correlation",
    "dependency_order",
    "severity_of",
    "suppressed_rules",
)

MAX_GROUPS = 10_000
"""Default cap on live groups per correlation."""

_SUM_SLOTS = 256
_TYPES = ("event_count", "value_count", "temporal", "temporal_ordered", "value_sum")
_UPWARD = frozenset({"gt", "gte", "eq"})
_SEVERITY = {  # the same table as rules.engine.SEVERITY (a test keeps them equal)
    "informational": Severity.INFO,
    "low": Severity.WARNING,
    "medium": Severity.WARNING,
    "high": Severity.HIGH,
    "critical": Severity.CRITICAL,
}
_LEVEL_RANK = {name: rank for rank, name in enumerate(_SEVERITY)}
_ACTIONS = tuple(a.value for a in Action)
_MODES = ("enforce", "monitor")
T = TypeVar("T")

FieldsOf = Callable[[Event], Mapping[str, Any]]


class CorrelationError(RuleError):
    """A correlation rule that cannot be compiled (unknown rule, bad condition or timespan)."""

    code = "E009"  # lint table: "correlation"


class BaseRule(Protocol):
    """What a correlation needs of a compiled base rule (``rules.compile.CompiledRule``)."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str | None: ...

    @property
    def level(self) -> str: ...

    @property
    def fields(self) -> FieldsOf: ...


def severity_of(level: str) -> Severity:
    """The verdict severity for a Sigma ``level`` (informational -> info, low and medium ->
    warning, high -> high, critical -> critical; unknown -> warning)."""
    return _SEVERITY.get(level.lower(), Severity.WARNING)


# --------------------------------------------------------------------------- compiled form


@dataclass(frozen=True, slots=True)
class Threshold:
    """A correlation condition: ``measure <op> value``; ``field`` for value_count/sum."""

    op: str
    value: float
    field: str | None = None

    def holds(self, measure: float) -> bool:
        """Whether ``measure`` satisfies the condition."""
        v = self.value
        op = self.op
        if op == "gte":
            return measure >= v
        if op == "gt":
            return measure > v
        if op == "lte":
            return measure <= v
        if op == "lt":
            return measure < v
        if op == "eq":
            return measure == v
        return measure != v

    @property
    def upward(self) -> bool:
        """True for gt/gte/eq: fire once when reached, then reset the group."""
        return self.op in _UPWARD

    @property
    def cap(self) -> int:
        """How many items a count needs to keep to decide this condition (threshold + 1)."""
        return max(1, math.floor(self.value) + 1)

    def as_dict(self) -> dict[str, Any]:
        """The condition as Sigma writes it (for evidence)."""
        value: float = int(self.value) if float(self.value).is_integer() else self.value
        out: dict[str, Any] = {self.op: value}
        if self.field:
            out["field"] = self.field
        return out


Expression = Callable[[frozenset[str]], bool]


@dataclass(frozen=True, slots=True)
class CompiledCorrelation:
    """A correlation rule, compiled; immutable (state lives in :meth:`new_state`).

    ``rule_refs`` are the resolved ids of the referenced rules (base rules or, chained,
    other correlations) in the order the rule lists them; ``aliases`` maps a group-by
    field to ``{rule id: event field}``; ``expression`` is set for a ``temporal`` rule with
    an extended (boolean) condition, ``condition`` otherwise.
    """

    id: str
    name: str | None
    title: str
    level: str
    tags: tuple[str, ...]
    mitre: tuple[str, ...]
    type: str
    rule_refs: tuple[str, ...]
    group_by: tuple[str, ...]
    timespan: str
    timespan_ns: int
    condition: Threshold | None
    source: RuleLocation
    generate: bool = False
    action: str = ""
    mode: str = "enforce"
    expression: Expression | None = None
    aliases: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    max_groups: int = MAX_GROUPS

    def field_for(self, name: str, ref: str) -> str:
        """The event field that group-by/condition field ``name`` means for rule ``ref``."""
        per_rule = self.aliases.get(name)
        if per_rule is None:
            return name
        return per_rule.get(ref, name)

    def new_state(self) -> CorrelationState:
        """Fresh, empty window state for this correlation."""
        return CorrelationState(self)


# --------------------------------------------------------------------------- compile


def compile_correlation(
    rule: SigmaCorrelationRule,
    *,
    source: RuleLocation,
    base: Mapping[str, BaseRule],
    correlations: Mapping[str, CompiledCorrelation] | None = None,
    max_groups: int = MAX_GROUPS,
) -> CompiledCorrelation:
    """Compile one pySigma correlation rule.

    ``base`` maps base rule ids *and* names to compiled rules, and may hold correlations
    compiled earlier under theirs too (chaining); ``correlations`` is a separate place for
    those. Compile a file's correlations in :func:`dependency_order`.

    Raises:
        CorrelationError: unknown referenced rule, missing or invalid timespan, an
            unsupported type or condition (ranges, percentiles, extended conditions on
            anything but ``temporal``), or a value type without ``condition.field``.
        RuleSyntaxError: a bad ``coi.action`` / ``coi.mode``.
        ValueError: ``max_groups`` below 1.
    """
    if max_groups < 1:
        raise ValueError("max_groups must be at least 1")
    known = correlations or {}
    ctype = rule.type.name.lower() if rule.type is not None else ""
    if ctype not in _TYPES:
        raise CorrelationError(f"unsupported correlation type {ctype or '(none)'!r}", source)
    if rule.timespan is None:
        raise CorrelationError("correlation without timespan", source)
    span_ns = int(rule.timespan.seconds) * 1_000_000_000

    refs_raw: list[str]
    cond = rule.condition
    if rule.rules is not None:
        refs_raw = [r.reference for r in rule.rules]
    elif isinstance(cond, SigmaExtendedCorrelationCondition):
        refs_raw = cond.get_referenced_rules()
    else:
        refs_raw = []
    if not refs_raw:
        raise CorrelationError("correlation references no rules", source)

    levels: list[str] = []

    def resolve(ref: str) -> str:
        for key in _ref_keys(ref):
            if key in base:
                levels.append(base[key].level)
                return base[key].id
            if key in known:
                levels.append(known[key].level)
                return known[key].id
        raise CorrelationError(f"correlation references unknown rule {ref!r}", source)

    refs = tuple(resolve(r) for r in refs_raw)
    by_written = dict(zip(refs_raw, refs, strict=True))

    threshold: Threshold | None = None
    expression: Expression | None = None
    if isinstance(cond, SigmaExtendedCorrelationCondition):
        if ctype != "temporal":
            raise CorrelationError("extended conditions are supported for temporal only", source)
        expression = _compile_expression(cond.parsed, lambda r: by_written.get(r) or resolve(r))
    elif isinstance(cond, SigmaCorrelationCondition):
        threshold = _threshold(cond, ctype, source)
    elif ctype in ("temporal", "temporal_ordered"):
        threshold = Threshold("gte", float(len(set(refs))))
    else:
        raise CorrelationError("correlation without condition", source)

    aliases: dict[str, Mapping[str, str]] = {}
    for alias in rule.aliases or ():
        aliases[alias.alias] = MappingProxyType(
            {resolve(ref.reference): str(name) for ref, name in alias.mapping.items()}
        )

    level = rule.level.name.lower() if rule.level is not None else ""
    if not level:
        level = max(levels, key=lambda lv: _LEVEL_RANK.get(lv.lower(), 2), default="medium")
    tags = tuple(f"{t.namespace}.{t.name}" for t in rule.tags)
    action, mode = _coi_attributes(rule.custom_attributes, source)
    ident = str(rule.id) if rule.id is not None else (rule.name or rule.title)
    return CompiledCorrelation(
        id=ident,
        name=rule.name,
        title=rule.title,
        level=level,
        tags=tags,
        mitre=mitre_ids(tags),
        type=ctype,
        rule_refs=refs,
        group_by=tuple(rule.group_by or ()),
        timespan=rule.timespan.spec,
        timespan_ns=span_ns,
        condition=threshold,
        source=source,
        generate=bool(rule.generate),
        action=action,
        mode=mode,
        expression=expression,
        aliases=MappingProxyType(aliases),
        max_groups=max_groups,
    )


def _ref_keys(ref: str) -> tuple[str, ...]:
    """A reference as written, plus its canonical UUID spelling when it is one."""
    try:
        canon = str(uuid.UUID(ref))
    except ValueError:
        return (ref,)
    return (ref, canon) if canon != ref else (ref,)


def _threshold(cond: SigmaCorrelationCondition, ctype: str, source: RuleLocation) -> Threshold:
    if cond.percentile is not None:
        raise CorrelationError("percentile conditions are not supported", source)
    fieldref = cond.fieldref
    if isinstance(fieldref, list):
        if len(fieldref) != 1:
            raise CorrelationError("condition.field must name exactly one field", source)
        fieldref = fieldref[0]
    if ctype in ("value_count", "value_sum") and not fieldref:
        raise CorrelationError(f"{ctype} correlation needs condition.field", source)
    op = cond.op.name.lower()
    return Threshold(op, float(cond.count), str(fieldref) if fieldref else None)


def _compile_expression(
    node: CorrelationConditionItem | SigmaRuleReference, resolve: Callable[[str], str]
) -> Expression:
    """An extended temporal condition as a predicate over the set of rule ids seen."""
    if isinstance(node, SigmaRuleReference):
        rid = resolve(node.reference)
        return lambda seen: rid in seen
    args = [_compile_expression(a, resolve) for a in node.args]
    if isinstance(node, CorrelationConditionNOT):
        inner = args[0]
        return lambda seen: not inner(seen)
    if isinstance(node, CorrelationConditionAND):
        return lambda seen: all(a(seen) for a in args)
    if isinstance(node, CorrelationConditionOR):
        return lambda seen: any(a(seen) for a in args)
    raise CorrelationError(f"unsupported condition node {type(node).__name__}")


def _coi_attributes(custom: Mapping[str, Any], source: RuleLocation) -> tuple[str, str]:
    """``coi: {action, mode}`` or flat ``coi.action``/``coi.mode``, checked like a rule's.

    Raises:
        RuleSyntaxError: not a mapping, an unknown ``coi.*`` key, or a bad value.
    """
    attrs: dict[str, Any] = {}
    nested = custom.get("coi")
    if nested is not None:
        if not isinstance(nested, Mapping):
            raise RuleSyntaxError("'coi' must be a mapping (action, mode)", source)
        attrs.update({f"coi.{k}": v for k, v in nested.items()})
    attrs.update({k: v for k, v in custom.items() if k.startswith("coi.")})
    unknown = sorted(set(attrs) - {"coi.action", "coi.mode"})
    if unknown:
        raise RuleSyntaxError(f"unknown attribute {unknown[0]!r}: coi-watch knows coi.action "
                              "and coi.mode", source)
    action, mode = attrs.get("coi.action", ""), attrs.get("coi.mode", "enforce")
    if action not in ("", *_ACTIONS):
        raise RuleSyntaxError(f"coi.action {action!r} is not one of {', '.join(_ACTIONS)}",
                              source)
    if mode not in _MODES:
        raise RuleSyntaxError(f"coi.mode {mode!r} is not one of {', '.join(_MODES)}", source)
    return str(action), str(mode)


def dependency_order(rules: Sequence[T], rule_of: Callable[[T], SigmaCorrelationRule]) -> list[T]:
    """``rules`` (correlations, or anything ``rule_of`` maps to one) reordered so that a
    correlation comes after the correlations it references by id or name, otherwise in
    the given order. Compile chained correlations in this order (the Sigma spec's own
    example lists the outer correlation first). Members of a reference cycle stay in
    place and fail to compile as unknown references."""
    keys: dict[str, int] = {}
    for i, item in enumerate(rules):
        rule = rule_of(item)
        for key in (str(rule.id) if rule.id is not None else None, rule.name):
            if key:
                keys.setdefault(key, i)
    deps: list[list[int]] = []
    for item in rules:
        rule = rule_of(item)
        refs = [r.reference for r in rule.rules or ()]
        if isinstance(rule.condition, SigmaExtendedCorrelationCondition):
            refs += rule.condition.get_referenced_rules()
        deps.append([keys[k] for ref in refs for k in _ref_keys(ref) if k in keys])
    order: list[int] = []
    state = [0] * len(rules)  # 0 new, 1 visiting, 2 placed

    def place(i: int) -> None:
        if state[i]:
            return
        state[i] = 1
        for j in deps[i]:
            place(j)
        state[i] = 2
        order.append(i)

    for i in range(len(rules)):
        place(i)
    return [rules[i] for i in order]


# --------------------------------------------------------------------------- group state


class _Group:
    """Per-group window state; ``add`` returns the measure, or None to skip the event."""

    __slots__ = ("last_ns",)

    def __init__(self) -> None:
        self.last_ns = 0

    def add(self, ref: str, value: Any, now: int, cut: int) -> float | None:
        raise NotImplementedError

    def evidence(self) -> dict[str, Any]:
        return {}

    def size(self) -> int:
        raise NotImplementedError


class _EventCount(_Group):
    __slots__ = ("times",)

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.times: deque[int] = deque(maxlen=cap)

    def add(self, ref: str, value: Any, now: int, cut: int) -> float | None:
        times = self.times
        while times and times[0] <= cut:
            times.popleft()
        times.append(now)
        return len(times)

    def evidence(self) -> dict[str, Any]:
        return {"count": len(self.times)}

    def size(self) -> int:
        return len(self.times)


class _ValueCount(_Group):
    __slots__ = ("cap", "seen")

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap
        self.seen: OrderedDict[Any, int] = OrderedDict()

    def add(self, ref: str, value: Any, now: int, cut: int) -> float | None:
        seen = self.seen
        while seen and next(iter(seen.values())) <= cut:
            seen.popitem(last=False)
        if value is None:
            return None
        seen[value] = now
        seen.move_to_end(value)
        while len(seen) > self.cap:
            seen.popitem(last=False)
        return len(seen)

    def evidence(self) -> dict[str, Any]:
        return {"distinct": len(self.seen), "values": [_json_safe(v) for v in self.seen]}

    def size(self) -> int:
        return len(self.seen)


class _ValueSum(_Group):
    __slots__ = ("slot_ns", "slots", "total")

    def __init__(self, span_ns: int) -> None:
        super().__init__()
        self.slot_ns = max(1, span_ns // _SUM_SLOTS)
        self.slots: deque[list[float]] = deque()  # [first_ns, last_ns, sum]
        self.total: float = 0

    def add(self, ref: str, value: Any, now: int, cut: int) -> float | None:
        slots = self.slots
        while slots and slots[0][1] <= cut:
            self.total -= slots.popleft()[2]
        if not slots:
            self.total = 0  # no float drift survives an empty window
        number = _number(value)
        if number is None:
            return None
        if slots and now - slots[-1][0] < self.slot_ns:
            slots[-1][1] = now
            slots[-1][2] += number
        else:
            slots.append([now, now, number])
        self.total += number
        return self.total

    def evidence(self) -> dict[str, Any]:
        total = self.total
        return {"sum": int(total) if float(total).is_integer() else total}

    def size(self) -> int:
        return len(self.slots)


class _Temporal(_Group):
    __slots__ = ("seen",)

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, int] = {}

    def add(self, ref: str, value: Any, now: int, cut: int) -> float | None:
        seen = self.seen
        for stale in [r for r, ts in seen.items() if ts <= cut]:
            del seen[stale]
        seen[ref] = now
        return len(seen)

    def evidence(self) -> dict[str, Any]:
        return {"matched": sorted(self.seen), "count": len(self.seen)}

    def size(self) -> int:
        return len(self.seen)


class _TemporalOrdered(_Group):
    """``start[k]``: latest start time of an in-order chain through ``refs[0..k]``."""

    __slots__ = ("positions", "start")

    def __init__(self, refs: tuple[str, ...]) -> None:
        super().__init__()
        positions: dict[str, list[int]] = {}
        for k, ref in enumerate(refs):
            positions.setdefault(ref, []).append(k)
        # Highest position first, so one event never advances the chain two steps.
        self.positions = {r: tuple(reversed(ks)) for r, ks in positions.items()}
        self.start: list[int | None] = [None] * len(refs)

    def add(self, ref: str, value: Any, now: int, cut: int) -> float | None:
        start = self.start
        for k, ts in enumerate(start):
            if ts is not None and ts <= cut:
                start[k] = None
        for k in self.positions.get(ref, ()):
            if k == 0:
                start[0] = now
            else:
                prev = start[k - 1]
                if prev is not None:
                    cur = start[k]
                    start[k] = prev if cur is None else max(cur, prev)
        done = 0
        for k, ts in enumerate(start):
            if ts is not None:
                done = k + 1
        return done

    def evidence(self) -> dict[str, Any]:
        done = [k for k, ts in enumerate(self.start) if ts is not None]
        return {"steps": (done[-1] + 1) if done else 0}

    def size(self) -> int:
        return sum(ts is not None for ts in self.start)


# --------------------------------------------------------------------------- state


class CorrelationState:
    """The mutable windows of one :class:`CompiledCorrelation` (from ``new_state()``)."""

    def __init__(self, corr: CompiledCorrelation) -> None:
        self.corr = corr
        self.evicted = 0
        """Groups dropped because ``max_groups`` was reached (LRU)."""
        self._groups: OrderedDict[tuple[Any, ...], _Group] = OrderedDict()
        self._hwm = 0
        self._refs = frozenset(corr.rule_refs)
        cond = corr.condition
        self._value_field = cond.field if cond is not None else None

    def __len__(self) -> int:
        """Live groups."""
        return len(self._groups)

    def retained(self) -> int:
        """Entries held across all groups (timestamps, values, time slots, steps)."""
        return sum(g.size() for g in self._groups.values())

    def feed(self, base_rule: BaseRule, ev: Event, now_ns: int) -> list[Verdict]:
        """Take a match of ``base_rule`` on ``ev`` at event time ``now_ns``.

        Returns the correlation's verdict when its condition holds (at most one), else
        nothing. Matches of rules this correlation does not reference are ignored.
        """
        return self.feed_ref(base_rule.id, base_rule.fields, ev, now_ns)

    def feed_ref(self, ref: str, fields_of: FieldsOf, ev: Event, now_ns: int) -> list[Verdict]:
        """:meth:`feed` for a reference id (a base rule or, chained, a correlation) whose
        event fields ``fields_of`` reads."""
        corr = self.corr
        if ref not in self._refs:
            return []
        now = self._hwm = max(now_ns, self._hwm)
        cut = now - corr.timespan_ns
        groups = self._groups
        while groups:  # drop groups idle for a whole timespan (oldest touched first)
            oldest = next(iter(groups.values()))
            if oldest.last_ns > cut:
                break
            groups.popitem(last=False)

        values = fields_of(ev) if (corr.group_by or self._value_field) else {}
        group_vals = tuple(_hashable(values.get(corr.field_for(g, ref))) for g in corr.group_by)
        key = (ev.container, *group_vals)
        group = groups.get(key)
        if group is None:
            group = groups[key] = self._new_group()
            if len(groups) > corr.max_groups:
                groups.popitem(last=False)
                self.evicted += 1
        else:
            groups.move_to_end(key)
        group.last_ns = now

        value = None
        if self._value_field is not None:
            value = _hashable(values.get(corr.field_for(self._value_field, ref)))
        measure = group.add(ref, value, now, cut)
        if measure is None:
            return []
        if corr.expression is not None:
            assert isinstance(group, _Temporal)
            fired, upward = corr.expression(frozenset(group.seen)), True
        else:
            assert corr.condition is not None
            fired, upward = corr.condition.holds(measure), corr.condition.upward
        if not fired:
            return []
        verdict = self._verdict(ev, now, ref, group_vals, group)
        if upward:
            del groups[key]
        return [verdict]

    def _new_group(self) -> _Group:
        corr = self.corr
        cap = corr.condition.cap if corr.condition is not None else 1
        if corr.type == "event_count":
            return _EventCount(cap)
        if corr.type == "value_count":
            return _ValueCount(cap)
        if corr.type == "value_sum":
            return _ValueSum(corr.timespan_ns)
        if corr.type == "temporal":
            return _Temporal()
        return _TemporalOrdered(corr.rule_refs)

    def _verdict(
        self, ev: Event, now: int, ref: str, group_vals: tuple[Any, ...], group: _Group
    ) -> Verdict:
        corr = self.corr
        evidence: dict[str, Any] = {
            "rule": corr.id,  # as in a base rule's verdict (rules.engine.verdict_for)
            "file": str(corr.source),
            "level": corr.level,
            "correlation": corr.type,
            "rules": list(corr.rule_refs),
            "trigger_rule": ref,
            "group": {g: _json_safe(v) for g, v in zip(corr.group_by, group_vals, strict=True)},
            "timespan": corr.timespan,
            "window_start_ns": now - corr.timespan_ns,
            "window_end_ns": now,
        }
        if corr.condition is not None:
            evidence["condition"] = corr.condition.as_dict()
        evidence.update(group.evidence())
        dedup = "|".join(str(v) for v in (ev.container, *group_vals))
        return Verdict(
            ts_ns=ev.ts_ns,
            wall_ns=ev.wall_ns,
            container=ev.container,
            detector=f"sigma:{corr.id}",
            title=corr.title,
            severity=severity_of(corr.level),
            evidence=evidence,
            mitre=corr.mitre,
            dedup_key=f"sigma:{corr.id}:{dedup}",
            event_kind=ev.kind,
            pid=int(getattr(ev, "pid", 0)),
            action=corr.action,
            mode=corr.mode,
        )


def _hashable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return str(value)


def _json_safe(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_safe(v) for v in value]
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


# --------------------------------------------------------------------------- rule set


def suppressed_rules(correlations: Iterable[CompiledCorrelation]) -> frozenset[str]:
    """Ids of rules (base rules or correlations) whose own verdicts are not emitted:
    referenced by some correlation, and by none that says ``generate: true``."""
    referenced: set[str] = set()
    generated: set[str] = set()
    for corr in correlations:
        referenced.update(corr.rule_refs)
        if corr.generate:
            generated.update(corr.rule_refs)
    return frozenset(referenced - generated)


class Correlator:
    """All correlations of a rule set: routing, chaining and ``generate``.

    The engine calls :meth:`feed` once per base rule that matched an event, and drops
    the base rule's own verdict when its id is in :attr:`suppressed`. A correlation that
    fires feeds the correlations that reference it (with the fields of the base rule and
    event that made it fire); correlations in :attr:`suppressed` fire silently.
    """

    def __init__(self, correlations: Iterable[CompiledCorrelation]) -> None:
        corrs = tuple(correlations)
        self.states: Mapping[str, CorrelationState] = MappingProxyType(
            {c.id: c.new_state() for c in corrs}
        )
        by_ref: dict[str, list[CorrelationState]] = {}
        for state in self.states.values():
            for ref in dict.fromkeys(state.corr.rule_refs):
                by_ref.setdefault(ref, []).append(state)
        self._by_ref = {ref: tuple(states) for ref, states in by_ref.items()}
        self.suppressed = suppressed_rules(corrs)
        self.referenced: frozenset[str] = frozenset(self._by_ref)
        """Rule ids some correlation needs: the engine must feed their matches."""

    def feed(self, base_rule: BaseRule, ev: Event, now_ns: int) -> list[Verdict]:
        """Feed one base-rule match to every correlation that references it."""
        return self._feed(base_rule.id, base_rule.fields, ev, now_ns)

    def _feed(self, ref: str, fields_of: FieldsOf, ev: Event, now_ns: int) -> list[Verdict]:
        out: list[Verdict] = []
        for state in self._by_ref.get(ref, ()):
            for verdict in state.feed_ref(ref, fields_of, ev, now_ns):
                cid = state.corr.id
                if cid not in self.suppressed:
                    out.append(verdict)
                # References only point at correlations compiled earlier: no cycles.
                out.extend(self._feed(cid, fields_of, ev, now_ns))
        return out

    def evicted(self) -> dict[str, int]:
        """Groups evicted so far, per correlation id (only those with evictions)."""
        return {cid: s.evicted for cid, s in self.states.items() if s.evicted}
