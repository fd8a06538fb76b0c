"""Load Sigma rule files: YAML with line numbers, pySigma parsing, compilation, diagnostics.

Strategy: the loader never raises on a bad rule and never skips one silently. Every file
(folders are walked for ``*.yml``/``*.yaml``, sorted; the built-in packs ship as package data
and are read with :mod:`importlib.resources`) goes through:

1. read (E010: unreadable, not UTF-8, larger than :data:`MAX_FILE_BYTES`);
2. compose the YAML documents *as nodes* (E001 with the parser's own line and column), so
   every key of every document has a line: ``lines[("detection", "sel", 0)]`` is the line
   of the first key of selection ``sel``; duplicate keys are E001 at the second one;
3. per document: Sigma collection actions (``global``/``repeat``/``reset``), unknown keys
   that look like misspelt Sigma keys (E001), value lists over
   :data:`~coi_watch.rules.modifiers.MAX_VALUES` (E005, before pySigma spends time on them);
   then pySigma's ``SigmaRule`` / ``SigmaCorrelationRule`` / ``SigmaFilter`` ``from_dict``;
   a pySigma error is located at the key that caused it by re-parsing the detection items
   one by one;
4. filters applied to the rules (``coi_watch.rules.tuning``), base rules compiled
   (:func:`~coi_watch.rules.compile.compile_rule`), duplicate ids refused (E008), then
   correlations compiled against the base rules (``coi_watch.rules.correlation``).

The result is a :class:`LoadResult`: what loaded, and a :class:`Diagnostic` for everything
else (and for every warning), each with file and line. Codes are listed in
:mod:`coi_watch.rules.lint`.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from sigma.collection import deep_dict_update
from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaError, SigmaRuleLocation
from sigma.filters import SigmaFilter
from sigma.policy import SigmaPolicy
from sigma.policy.regex_engine import RE2RegexEngine, RegexPattern
from sigma.rule import SigmaDetectionItem, SigmaRule
from sigma.rule.base import SigmaYAMLLoader, check_alias_expansion

from coi_watch.errors import RuleError, RuleLocation, RuleSyntaxError
from coi_watch.rules.compile import SIGMA_KEYS, CompiledRule, compile_rule
from coi_watch.rules.lint import Diagnostic, diagnostic, error_diagnostic
from coi_watch.rules.modifiers import MAX_VALUES, InvalidValueError

__all__ = (
    "MAX_FILE_BYTES",
    "Diagnostic",
    "LoadResult",
    "ParsedDocument",
    "load_rules",
    "load_text",
    "pack_files",
    "parse_file",
    "rule_files",
)

MAX_FILE_BYTES = 4 * 1024 * 1024
"""Largest rule file read (a bigger one is E010)."""

_ALIASES = {"utf16le": "wide"}  # modifier ids the spec has and pySigma 2.0 lacks

Lines = dict[tuple[Any, ...], int]


class _QuietRE2(RE2RegexEngine):
    """pySigma's RE2 engine without RE2's own stderr logging, with readable errors."""

    def compile(self, pattern: str, flags: int = 0) -> RegexPattern:
        import re2

        prefix = "".join(c for f, c in ((2, "i"), (8, "m"), (16, "s")) if flags & f)
        options = re2.Options()
        options.log_errors = False
        try:
            rx: RegexPattern = re2.compile(f"(?{prefix})" + pattern if prefix else pattern,
                                           options)
        except re2.error as exc:
            arg = exc.args[0] if exc.args else exc
            text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
            raise re2.error(text + " (RE2 runs in linear time: no look-around or "
                            "back-references)") from None
        return rx


_POLICY = SigmaPolicy(regex_engine=_QuietRE2())


@dataclass(frozen=True)
class LoadResult:
    """Compiled rules and correlations, every diagnostic, and the files read."""

    rules: tuple[CompiledRule, ...]
    correlations: tuple[Any, ...]
    diagnostics: tuple[Diagnostic, ...]
    files: tuple[str, ...]

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        """The diagnostics of severity ``error``."""
        return tuple(d for d in self.diagnostics if d.severity == "error")


@dataclass(frozen=True)
class ParsedDocument:
    """One YAML document parsed by pySigma, with its location and key lines."""

    obj: SigmaRule | SigmaCorrelationRule | SigmaFilter
    source: RuleLocation
    lines: Mapping[tuple[Any, ...], int]


# --------------------------------------------------------------------------- files


def pack_files() -> list[tuple[str, str]]:
    """The built-in packs: ``(path, text)`` pairs, sorted by name."""
    root = resources.files("coi_watch.rules").joinpath("packs")
    out = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith((".yml", ".yaml")) and entry.is_file():
            out.append((str(entry), entry.read_text(encoding="utf-8")))
    return out


def rule_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files named, and ``*.yml``/``*.yaml`` under folders named (sorted, recursive)."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file()
                              and f.suffix in (".yml", ".yaml"))
        else:
            yield p


def _read(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise RuleError(f"rule file is {size} bytes, more than {MAX_FILE_BYTES}")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RuleError(f"rule file is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise RuleError(f"cannot read rule file: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- YAML


def _walk(node: yaml.Node, path: tuple[Any, ...], out: Lines, where: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for i, (k, v) in enumerate(node.value):
            line = k.start_mark.line + 1
            key = k.value if isinstance(k, yaml.ScalarNode) else i
            if key in seen:
                raise RuleError(f"duplicate key {key!r} (first at line {seen[key]})",
                                RuleLocation(where, line, k.start_mark.column + 1))
            seen[key] = line
            out[(*path, key)] = line
            out[(*path, i)] = line
            _walk(v, (*path, key), out, where)
    elif isinstance(node, yaml.SequenceNode):
        for j, item in enumerate(node.value):
            if isinstance(item, yaml.ScalarNode) and j:
                continue  # a value list: its first line is all a diagnostic needs
            out[(*path, j)] = item.start_mark.line + 1
            _walk(item, (*path, j), out, where)


def _documents(text: str, where: str) -> list[tuple[Any, int, Lines]]:
    """``(data, first line, lines)`` per YAML document.

    Raises:
        RuleError: the YAML does not parse (with the parser's line and column).
    """
    loader = SigmaYAMLLoader(text)
    docs: list[tuple[Any, int, Lines]] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            lines: Lines = {}
            _walk(node, (), lines, where)
            docs.append((loader.construct_document(node), node.start_mark.line + 1, lines))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = RuleLocation(where, mark.line + 1, mark.column + 1) if mark else RuleLocation(where)
        what = " ".join(x for x in (exc.context, exc.problem) if x)
        raise RuleError(f"YAML does not parse: {what}", loc) from None
    except yaml.YAMLError as exc:
        raise RuleError(f"YAML does not parse: {exc}", RuleLocation(where)) from None
    finally:
        loader.dispose()
    return docs


# --------------------------------------------------------------------------- documents

_SIGMA_ERROR_KEYS = {
    "SigmaTitleError": "title", "SigmaIdentifierError": "id", "SigmaLevelError": "level",
    "SigmaStatusError": "status", "SigmaDateError": "date", "SigmaModifiedError": "modified",
    "SigmaTagError": "tags", "SigmaLogsourceError": "logsource", "SigmaRelatedError": "related",
    "SigmaConditionError": "detection", "SigmaNameError": "name",
}
_SIGMA_ERROR_CODES = {
    "SigmaModifierError": "E002", "SigmaRegularExpressionError": "E005",
    "SigmaTypeError": "E005", "SigmaValueError": "E005", "SigmaCIDRError": "E005",
}


def _locate(exc: Exception, doc: Mapping[str, Any], lines: Lines, start: int) -> int:
    """The line of the key that makes pySigma fail: re-parse the detection items one by
    one; fall back on the key named by the error class, then the document start."""
    detection = doc.get("detection")
    if isinstance(detection, Mapping):
        for name, definition in detection.items():
            if name == "condition":
                continue
            maps = definition if isinstance(definition, list) else [definition]
            for j, m in enumerate(maps):
                if not isinstance(m, Mapping):
                    continue
                for i, (key, val) in enumerate(m.items()):
                    try:
                        SigmaDetectionItem.from_mapping(key, val, policy=_POLICY)
                    except Exception:
                        path = ("detection", name, i) if m is definition else (
                            "detection", name, j, i)
                        return lines.get(path, start)
    key = _SIGMA_ERROR_KEYS.get(type(exc).__name__)
    if key == "detection" and ("detection", "condition") in lines:
        return lines[("detection", "condition")]
    return lines.get((key,), start) if key else start


def _precheck(doc: Mapping[str, Any], lines: Lines, where: str, start: int) -> None:
    """Checks cheaper than pySigma and with better locations.

    Raises:
        RuleError: a misspelt key (E001) or an oversized value list (E005).
    """
    for key in doc:
        if isinstance(key, str) and key not in SIGMA_KEYS and key != "coi" \
                and not key.startswith("coi."):
            close = difflib.get_close_matches(key, sorted(SIGMA_KEYS), n=1, cutoff=0.8)
            if close:
                raise RuleSyntaxError(f"unknown key {key!r} (did you mean {close[0]!r}?)",
                                      RuleLocation(where, lines.get((key,), start)))
    detection = doc.get("detection")
    if not isinstance(detection, Mapping):
        return
    for name, definition in detection.items():
        for j, m in enumerate(definition if isinstance(definition, list) else [definition]):
            if isinstance(m, Mapping):
                for i, val in enumerate(m.values()):
                    if isinstance(val, list) and len(val) > MAX_VALUES:
                        path = (("detection", name, i) if m is definition
                                else ("detection", name, j, i))
                        raise InvalidValueError(
                            f"{len(val)} values in one item exceed the limit of {MAX_VALUES}",
                            RuleLocation(where, lines.get(path, start)))
            elif isinstance(definition, list) and len(definition) > MAX_VALUES:
                raise InvalidValueError(
                    f"{len(definition)} keywords exceed the limit of {MAX_VALUES}",
                    RuleLocation(where, lines.get(("detection", name), start)))


def _alias_modifiers(doc: dict[str, Any]) -> dict[str, Any]:
    detection = doc.get("detection")
    if not isinstance(detection, dict):
        return doc

    def fix(m: Any) -> Any:
        if not isinstance(m, dict):
            return m
        return {("|".join(_ALIASES.get(p, p) for p in k.split("|"))
                 if isinstance(k, str) else k): v for k, v in m.items()}

    doc = dict(doc)
    doc["detection"] = {name: ([fix(x) for x in d] if isinstance(d, list) else fix(d))
                        for name, d in detection.items()}
    return doc


def parse_file(where: str, text: str) -> tuple[list[ParsedDocument], list[Diagnostic]]:
    """Parse one rule file into pySigma objects, with a diagnostic for each bad document."""
    diags: list[Diagnostic] = []
    try:
        docs = _documents(text, where)
    except RuleError as exc:
        return [], [error_diagnostic(exc, RuleLocation(where))]
    if not docs:
        return [], [diagnostic("E001", "no rule in file (empty YAML)", RuleLocation(where))]
    out: list[ParsedDocument] = []
    global_doc: dict[str, Any] = {}
    prev: dict[str, Any] = {}
    for data, start, lines in docs:
        loc = RuleLocation(where, start)
        if data is None:
            continue
        if not isinstance(data, dict):
            diags.append(diagnostic("E001", f"a rule document must be a mapping, not "
                                    f"{type(data).__name__}", loc))
            continue
        action = data.get("action")
        if action == "global":
            global_doc = {k: v for k, v in data.items() if k != "action"}
            prev = global_doc
            continue
        if action == "reset":
            global_doc = {}
            continue
        try:
            check_alias_expansion(data, SigmaError)
            if action == "repeat":
                data = deep_dict_update(copy.deepcopy(prev),
                                        {k: v for k, v in data.items() if k != "action"})
            elif action is not None:
                raise RuleError(f"unknown Sigma collection action {action!r}",
                                RuleLocation(where, lines.get(("action",), start)))
            elif "correlation" not in data and "filter" not in data and global_doc:
                data = deep_dict_update(copy.deepcopy(data), global_doc)
            _precheck(data, lines, where, start)
            data = _alias_modifiers(data)
            sloc = SigmaRuleLocation(Path(where), start)
            obj: SigmaRule | SigmaCorrelationRule | SigmaFilter
            if "correlation" in data:
                obj = SigmaCorrelationRule.from_dict(data, source=sloc)
            elif "filter" in data:
                obj = SigmaFilter.from_dict(data, source=sloc, policy=_POLICY)
            else:
                obj = SigmaRule.from_dict(data, source=sloc, policy=_POLICY)
                prev = data
        except RuleError as exc:
            diags.append(error_diagnostic(exc, loc))
            continue
        except SigmaError as exc:
            msg = str(exc.args[0]) if exc.args else type(exc).__name__
            code = _SIGMA_ERROR_CODES.get(type(exc).__name__, "E001")
            if type(exc).__name__ == "SigmaDetectionError" and "empty" in msg:
                code = "E007"  # "Detection is empty": a selection that can match nothing
            line = _locate(exc, data, lines, start)
            diags.append(diagnostic(code, msg, RuleLocation(where, line),
                                    str(data.get("id", ""))))
            continue
        except Exception as exc:  # pySigma on malformed structures (TypeError, ...)
            diags.append(diagnostic("E001", f"malformed rule: {type(exc).__name__}: {exc}",
                                    loc, str(data.get("id", ""))))
            continue
        out.append(ParsedDocument(obj, loc, lines))
    return out, diags


# --------------------------------------------------------------------------- loading


def _apply_filters(parsed: list[ParsedDocument], filters: list[ParsedDocument],
                   diags: list[Diagnostic]) -> list[ParsedDocument]:
    rules = [p for p in parsed if isinstance(p.obj, SigmaRule)]
    try:
        from coi_watch.rules.tuning import apply_filters
    except ImportError as exc:
        for f in filters:
            diags.append(diagnostic("E011", f"filters are unavailable: {exc}", f.source))
        return rules
    by_obj = {id(p.obj): p for p in rules}
    where = {id(f.obj): f.source for f in filters}
    try:
        kept, notes = apply_filters([p.obj for p in rules],  # type: ignore[misc]
                                    [f.obj for f in filters],  # type: ignore[misc]
                                    source_of=lambda f: where[id(f)])
    except RuleError as exc:
        diags.append(error_diagnostic(exc, filters[0].source))
        return rules
    diags.extend(notes)
    return [by_obj[id(r)] for r in kept if id(r) in by_obj]


def _compile_correlations(corrs: list[ParsedDocument], base: dict[str, Any],
                          diags: list[Diagnostic]) -> list[Any]:
    if not corrs:
        return []
    try:
        from coi_watch.rules.correlation import compile_correlation
    except ImportError as exc:
        for c in corrs:
            diags.append(diagnostic("E009", f"correlations are unavailable: {exc}", c.source))
        return []
    out = []
    for c in corrs:
        try:
            compiled = compile_correlation(c.obj, source=c.source,  # type: ignore[arg-type]
                                           base=base)
        except RuleError as exc:
            d = error_diagnostic(exc, c.source, str(getattr(c.obj, "id", "") or ""))
            if exc.code not in ("E001", "E002", "E003", "E005"):
                d = diagnostic("E009", exc.message, d.source, d.rule)
            diags.append(d)
            continue
        for key in (compiled.id, getattr(compiled, "name", None)):
            if key:
                if key in base:
                    diags.append(diagnostic("E008", f"correlation id or name {key!r} is already "
                                            "used", c.source, compiled.id))
                base.setdefault(key, compiled)
        out.append(compiled)
    return out


def load_rules(
    paths: Sequence[str | Path],
    *,
    include_packs: bool = True,
    placeholders: Mapping[str, Sequence[str]] | None = None,
) -> LoadResult:
    """Load, parse and compile every rule under ``paths`` (and the built-in packs).

    Never raises for a bad rule: each problem is a :class:`Diagnostic` in the result.
    """
    diags: list[Diagnostic] = []
    files: list[str] = []
    sources: list[tuple[str, str]] = pack_files() if include_packs else []
    for path in rule_files(paths):
        try:
            sources.append((str(path), _read(path)))
        except RuleError as exc:
            files.append(str(path))
            diags.append(diagnostic("E010", exc.message, RuleLocation(str(path))))
    return _load_sources(sources, files, diags, placeholders)


def load_text(
    text: str,
    *,
    path: str = "<text>",
    include_packs: bool = False,
    placeholders: Mapping[str, Sequence[str]] | None = None,
) -> LoadResult:
    """Like :func:`load_rules`, for rule YAML given as a string (tests, stdin)."""
    sources = pack_files() if include_packs else []
    if len(text) > MAX_FILE_BYTES:
        diag = diagnostic("E010", f"rule text is longer than {MAX_FILE_BYTES} characters",
                          RuleLocation(path))
        return _load_sources(sources, [path], [diag], placeholders)
    sources.append((path, text))
    return _load_sources(sources, [], [], placeholders)


def _load_sources(
    sources: list[tuple[str, str]], files: list[str], diags: list[Diagnostic],
    placeholders: Mapping[str, Sequence[str]] | None,
) -> LoadResult:
    parsed: list[ParsedDocument] = []
    for where, text in sources:
        files.append(where)
        docs, notes = parse_file(where, text)
        parsed.extend(docs)
        diags.extend(notes)

    filters = [p for p in parsed if isinstance(p.obj, SigmaFilter)]
    corrs = [p for p in parsed if isinstance(p.obj, SigmaCorrelationRule)]
    bases = (_apply_filters(parsed, filters, diags) if filters
             else [p for p in parsed if isinstance(p.obj, SigmaRule)])

    compiled: list[CompiledRule] = []
    base: dict[str, Any] = {}
    for p in bases:
        rule = p.obj
        assert isinstance(rule, SigmaRule)
        try:
            cr = compile_rule(rule, source=p.source, placeholders=placeholders, lines=p.lines)
        except RuleError as exc:
            diags.append(error_diagnostic(exc, p.source, str(rule.id or rule.title)))
            continue
        dup = next((k for k in (cr.id, cr.name) if k and k in base), None)
        if dup is not None:
            first = base[dup].source
            diags.append(diagnostic("E008", f"rule id or name {dup!r} is already used by the "
                                    f"rule at {first}; this one is not loaded", p.source, cr.id))
            continue
        base[cr.id] = cr
        if cr.name:
            base[cr.name] = cr
        compiled.append(cr)
        diags.extend(cr.warnings)
    correlations = _compile_correlations(corrs, base, diags)
    return LoadResult(tuple(compiled), tuple(correlations), tuple(diags), tuple(files))
