"""Rule regression tests: sample events in, expected rule matches out.

Strategy: in the spirit of SigmaHQ's regression data, a test is a small YAML file
(``*.test.yml``) that names the rules under test, a JSONL file of coi-watch events and,
per event line, exactly which rules (and correlations) must fire on it. Each test loads
its rules into a fresh engine (the real ``load_rules`` + ``RuleSet.from_load`` +
``RuleEngine``), feeds the events in file order at their event time, and compares what
fired with what was expected, line by line, both ways: a missing verdict and an
unexpected one both fail the test, so a test guards against false positives as much as
misses. Nothing here reads a clock: the same file gives the same report every run.

The format is documented in ``docs/rule-tests.md``; in short::

    name: curl piped into a shell       # default: the file name without .test.yml
    rules: [rules/curl.yml, curl_pipe_shell]   # rule files/dirs and/or rule ids/names
    packs: false                        # also load the built-in packs (default: only
                                        #   when no rule file is named)
    placeholders: placeholders.yml      # optional placeholder lists
    events: curl.jsonl                  # one event per line; optional "now_ns" per line
    expect:                             # every line not listed must match nothing
      - {line: 2, rules: [curl_pipe_shell]}

``coi-watch rules test PATH...`` calls :func:`run_tests` and prints
:meth:`TestReport.render`; it exits non-zero unless :attr:`TestReport.ok`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
import yaml

from coi_watch.errors import CoiWatchError
from coi_watch.events import Event, event_from_dict
from coi_watch.verdicts import Verdict

__all__ = (
    "Compiled",
    "Evaluator",
    "TestReport",
    "TestResult",
    "compile_rules",
    "rule_id_of",
    "run_tests",
)

_SUFFIX = ".test.yml"
_KEYS = frozenset({"name", "description", "rules", "packs", "placeholders", "events", "expect"})


class Evaluator(Protocol):
    """What a test drives: ``RuleEngine.feed``."""

    def feed(self, ev: Event, now_ns: int) -> Iterable[Verdict]: ...


@dataclass(frozen=True)
class Compiled:
    """A loaded rule set ready to evaluate: ``names`` maps every rule and correlation id
    *and* name to its id; ``errors`` are the load's error diagnostics, rendered."""

    engine: Evaluator
    names: Mapping[str, str]
    errors: tuple[str, ...] = ()


Compiler = Callable[[Sequence[Path], bool, Mapping[str, Sequence[str]] | None], Compiled]


def compile_rules(
    paths: Sequence[Path], include_packs: bool, placeholders: Mapping[str, Sequence[str]] | None
) -> Compiled:
    """Load rules with the real loader and build a fresh engine over them."""
    from coi_watch.rules.engine import RuleEngine, RuleSet
    from coi_watch.rules.load import load_rules

    result = load_rules(
        [str(p) for p in paths], include_packs=include_packs, placeholders=placeholders
    )
    names: dict[str, str] = {}
    for rule in (*result.rules, *result.correlations):
        names[rule.id] = rule.id
        if rule.name:
            names.setdefault(rule.name, rule.id)
    errors = tuple(
        f"{d.source}: {d.code} {d.message}" for d in result.diagnostics if d.severity == "error"
    )
    return Compiled(RuleEngine(ruleset=RuleSet.from_load(result)), names, errors)


def rule_id_of(verdict: Verdict) -> str:
    """The rule (or correlation) id a Sigma verdict came from (``detector`` is
    ``sigma:<id>``); other detectors' verdicts are named by their detector."""
    det = verdict.detector
    if det.startswith("sigma:"):
        return det[len("sigma:"):]
    rid = verdict.evidence.get("rule") or verdict.evidence.get("rule_id")
    return str(rid) if rid else det


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class TestResult:
    """One test: ``status`` is ``pass``, ``fail`` (``diff`` says how) or ``error`` (the
    test could not run: ``error`` says why)."""

    __test__ = False  # not a pytest class

    name: str
    path: str
    status: str
    events: int = 0
    verdicts: int = 0
    diff: tuple[str, ...] = ()
    error: str = ""

    @property
    def passed(self) -> bool:
        """True when the test ran and everything matched."""
        return self.status == "pass"


@dataclass(frozen=True)
class TestReport:
    """All tests found under the given paths, in path order."""

    __test__ = False

    results: tuple[TestResult, ...]
    searched: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when at least one test ran and all passed (finding none is a failure)."""
        return bool(self.results) and all(r.passed for r in self.results)

    def render(self) -> str:
        """Human-readable report, one block per test, a summary line last."""
        lines: list[str] = []
        for r in self.results:
            if r.status == "pass":
                lines.append(f"PASS  {r.name}  ({r.events} events, {r.verdicts} verdicts)"
                             f"  {r.path}")
            elif r.status == "fail":
                lines.append(f"FAIL  {r.name}  {r.path}")
                lines.append("      - expected, not produced   + produced, not expected")
                lines.extend(f"      {d}" for d in r.diff)
            else:
                lines.append(f"ERROR {r.name}  {r.path}")
                lines.extend(f"      {e}" for e in r.error.splitlines())
        if not self.results:
            lines.append("no rule tests (*.test.yml) found in: " + ", ".join(self.searched))
        count = Counter(r.status for r in self.results)
        lines.append(f"{count['pass']} passed, {count['fail']} failed, {count['error']} errors")
        return "\n".join(lines)


# --------------------------------------------------------------------------- running


class _TestError(Exception):
    """The test file itself is wrong; becomes an ``error`` result."""


def run_tests(
    paths: Sequence[str | os.PathLike[str]], *, compiler: Compiler | None = None
) -> TestReport:
    """Run every test file in ``paths`` (files, or directories searched recursively for
    ``*.test.yml``) and report. ``compiler`` replaces :func:`compile_rules` (tests)."""
    build = compiler or compile_rules
    results: list[TestResult] = []
    for path in _discover(paths):
        results.append(_run_one(path, build))
    return TestReport(tuple(results), tuple(str(p) for p in paths))


def _discover(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found.extend(sorted(p.rglob("*" + _SUFFIX)))
        else:
            found.append(p)  # a missing file becomes an error result, not silence
    return list(dict.fromkeys(found))


def _run_one(path: Path, build: Compiler) -> TestResult:
    name = path.name.removesuffix(_SUFFIX)
    try:
        spec = _read_spec(path)
        name = str(spec.get("name") or name)
        return _execute(path, name, spec, build)
    except _TestError as exc:
        return TestResult(name, str(path), "error", error=str(exc))
    except CoiWatchError as exc:
        return TestResult(name, str(path), "error", error=str(exc))


def _read_spec(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _TestError(f"cannot read test file: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise _TestError(f"test file is not YAML: {exc}") from None
    if not isinstance(data, dict):
        raise _TestError("test file must be a YAML mapping")
    unknown = sorted(set(map(str, data)) - _KEYS)
    if unknown:
        raise _TestError(f"unknown keys {unknown} (allowed: {sorted(_KEYS)})")
    for key in ("events", "expect"):
        if key not in data:
            raise _TestError(f"missing required key {key!r}")
    return data


def _execute(path: Path, name: str, spec: Mapping[str, Any], build: Compiler) -> TestResult:
    base = path.parent
    rule_paths, selectors = _split_rules(base, spec.get("rules") or [])
    packs = spec.get("packs")
    include_packs = (not rule_paths) if packs is None else bool(packs)
    placeholders = None
    if spec.get("placeholders"):
        from coi_watch.rules.tuning import load_placeholders

        placeholders = load_placeholders(base / str(spec["placeholders"]))
    compiled = build(rule_paths, include_packs, placeholders)
    if compiled.errors:
        raise _TestError("rules do not load:\n" + "\n".join(compiled.errors))

    def resolve(ref: Any, what: str) -> str:
        rid = compiled.names.get(str(ref))
        if rid is None:
            raise _TestError(f"{what} names unknown rule {ref!r}")
        return rid

    only = frozenset(resolve(s, "rules") for s in selectors) if selectors else None
    expected = {line: Counter(resolve(r, f"expect (line {line})") for r in rules)
                for line, rules in _expectations(spec["expect"]).items()}
    events = _read_events(base / str(spec["events"]))
    unknown_lines = sorted(set(expected) - {n for n, _, _ in events})
    if unknown_lines:
        raise _TestError(f"expect names lines without an event: {unknown_lines}")

    diff: list[str] = []
    total = 0
    label = {rid: ref for ref, rid in compiled.names.items() if ref != rid}
    for line, now_ns, ev in events:
        got = Counter(rule_id_of(v) for v in compiled.engine.feed(ev, now_ns))
        if only is not None:
            got = Counter({k: n for k, n in got.items() if k in only})
        total += sum(got.values())
        want = expected.get(line, Counter())
        for rid in sorted((want - got).elements()):
            diff.append(f"- line {line}: {_show(rid, label)}")
        for rid in sorted((got - want).elements()):
            diff.append(f"+ line {line}: {_show(rid, label)}")
    status = "fail" if diff else "pass"
    return TestResult(name, str(path), status, len(events), total, tuple(diff))


def _show(rid: str, label: Mapping[str, str]) -> str:
    name = label.get(rid)
    return f"{name} ({rid})" if name else rid


def _split_rules(base: Path, entries: Any) -> tuple[list[Path], list[str]]:
    """Rule entries that are paths (exist, or look like one) vs. rule ids/names."""
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, list):
        raise _TestError("'rules' must be a list of rule files/dirs or rule ids/names")
    paths: list[Path] = []
    selectors: list[str] = []
    for entry in map(str, entries):
        candidate = base / entry
        if candidate.exists():
            paths.append(candidate)
        elif "/" in entry or entry.endswith((".yml", ".yaml")):
            raise _TestError(f"rule path {entry!r} not found (relative to {base})")
        else:
            selectors.append(entry)
    return paths, selectors


def _expectations(raw: Any) -> dict[int, list[Any]]:
    """``expect`` as ``{line: [rule, ...]}``, from a list of ``{line, rules}`` or a map."""
    out: dict[int, list[Any]] = {}
    if raw is None:
        return out
    if isinstance(raw, dict):
        items = [{"line": k, "rules": v} for k, v in raw.items()]
    elif isinstance(raw, list):
        items = raw
    else:
        raise _TestError("'expect' must be a list of {line, rules} or a map line -> rules")
    for item in items:
        if not isinstance(item, dict) or set(item) - {"line", "rules"} or "line" not in item:
            raise _TestError(f"bad expect entry {item!r}: needs 'line' and 'rules'")
        try:
            line = int(item["line"])
        except (TypeError, ValueError):
            raise _TestError(f"bad expect line {item['line']!r}") from None
        rules = item.get("rules") or []
        out.setdefault(line, []).extend([rules] if isinstance(rules, str) else rules)
    return out


def _read_events(path: Path) -> list[tuple[int, int, Event]]:
    """``(line number, now_ns, event)`` per non-blank line of a JSONL file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _TestError(f"cannot read events {path}: {exc.strerror or exc}") from None
    out: list[tuple[int, int, Event]] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _TestError(f"{path}:{n}: not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise _TestError(f"{path}:{n}: not a JSON object")
        now = obj.pop("now_ns", None)
        try:
            ev = event_from_dict(obj)
        except CoiWatchError as exc:
            raise _TestError(f"{path}:{n}: {exc}") from None
        if now is None:
            now = ev.ts_ns
        if type(now) is not int:
            raise _TestError(f"{path}:{n}: now_ns must be an integer")
        out.append((n, now, ev))
    return out
