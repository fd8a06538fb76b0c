"""Rule diagnostics: stable codes, one table, and ``coi-watch rules lint``.

Strategy: every problem the loader or the linter can report has a stable code with a short
name and a long description, in the style of Falco's ``falco_load_result`` (errors and
warnings are separate families). The loader (:mod:`coi_watch.rules.load`) produces
:class:`Diagnostic` values while it loads, so ``coi-watch watch`` and ``coi-watch rules
lint`` see exactly the same findings; the linter only adds the checks that cost nothing at
run time but help an author (unused selections, unobserved fields, duplicate ids across
files). A rule with an *error* is never loaded; a rule with *warnings* is.

Output format (one line per finding, sorted by file and line)::

    path/to/rule.yml:12: E003 error field 'Hashes' is not ...

Codes
=====

==== ================= =========================================================================
code name              meaning
==== ================= =========================================================================
E001 syntax            YAML does not parse, a required key is missing or has the wrong type,
                       a ``coi.*`` attribute is invalid, or a condition does not parse
E002 modifier          a ``field|modifier`` that Sigma or coi-watch does not implement
                       (e.g. the timestamp modifiers ``minute`` ... ``year``)
E003 field             a field the rule's log source does not have, or a field coi-watch cannot
                       observe for it when the rule needs that field to match
E004 logsource         a log source with no coi-watch events (syslog, auth, sshd, windows, ...)
E005 value             an invalid value: bad regular expression or one RE2 cannot run in linear
                       time (look-around, back-references), bad CIDR, a placeholder with no
                       value, a wildcard under ``base64``, a list longer than ``MAX_VALUES``
E006 reference         the condition names a selection that does not exist, or ``1 of x*``
                       matches no selection
E007 never-matches     the rule can never match: an empty selection or value list,
                       ``|all`` of different exact values, a condition that is constant false
E008 duplicate-id      a rule id (or name) already used by an earlier rule; the later one is
                       not loaded
E009 correlation       a correlation rule that cannot be compiled, or correlations unavailable
E010 io                a rule file that cannot be read, is not UTF-8, or is larger than
                       ``MAX_FILE_BYTES``
E011 filter            a Sigma filter document that cannot be applied
W101 unused-selection  a selection the condition never uses
W102 unused-filter     a filter that applies to no loaded rule
W103 unobserved-field  a field of the log source that coi-watch cannot observe: treated as
                       absent (null), which the rule can survive
W104 unknown-key       an unknown top-level key: kept as a custom attribute (a key close to a
                       Sigma key, like ``detections``, is an E001 instead)
W105 metadata          no ``id`` or no ``level`` (verdicts then use the title / ``medium``)
W106 always-matches    the condition is true for every event of its kind
==== ================= =========================================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from coi_watch.errors import RuleError, RuleLocation

__all__ = (
    "CODES",
    "Code",
    "Diagnostic",
    "diagnostic",
    "error_diagnostic",
    "format_diagnostics",
    "lint_paths",
)

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Code:
    """One diagnostic code: ``E001`` ... (errors) or ``W101`` ... (warnings)."""

    code: str
    name: str
    description: str

    @property
    def severity(self) -> Severity:
        """``error`` for E codes, ``warning`` for W codes."""
        return "error" if self.code.startswith("E") else "warning"


def _table(rows: Iterable[tuple[str, str, str]]) -> dict[str, Code]:
    return {c: Code(c, n, d) for c, n, d in rows}


CODES: dict[str, Code] = _table([
    ("E001", "syntax", "YAML, schema or condition syntax error"),
    ("E002", "modifier", "unknown or unsupported value modifier"),
    ("E003", "field", "field not provided for the rule's log source"),
    ("E004", "logsource", "log source with no coi-watch events"),
    ("E005", "value", "invalid value (regex, CIDR, placeholder, list size)"),
    ("E006", "reference", "condition names a missing selection"),
    ("E007", "never-matches", "rule can never match"),
    ("E008", "duplicate-id", "rule id or name already used"),
    ("E009", "correlation", "correlation rule cannot be compiled"),
    ("E010", "io", "rule file cannot be read"),
    ("E011", "filter", "filter cannot be applied"),
    ("W101", "unused-selection", "selection never used by the condition"),
    ("W102", "unused-filter", "filter applies to no loaded rule"),
    ("W103", "unobserved-field", "field coi-watch cannot observe, treated as absent"),
    ("W104", "unknown-key", "unknown top-level key kept as a custom attribute"),
    ("W105", "metadata", "rule without id or level"),
    ("W106", "always-matches", "condition true for every event of its kind"),
])
"""Every diagnostic code, by code."""


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding about a rule file: ``file:line: CODE severity message``."""

    code: str
    severity: Severity
    message: str
    source: RuleLocation
    rule: str = ""
    """The rule's id (or title) when the finding is about one rule."""

    def __str__(self) -> str:
        return f"{self.source}: {self.code} {self.severity} {self.message}"


def diagnostic(code: str, message: str, source: RuleLocation, rule: str = "") -> Diagnostic:
    """A :class:`Diagnostic` whose severity comes from the code table."""
    return Diagnostic(code, CODES[code].severity, message, source, rule)


# RuleError subclasses in coi_watch.errors carry E001..E003; ours (rules.compile) carry the
# rest. Anything else that is a RuleError gets E001 (syntax) as the safest reading.
def error_diagnostic(exc: RuleError, fallback: RuleLocation, rule: str = "") -> Diagnostic:
    """The diagnostic for a :class:`RuleError` raised while loading or compiling."""
    code = exc.code if exc.code in CODES else "E001"
    return diagnostic(code, exc.message, exc.source or fallback, rule)


def _sort_key(d: Diagnostic) -> tuple[str, int, int, str]:
    return (d.source.path, d.source.line, d.source.col, d.code)


def format_diagnostics(diags: Iterable[Diagnostic]) -> list[str]:
    """Diagnostics as ``file:line: CODE severity message`` lines, sorted by location."""
    return [str(d) for d in sorted(diags, key=_sort_key)]


def lint_paths(
    paths: Sequence[str | Path], *, include_packs: bool = False
) -> tuple[Diagnostic, ...]:
    """Load ``paths`` as the supervisor would and return every diagnostic, sorted.

    The loader's own findings already include everything listed in the module docstring;
    linting is loading without keeping the result.
    """
    from coi_watch.rules.load import load_rules  # lint is imported by load: import late

    result = load_rules(paths, include_packs=include_packs)
    return tuple(sorted(result.diagnostics, key=_sort_key))
