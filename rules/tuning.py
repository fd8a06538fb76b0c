"""Tuning without editing rules: Sigma filter documents and placeholder lists.

Strategy: use Sigma's own mechanisms (filter documents, ``|expand`` placeholders) and
pySigma's implementation of them, but *report* everything pySigma silently ignores.

- A **filter** (Sigma v2 ``filter: {rules: [...], <selections>, condition}`` document, with
  a ``logsource``) is an exception applied to the rules it names (by id or ``name``; or
  ``rules: any`` for every rule of its log source). The rewrite is pySigma's
  ``SigmaFilter.apply_on_rule`` (made deterministic): the rule's condition becomes
  ``(<rule condition>) and (<filter condition>)``, so filter conditions are written
  ``not <selection>``. :func:`apply_filters`
  adds what pySigma does not check, as ``W102`` (unused-filter) warnings: a filter naming
  a rule that does not exist, a named rule the filter cannot apply to (its log source is
  not covered, or it is a correlation), and a filter that applies to no rule at all. The
  rules still load, untuned. A filter whose condition is broken is an ``E011`` error and
  is applied to nothing.
- A **placeholder** ``%name%`` in a value with the ``expand`` modifier
  (``CommandLine|expand|contains: '%allowed_hosts%'``) stands for every value of the list
  ``name`` of a placeholder file: a YAML mapping ``name: [value, ...]`` read by
  :func:`load_placeholders` (values may use Sigma wildcards ``*`` and ``?``). The
  compiler expands them (:mod:`coi_watch.rules.modifiers`, from the ``placeholders``
  mapping given to ``load_rules``); a placeholder without values rejects the rule
  (``E005``), as the Sigma spec requires of a tool that cannot resolve one.

How ``rules.load.load_rules(paths, *, placeholders=...)`` uses this module: it parses
every document itself (never through ``SigmaCollection.merge()``/``load_ruleset()``, which
apply filters on their own, unreported), then
``rules, diags = apply_filters(rules, filters)`` before compiling; ``rules`` comes back
without the rules a filter broke (``E011``). The CLI and the config's placeholder file go
through ``load_placeholders(path)`` into ``placeholders``.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaError, SigmaRuleLocation
from sigma.filters import SigmaFilter
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaRule

from coi_watch.errors import ConfigError, RuleLocation
from coi_watch.rules.lint import Diagnostic, diagnostic

__all__ = ("apply_filters", "load_placeholders")

Rules = list[SigmaRule | SigmaCorrelationRule]


# --------------------------------------------------------------------------- filters


def apply_filters(
    rules: Sequence[SigmaRule | SigmaCorrelationRule],
    filters: Iterable[SigmaFilter],
    *,
    source_of: Callable[[SigmaFilter], RuleLocation] | None = None,
) -> tuple[Rules, tuple[Diagnostic, ...]]:
    """Apply every filter to the rules it names (in place) and report what did not apply.

    ``source_of`` gives a filter's location for diagnostics (default: pySigma's
    ``filter.source``). Filters apply in the order given; a rule named twice by one
    filter is filtered once. Returns the rules to compile and the diagnostics: ``W102``
    warnings for filters that name unknown rules or apply to nothing, ``E011`` errors for
    a filter whose condition does not parse or names a selection it lacks (it is applied
    to no rule; the rules load untuned) and for a rule the rewrite failed on (pySigma may
    leave it half-rewritten: it is left out of the returned rules).
    """
    locate = source_of or _location
    index: dict[str, SigmaRule | SigmaCorrelationRule] = {}
    for rule in rules:
        if rule.id is not None:
            index[str(rule.id)] = rule
        if rule.name:
            index[rule.name] = rule
    found: list[Diagnostic] = []
    broken: set[int] = set()
    for number, flt in enumerate(filters):
        where = locate(flt)
        label = _label(flt)

        def warn(message: str, where: RuleLocation = where, label: str = label) -> None:
            found.append(diagnostic("W102", f"filter {label} {message}", where))

        try:  # a broken filter is refused whole, before it touches any rule
            for cond in flt.filter.parsed_condition:
                cond.parsed  # noqa: B018 - pySigma parses (and resolves names) lazily
        except SigmaError as exc:
            found.append(diagnostic("E011", f"filter {label}: {exc}", where))
            continue
        targets: list[SigmaRule | SigmaCorrelationRule] = []
        explicit = not isinstance(flt.filter.rules, str)  # else "any": the whole log source
        if isinstance(flt.filter.rules, str):
            targets = [r for r in rules if isinstance(r, SigmaRule)]
        else:
            for ref in flt.filter.rules:
                target = _lookup(index, ref.reference)
                if target is None:
                    warn(f"names unknown rule {ref.reference!r}")
                elif all(t is not target for t in targets):
                    targets.append(target)
        applied = 0
        for target in targets:
            reason = _not_applicable(flt, target)
            if reason is not None:
                if explicit:
                    warn(f"does not apply to rule {_label(target)}: {reason}")
                continue
            assert isinstance(target, SigmaRule)
            try:
                _apply(flt, target, f"_filter{number}")
            except (SigmaError, TypeError, ValueError) as exc:
                found.append(diagnostic(
                    "E011", f"filter {label} cannot be applied to rule {_label(target)}: {exc}",
                    where, _rule_key(target),
                ))
                broken.add(id(target))
                continue
            applied += 1
        if not applied:
            warn("applies to no rule")
    return [r for r in rules if id(r) not in broken], tuple(found)


_TOKEN = re.compile(r"[a-zA-Z*][a-zA-Z0-9*_-]*")
_KEYWORDS = frozenset({"not", "and", "or", "all", "any", "of", "1"})


def _apply(flt: SigmaFilter, rule: SigmaRule, prefix: str) -> None:
    """pySigma's ``SigmaFilter.apply_on_rule``, made deterministic and policy-safe.

    Like pySigma: each filter selection is copied into the rule as ``<prefix>_<name>``
    and every condition becomes ``(<condition>) and (<filter condition, renamed>)``. Unlike
    it, the prefix is the filter's position (pySigma draws a random one, which would make
    ``rules explain`` output differ run to run), and the copy shares the rule's
    ``SigmaPolicy`` (it may hold a regex engine module, which ``deepcopy`` cannot copy)
    and stops at the filter's own parsed condition instead of copying it too.
    """
    memo: dict[int, Any] = {}
    for det in flt.filter.detections.values():
        if det.parent is not None:
            memo[id(det.parent)] = None
        for item in _items([det]):
            if item.policy is not None:
                memo[id(item.policy)] = item.policy
    copies = {f"{prefix}_{name}": copy.deepcopy(det, memo)
              for name, det in flt.filter.detections.items()}

    def rename(m: re.Match[str]) -> str:
        token = m.group(0)
        if token.lower() in _KEYWORDS:
            return token
        return f"{prefix}_*" if token == "them" else f"{prefix}_{token}"

    condition = _TOKEN.sub(rename, flt.filter.condition[0])
    rule.detection.detections.update(copies)
    rule.detection.condition = [f"({c}) and ({condition})" for c in rule.detection.condition]
    rule.detection.__post_init__()  # re-parse: raises SigmaError on a bad filter condition


def _items(
    detections: Iterable[SigmaDetection | SigmaDetectionItem],
) -> Iterable[SigmaDetectionItem]:
    for det in detections:
        if isinstance(det, SigmaDetectionItem):
            yield det
        else:
            yield from _items(det.detection_items)


def _not_applicable(flt: SigmaFilter, rule: SigmaRule | SigmaCorrelationRule) -> str | None:
    if isinstance(rule, SigmaCorrelationRule):
        return "filters apply to detection rules, not correlations"
    if rule.logsource not in flt.logsource:
        return f"its log source {_logsource(rule)} is not covered by the filter's"
    return None


def _lookup(
    index: Mapping[str, SigmaRule | SigmaCorrelationRule], ref: str
) -> SigmaRule | SigmaCorrelationRule | None:
    if ref in index:
        return index[ref]
    return index.get(ref.strip().lower())  # UUIDs are stored in canonical lower case


def _label(obj: SigmaFilter | SigmaRule | SigmaCorrelationRule) -> str:
    return repr(obj.name or (str(obj.id) if obj.id is not None else obj.title))


def _rule_key(rule: SigmaRule | SigmaCorrelationRule) -> str:
    return str(rule.id) if rule.id is not None else (rule.name or rule.title)


def _logsource(rule: SigmaRule) -> str:
    ls = rule.logsource
    parts = [f"{k}={v}" for k, v in
             (("product", ls.product), ("category", ls.category), ("service", ls.service)) if v]
    return "{" + ", ".join(parts) + "}"


def _location(obj: SigmaFilter | SigmaRule) -> RuleLocation:
    src: SigmaRuleLocation | None = obj.source
    if src is None:
        return RuleLocation("<unknown>")
    return RuleLocation(str(src.path), src.line or 0, src.char or 0)


# --------------------------------------------------------------------------- placeholders


def load_placeholders(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Read a placeholder file: a YAML mapping ``name: [value, ...]``.

    A scalar value is a one-item list; numbers become strings; ``null`` or ``[]`` is an
    empty list.

    Raises:
        ConfigError: the file cannot be read, is not YAML, or is not such a mapping.
    """
    p = Path(path)
    try:
        data: Any = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read placeholder file: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: placeholder file is not YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: placeholder file must be a mapping of name to list")
    out: dict[str, list[str]] = {}
    for name, values in data.items():
        if not isinstance(name, str) or not name or "%" in name:
            raise ConfigError(f"{p}: bad placeholder name {name!r}")
        if values is None:
            values = []
        elif not isinstance(values, list):
            values = [values]
        items: list[str] = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise ConfigError(f"{p}: placeholder {name!r}: values must be strings or numbers")
            items.append(str(v))
        out[name] = items
    return out
