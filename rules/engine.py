"""The Sigma rule engine: a detector that evaluates compiled rules on every event.

Strategy: a :class:`RuleSet` is built once from a :class:`~coi_watch.rules.load.LoadResult`
and never changes. It indexes rules by event kind (Falco's ``m_filter_by_event_type``), and
within a kind splits them into rules that must always be evaluated and rules with a
prefilter guard: one RE2 set per field holds every guard literal of that field, so one scan
of an event's lower-cased ``CommandLine`` tells which of a hundred rules can possibly match,
and only those are evaluated. One :class:`~coi_watch.rules.fields.EventView` per event is
shared by all rules, so no field is computed twice.

:class:`RuleEngine` is the :class:`~coi_watch.protocols.Detector` (``name = "sigma"``): its
only mutable state is the correlation windows. :meth:`RuleEngine.swap` replaces the rule
set (and starts fresh correlation state) in one assignment, between two events; a hot
reload builds the new set off to the side and swaps only if it loaded.

A rule's verdict: ``detector`` ``sigma:<rule id>``, its title, severity from its level
(informational -> info, low and medium -> warning, high -> high, critical -> critical),
``coi.action``/``coi.mode`` from the rule, MITRE ids from its ``attack.tNNNN`` tags,
evidence ``{rule, file, level, fields}`` (the rule's fields as seen on the event) and a
dedup key of rule id, container and the values of those fields (process ids left out, so
the same command twice is the same threat).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import re2

from coi_watch.errors import RuleError
from coi_watch.events import EVENT_TYPES, Event
from coi_watch.rules.compile import CompiledRule
from coi_watch.rules.fields import EventView
from coi_watch.rules.lint import Diagnostic
from coi_watch.rules.load import LoadResult, load_rules
from coi_watch.verdicts import Severity, Verdict

__all__ = ("SEVERITY", "KindIndex", "RuleEngine", "RuleSet", "verdict_for")

SEVERITY: Mapping[str, Severity] = MappingProxyType({
    "informational": Severity.INFO,
    "low": Severity.WARNING,
    "medium": Severity.WARNING,
    "high": Severity.HIGH,
    "critical": Severity.CRITICAL,
})
"""Sigma level -> verdict severity."""

_VOLATILE = frozenset({"ProcessId", "ParentProcessId", "SourcePort"})
_SET_MEMORY = 64 << 20  # RE2::Set has no NFA fallback: give its DFA room


@dataclass(frozen=True, slots=True)
class KindIndex:
    """The rules of one event kind, in load order, with their prefilter."""

    entries: tuple[tuple[CompiledRule, Callable[[EventView], bool], tuple[str, ...]], ...]
    """``(rule, predicate, evidence fields)``."""
    always: frozenset[int]
    """Entries without a guard: evaluated for every event."""
    scans: tuple[tuple[str, Callable[[str], tuple[int, ...]]], ...]
    """``(field, candidates)``: the entries whose literals occur in the field's value."""


def _build_index(kind: str, rules: Sequence[CompiledRule], prefilter: bool) -> KindIndex:
    entries: list[tuple[CompiledRule, Callable[[EventView], bool], tuple[str, ...]]] = []
    always: set[int] = set()
    by_field: dict[str, dict[str, list[int]]] = {}
    for rule in rules:
        pred = rule.predicates.get(kind)
        if pred is None:
            continue
        i = len(entries)
        exp = rule.detail.exposures.get(kind) if rule.detail else None
        ev_fields = tuple(f for f in rule.key_fields
                          if exp is None or exp.classify(f) in ("observed", "constant"))
        entries.append((rule, pred, ev_fields))
        g = rule.guards.get(kind)
        if not prefilter or g is None:
            always.add(i)
            continue
        for fname, lit in g:
            by_field.setdefault(fname, {}).setdefault(lit, []).append(i)
    scans = []
    for fname, lits in sorted(by_field.items()):
        options = re2.Options()
        options.max_mem = _SET_MEMORY
        options.log_errors = False
        rset = re2.Set.SearchSet(options)
        table = []
        for lit, idxs in lits.items():
            rset.Add(re2.escape(lit))
            table.append(tuple(dict.fromkeys(idxs)))
        rset.Compile()
        scans.append((fname, _candidates(rset, tuple(table))))
    return KindIndex(tuple(entries), frozenset(always), tuple(scans))


# Field values repeat all day in an agent session (the same commands, paths and names), and
# a set match costs a few microseconds of wrapper overhead, so results are remembered per
# value: a bounded LRU, and only for short values, so hostile command lines (up to 256 KiB)
# can neither fill memory nor evict much.
_CACHE_ENTRIES = 4096
_CACHEABLE_CHARS = 512


def _candidates(rset: Any, table: tuple[tuple[int, ...], ...]
                ) -> Callable[[str], tuple[int, ...]]:
    def compute(value: str) -> tuple[int, ...]:
        hits = rset.Match(value)
        if not hits:
            return ()
        if len(hits) == 1:
            return table[hits[0]]
        return tuple({i for h in hits for i in table[h]})

    cached = lru_cache(maxsize=_CACHE_ENTRIES)(compute)

    def candidates(value: str) -> tuple[int, ...]:
        return cached(value) if len(value) <= _CACHEABLE_CHARS else compute(value)

    return candidates


@dataclass(frozen=True)
class RuleSet:
    """An immutable, indexed set of compiled rules and correlations."""

    rules: tuple[CompiledRule, ...] = ()
    correlations: tuple[Any, ...] = ()
    diagnostics: tuple[Diagnostic, ...] = ()
    files: tuple[str, ...] = ()
    prefilter: bool = True
    by_kind: Mapping[str, KindIndex] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kinds = sorted({k for r in self.rules for k in r.kinds})
        index = {k: _build_index(k, self.rules, self.prefilter) for k in kinds}
        object.__setattr__(self, "by_kind", MappingProxyType(index))

    @classmethod
    def from_load(cls, result: LoadResult, *, prefilter: bool = True) -> RuleSet:
        """Index what :func:`~coi_watch.rules.load.load_rules` loaded."""
        return cls(result.rules, result.correlations, result.diagnostics, result.files,
                   prefilter)

    @classmethod
    def load(cls, paths: Sequence[str | Path] = (), *, include_packs: bool = True,
             placeholders: Mapping[str, Sequence[str]] | None = None,
             prefilter: bool = True) -> RuleSet:
        """Load ``paths`` (and the packs) and index them."""
        return cls.from_load(load_rules(paths, include_packs=include_packs,
                                          placeholders=placeholders), prefilter=prefilter)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        """Diagnostics of severity ``error`` (rules that did not load)."""
        return tuple(d for d in self.diagnostics if d.severity == "error")

    def matches(self, ev: Event, view: EventView | None = None
                ) -> list[tuple[CompiledRule, tuple[str, ...]]]:
        """The rules that match ``ev``, in load order, with their evidence fields."""
        idx = self.by_kind.get(ev.kind)
        if idx is None:
            return []
        view = view or EventView(ev)
        entries = idx.entries
        if idx.scans:
            cand = set(idx.always)
            for fname, candidates in idx.scans:
                v = view.lower(fname)
                if v:
                    cand.update(candidates(v))
            order: Any = sorted(cand)
        else:
            order = range(len(entries))
        out = []
        for i in order:
            rule, pred, ev_fields = entries[i]
            if pred(view):
                out.append((rule, ev_fields))
        return out


def _digest(values: Sequence[Any]) -> str:
    h = hashlib.blake2b("\x1f".join(map(str, values)).encode("utf-8", "replace"), digest_size=8)
    return h.hexdigest()


def verdict_for(rule: CompiledRule, ev: Event, view: EventView,
                ev_fields: Sequence[str]) -> Verdict:
    """The verdict of ``rule`` matching ``ev``."""
    values = {f: v for f in ev_fields if (v := view.raw(f)) is not None}
    key_values = [values.get(f) for f in ev_fields if f not in _VOLATILE]
    return Verdict(
        ts_ns=ev.ts_ns, wall_ns=ev.wall_ns, container=ev.container,
        detector=f"sigma:{rule.id}", title=rule.title,
        severity=SEVERITY.get(rule.level, Severity.WARNING),
        evidence={"rule": rule.id, "file": str(rule.source), "level": rule.level,
                  "fields": values},
        mitre=rule.mitre,
        dedup_key=f"sigma:{rule.id}:{ev.container}:{_digest(key_values)}",
        event_kind=ev.kind, pid=int(getattr(ev, "pid", 0) or 0),
        action=rule.action, mode=rule.mode,
    )


class RuleEngine:
    """Sigma rules as a detector (``name = "sigma"``).

    ``config`` keys: ``rules`` (files or folders), ``packs`` (load the built-in packs,
    default true), ``placeholders`` (``{name: [values]}`` for ``|expand``, or the path of
    a YAML file of them), ``strict``
    (default true: any rule that does not load is a :class:`RuleError` at construction;
    false: load the rest, the diagnostics stay in ``ruleset.diagnostics``).
    """

    name: ClassVar[str] = "sigma"
    consumes: ClassVar[frozenset[str]] = frozenset(EVENT_TYPES)

    def __init__(self, config: Mapping[str, Any] | None = None, *,
                 ruleset: RuleSet | None = None) -> None:
        cfg = dict(config or {})
        if ruleset is None:
            placeholders = cfg.get("placeholders") or None
            if isinstance(placeholders, str | Path):
                from coi_watch.rules.tuning import load_placeholders

                placeholders = load_placeholders(placeholders)
            ruleset = RuleSet.load(
                [str(p) for p in cfg.get("rules") or ()],
                include_packs=bool(cfg.get("packs", True)), placeholders=placeholders)
            errors = ruleset.errors
            if errors and cfg.get("strict", True):
                shown = "; ".join(str(d) for d in errors[:5])
                more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
                raise RuleError(f"{len(errors)} rule(s) did not load: {shown}{more}")
        self._state: tuple[RuleSet, Any] = (ruleset, self._correlator(ruleset))

    @staticmethod
    def _correlator(ruleset: RuleSet) -> Any:
        if not ruleset.correlations:
            return None
        from coi_watch.rules.correlation import Correlator

        return Correlator(ruleset.correlations)

    @property
    def ruleset(self) -> RuleSet:
        """The rule set in use."""
        return self._state[0]

    def swap(self, ruleset: RuleSet) -> None:
        """Use ``ruleset`` from the next event on (fresh correlation state)."""
        self._state = (ruleset, self._correlator(ruleset))

    def feed(self, ev: Event, now_ns: int) -> list[Verdict]:
        """Evaluate every applicable rule on ``ev``; feed matches to correlations."""
        ruleset, correlator = self._state
        if ev.kind not in ruleset.by_kind:
            return []
        view = EventView(ev)
        matched = ruleset.matches(ev, view)
        if not matched:
            return []
        out: list[Verdict] = []
        for rule, ev_fields in matched:
            if correlator is not None:
                if rule.id not in correlator.suppressed:
                    out.append(verdict_for(rule, ev, view, ev_fields))
                if rule.id in correlator.referenced:
                    out.extend(correlator.feed(rule, ev, now_ns))
            else:
                out.append(verdict_for(rule, ev, view, ev_fields))
        return out
