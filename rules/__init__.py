"""Sigma rules for coi-watch: load, compile once, evaluate per event.

The pipeline, one small module per step (Falco's rule loader, in Python):

- :mod:`~coi_watch.rules.load` reads rule files (and the built-in packs in ``packs/``) with
  line numbers, parses them with pySigma and reports every problem as a
  :class:`~coi_watch.rules.lint.Diagnostic` (codes in :mod:`~coi_watch.rules.lint`);
- :mod:`~coi_watch.rules.fields` maps Sigma's Linux taxonomy (``Image``, ``CommandLine``,
  ``DestinationIp``, ``TargetFilename``...) onto coi-watch events;
- :mod:`~coi_watch.rules.modifiers` is the registry of value modifiers and the matchers
  their values compile into (RE2 for every pattern: linear time);
- :mod:`~coi_watch.rules.condition` parses conditions and folds them into closures;
- :mod:`~coi_watch.rules.compile` turns one rule into an immutable
  :class:`~coi_watch.rules.compile.CompiledRule`;
- :mod:`~coi_watch.rules.engine` indexes rules by event kind (with a literal prefilter)
  and is the ``sigma`` detector;
- :mod:`~coi_watch.rules.explain` shows why a rule did or did not match an event.

Correlations, filters, rule tests and hot reload live in ``correlation``, ``tuning``,
``testing`` and ``reload``.
"""

from coi_watch.rules.compile import CompiledRule, compile_rule
from coi_watch.rules.engine import RuleEngine, RuleSet
from coi_watch.rules.explain import explain, format_explanation
from coi_watch.rules.fields import field_value, fields_for_kind, kinds_for_logsource
from coi_watch.rules.lint import CODES, Diagnostic, lint_paths
from coi_watch.rules.load import LoadResult, load_rules

__all__ = (
    "CODES",
    "CompiledRule",
    "Diagnostic",
    "LoadResult",
    "RuleEngine",
    "RuleSet",
    "compile_rule",
    "explain",
    "field_value",
    "fields_for_kind",
    "format_explanation",
    "kinds_for_logsource",
    "lint_paths",
    "load_rules",
)
