"""Sigma value modifiers: one registry, and the matchers their values compile into.

Strategy: pySigma parses ``field|mod1|mod2: value`` and applies the modifiers to the values
(``contains`` wraps a string in wildcards, ``base64`` encodes it, ``re`` turns it into a
regular expression, ``cidr`` into a network, ``lt`` into a comparison, ``windash`` and
``base64offset`` into an OR-ed expansion). :data:`MODIFIERS` is the one registry of every
modifier id: what it does, the value type it leaves behind and whether coi-watch supports it
(an unsupported one is an E002 at load time, never a silent skip). :func:`value_tests` is
the matcher factory: it turns one modified value into immutable :class:`ValueTest` closures,
dispatching on the value's type through :data:`FACTORIES`.

A string value becomes the cheapest test that is exact: equality, ``startswith``,
``endswith`` or ``in`` on the lower-cased field (Sigma is case-insensitive unless
``|cased``), and only a wildcard in the middle becomes an RE2 full match. Every regular
expression (``|re`` and wildcards alike) runs on RE2 (google-re2), whose matching time is
linear in the input: a container-controlled command line can never stall the supervisor.
Patterns RE2 cannot run in linear time (look-around, back-references) are E005 errors.

Semantics that Sigma leaves to the backend, and coi-watch's choice:

- ``re`` searches (unanchored), as SigmaHQ rules expect (``CommandLine|re: '-D'``);
  flags ``i``, ``m``, ``s`` become RE2 inline flags.
- ``null`` matches an absent field (coi-watch treats an empty string as absent).
- a number matches an integer field by value and a text field by its decimal text.
- ``fieldref`` compares two fields case-insensitively (``contains``/``startswith``/
  ``endswith`` apply to it); an absent field never matches.
- ``expand`` placeholders (``%admins%``) take their values from the ``placeholders``
  mapping given to the loader; a placeholder with no values is an E005 error, as the
  specification requires.
"""

from __future__ import annotations

import ipaddress
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import re2
from sigma.types import (
    CompareOperators,
    Placeholder,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaFieldReference,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
    SigmaTimestampPart,
    SpecialChars,
)

from coi_watch.errors import RuleError, RuleLocation

__all__ = (
    "FACTORIES",
    "MAX_VALUES",
    "MODIFIERS",
    "InvalidValueError",
    "Modifier",
    "ValueTest",
    "compile_regex",
    "value_tests",
)

MAX_VALUES = 10_000
"""Most values one detection item may list (after expansion): more is an E005 error."""


class InvalidValueError(RuleError):
    """A value that cannot be compiled: bad regex, CIDR, placeholder, list too long."""

    code = "E005"


@dataclass(frozen=True, slots=True)
class Modifier:
    """One Sigma value modifier as coi-watch implements it."""

    id: str
    summary: str
    produces: str
    """The value type pySigma leaves behind (the factory that matches it)."""
    supported: bool = True
    reason: str = ""


def _mods(*rows: tuple[str, str, str] | tuple[str, str, str, bool, str]) -> dict[str, Modifier]:
    return {row[0]: Modifier(*row) for row in rows}


_NO_TS = "timestamp parts need an event time field; coi-watch rules match single events"

MODIFIERS: Mapping[str, Modifier] = MappingProxyType(_mods(
    ("contains", "value anywhere in the field", "string"),
    ("startswith", "field starts with the value", "string"),
    ("endswith", "field ends with the value", "string"),
    ("all", "every value must match (AND instead of OR)", "list"),
    ("neq", "negate the item: no value may match", "list"),
    ("cased", "case-sensitive string match", "cased string"),
    ("re", "RE2 regular expression, searched (unanchored)", "regex"),
    ("i", "regex flag: ignore case", "regex"),
    ("ignorecase", "regex flag: ignore case", "regex"),
    ("m", "regex flag: ^ and $ match at line breaks", "regex"),
    ("multiline", "regex flag: ^ and $ match at line breaks", "regex"),
    ("s", "regex flag: . matches a line break", "regex"),
    ("dotall", "regex flag: . matches a line break", "regex"),
    ("cidr", "IPv4/IPv6 address within the network", "cidr"),
    ("base64", "value base64-encoded", "string"),
    ("base64offset", "value base64-encoded at the three byte offsets (OR)", "expansion"),
    ("utf16", "value as UTF-16 with byte-order mark", "string"),
    ("utf16le", "value as UTF-16LE", "string"),
    ("utf16be", "value as UTF-16BE", "string"),
    ("wide", "value as UTF-16LE (alias of utf16le)", "string"),
    ("windash", "- and / (and Unicode dashes) interchangeable in options (OR)", "expansion"),
    ("exists", "field present (true) or absent (false)", "exists"),
    ("lt", "number less than", "compare"),
    ("lte", "number less than or equal", "compare"),
    ("gt", "number greater than", "compare"),
    ("gte", "number greater than or equal", "compare"),
    ("fieldref", "value names another field to compare with", "fieldref"),
    ("expand", "%placeholder% replaced by configured values (OR)", "string"),
    ("minute", "timestamp minute", "timestamp", False, _NO_TS),
    ("hour", "timestamp hour", "timestamp", False, _NO_TS),
    ("day", "timestamp day", "timestamp", False, _NO_TS),
    ("week", "timestamp week", "timestamp", False, _NO_TS),
    ("month", "timestamp month", "timestamp", False, _NO_TS),
    ("year", "timestamp year", "timestamp", False, _NO_TS),
))
"""Every Sigma modifier id -> what coi-watch does with it."""


@dataclass(frozen=True, slots=True)
class ValueTest:
    """One compiled value: ``test`` applied to the field in ``form``.

    ``form`` is ``lower`` (lower-cased text), ``text`` (text as is), ``raw`` (the value,
    ``None`` included: null and exists tests) or ``fieldref`` (``test`` takes the pair
    ``(value, other)``, both lower-cased). ``shape`` tells the item compiler which fast
    path applies (``exact``/``prefix``/``suffix``/``contains`` carry their ``literal``);
    ``literal`` is also the prefilter's necessary substring of the lower-cased field.
    """

    form: str
    shape: str
    test: Callable[[Any], bool]
    describe: str
    literal: str | None = None
    ref: str | None = None


Factory = Callable[[Any, "Context"], list[ValueTest]]


@dataclass(frozen=True, slots=True)
class Context:
    """What a factory needs besides the value."""

    source: RuleLocation | None
    placeholders: Mapping[str, Sequence[str]]


# --------------------------------------------------------------------------- strings


def _shape(parts: Sequence[Any]) -> tuple[str, str]:
    """Classify wildcard string parts: (shape, literal)."""
    star = SpecialChars.WILDCARD_MULTI
    n = len(parts)
    if n == 0:
        return "exact", ""
    if all(isinstance(p, str) for p in parts):
        return "exact", "".join(parts)
    if n == 1 and parts[0] is star:
        return "any", ""
    if n == 2 and isinstance(parts[0], str) and parts[1] is star:
        return "prefix", parts[0]
    if n == 2 and parts[0] is star and isinstance(parts[1], str):
        return "suffix", parts[1]
    if n == 3 and parts[0] is star and isinstance(parts[1], str) and parts[2] is star:
        return "contains", parts[1]
    literals = [p for p in parts if isinstance(p, str)]
    return "wildcard", max(literals, key=len) if literals else ""


def _wildcard_regex(parts: Sequence[Any], lower: bool) -> Any:
    out = []
    for p in parts:
        if p is SpecialChars.WILDCARD_MULTI:
            out.append(".*")
        elif p is SpecialChars.WILDCARD_SINGLE:
            out.append(".")
        else:
            out.append(re2.escape(p.lower() if lower else p))
    return compile_regex("(?s)" + "".join(out), None)


def _string_test(parts: Sequence[Any], cased: bool, original: str) -> ValueTest:
    lower = not cased
    norm = [p.lower() if lower and isinstance(p, str) else p for p in parts]
    shape, literal = _shape(norm)
    form = "text" if cased else "lower"
    what = f"{'cased ' if cased else ''}{shape} {literal!r}"
    test: Callable[[Any], bool]
    if shape == "exact":
        test = literal.__eq__
    elif shape == "prefix":
        test = operator.methodcaller("startswith", literal)
    elif shape == "suffix":
        test = operator.methodcaller("endswith", literal)
    elif shape == "contains":
        test = _contains(literal)
    elif shape == "any":
        test = _always
    else:
        rx = _wildcard_regex(norm, lower)
        test = _fullmatch(rx)
        what = f"{'cased ' if cased else ''}wildcard {original!r}"
    return ValueTest(form, shape, test, what, literal or None)


def _contains(literal: str) -> Callable[[Any], bool]:
    def test(v: Any) -> bool:
        return literal in v

    return test


def _always(v: Any) -> bool:
    return True


# Field values repeat all day in an agent session, and each RE2 call pays a few
# microseconds of wrapper overhead (the str is encoded anew), so every regex remembers its
# answers for short values: a small LRU per regex, bounded in entries and value length
# (128 x 256 characters), so hostile input can neither fill memory nor slow it down.
_RX_CACHE_ENTRIES = 128
_RX_CACHEABLE_CHARS = 256


def _remembering(match: Callable[[str], Any]) -> Callable[[Any], bool]:
    """``match(v) is not None``, cached for short strings."""
    def compute(v: str) -> bool:
        return match(v) is not None

    cached = lru_cache(maxsize=_RX_CACHE_ENTRIES)(compute)

    def test(v: Any) -> bool:
        if type(v) is str and len(v) <= _RX_CACHEABLE_CHARS:
            return cached(v)
        return match(v) is not None

    return test


def _fullmatch(rx: Any) -> Callable[[Any], bool]:
    return _remembering(rx.fullmatch)


def _expand(value: SigmaString, ctx: Context) -> list[SigmaString]:
    if not value.contains_placeholder():
        return [value]
    missing: list[str] = []

    def callback(p: Placeholder) -> Any:
        values = ctx.placeholders.get(p.name)
        if not values:
            missing.append(p.name)
            return iter(())
        return (SigmaString(str(v)) for v in values)

    try:
        out = value.replace_placeholders(callback)
    except Exception as exc:  # pySigma caps expansions (SigmaValueError)
        raise InvalidValueError(str(exc), ctx.source) from None
    if missing:
        names = ", ".join(f"%{m}%" for m in dict.fromkeys(missing))
        raise InvalidValueError(
            f"placeholder {names} has no values: give them in the rules configuration "
            "(placeholders) or the rule cannot be evaluated", ctx.source)
    return out


def _strings(value: SigmaString, ctx: Context) -> list[ValueTest]:
    cased = isinstance(value, SigmaCasedString)
    return [_string_test(s.s, cased, str(s)) for s in _expand(value, ctx)]


# --------------------------------------------------------------------------- regexes

_FLAGS = {
    SigmaRegularExpressionFlag.IGNORECASE: "i",
    SigmaRegularExpressionFlag.MULTILINE: "m",
    SigmaRegularExpressionFlag.DOTALL: "s",
}


def compile_regex(pattern: str, source: RuleLocation | None) -> Any:
    """Compile ``pattern`` with RE2 (Python's ``\\Z`` accepted as RE2's ``\\z``).

    Raises:
        InvalidValueError: RE2 rejects it (syntax, look-around, back-reference, size).
    """
    fixed = pattern.replace("\\Z", "\\z")
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(fixed, options)
    except re2.error as exc:
        raise InvalidValueError(
            f"regular expression {pattern!r} cannot run on RE2 (linear time: no look-around "
            f"or back-references): {exc}", source) from None


def _regex(value: SigmaRegularExpression, ctx: Context) -> list[ValueTest]:
    out = []
    for rx in (value.replace_placeholders(lambda p: iter(ctx.placeholders.get(p.name, ())))
               if value.contains_placeholder() else [value]):
        if rx.contains_placeholder():
            raise InvalidValueError(
                f"regular expression {str(rx.regexp)!r} has placeholders with no values",
                ctx.source)
        flags = "".join(sorted(_FLAGS[f] for f in value.flags))
        pattern = str(rx.regexp)
        compiled = compile_regex(f"(?{flags}){pattern}" if flags else pattern, ctx.source)

        shown = f"/{pattern}/{flags}"
        out.append(ValueTest("text", "regex", _remembering(compiled.search), f"regex {shown}"))
    return out


# --------------------------------------------------------------------------- the rest


@lru_cache(maxsize=4096)
def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _cidr(value: SigmaCIDRExpression, ctx: Context) -> list[ValueTest]:
    net = value.network

    def test(v: Any) -> bool:
        ip = _ip(v)
        return ip is not None and ip.version == net.version and ip in net

    return [ValueTest("text", "cidr", test, f"cidr {net}")]


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int | float):
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


_COMPARE = {
    CompareOperators.LT: (operator.lt, "<"),
    CompareOperators.LTE: (operator.le, "<="),
    CompareOperators.GT: (operator.gt, ">"),
    CompareOperators.GTE: (operator.ge, ">="),
    CompareOperators.NEQ: (operator.ne, "!="),
}


def _compare(value: SigmaCompareExpression, ctx: Context) -> list[ValueTest]:
    op, sym = _COMPARE[value.op]
    n = value.number.number

    def test(v: Any) -> bool:
        x = _number(v)
        return x is not None and bool(op(x, n))

    return [ValueTest("raw", "compare", test, f"{sym} {n}")]


def _number_eq(value: SigmaNumber, ctx: Context) -> list[ValueTest]:
    n = value.number
    text = str(n).lower()

    def test(v: Any) -> bool:
        if isinstance(v, bool) or v is None:
            return False
        if isinstance(v, int | float):
            return v == n
        return str(v).lower() == text

    return [ValueTest("raw", "number", test, f"number {n}", text)]


def _bool(value: SigmaBool, ctx: Context) -> list[ValueTest]:
    text = "true" if value.boolean else "false"
    return [ValueTest("lower", "exact", text.__eq__, f"bool {text}", text)]


def _null(value: SigmaNull, ctx: Context) -> list[ValueTest]:
    return [ValueTest("raw", "null", _is_none, "null (absent)")]


def _is_none(v: Any) -> bool:
    return v is None


def _exists(value: SigmaExists, ctx: Context) -> list[ValueTest]:
    want = bool(value.exists)

    def test(v: Any) -> bool:
        return (v is not None) is want

    return [ValueTest("raw", "exists", test, f"exists {str(want).lower()}")]


def _fieldref(value: SigmaFieldReference, ctx: Context) -> list[ValueTest]:
    start, end = value.starts_with, value.ends_with
    if start and end:
        def test(pair: Any) -> bool:
            return bool(pair[1] in pair[0])
        how = "contains"
    elif start:
        def test(pair: Any) -> bool:
            return bool(pair[0].startswith(pair[1]))
        how = "startswith"
    elif end:
        def test(pair: Any) -> bool:
            return bool(pair[0].endswith(pair[1]))
        how = "endswith"
    else:
        def test(pair: Any) -> bool:
            return bool(pair[0] == pair[1])
        how = "equals"
    return [ValueTest("fieldref", "fieldref", test, f"{how} field {value.field}",
                      ref=value.field)]


def _expansion(value: SigmaExpansion, ctx: Context) -> list[ValueTest]:
    return [t for v in value.values for t in value_tests(v, ctx)]


FACTORIES: Mapping[type, Factory] = MappingProxyType({
    SigmaCasedString: _strings,
    SigmaString: _strings,
    SigmaRegularExpression: _regex,
    SigmaCIDRExpression: _cidr,
    SigmaCompareExpression: _compare,
    SigmaNumber: _number_eq,
    SigmaBool: _bool,
    SigmaNull: _null,
    SigmaExists: _exists,
    SigmaFieldReference: _fieldref,
    SigmaExpansion: _expansion,
})
"""Matcher factory per pySigma value type (exact type first, then the MRO)."""


def value_tests(value: Any, ctx: Context) -> list[ValueTest]:
    """The alternatives (OR-ed) one modified value compiles into.

    Raises:
        InvalidValueError: a value type coi-watch cannot evaluate, or a bad value.
    """
    if isinstance(value, SigmaTimestampPart):
        raise InvalidValueError(_NO_TS, ctx.source)
    for cls in type(value).__mro__:
        factory = FACTORIES.get(cls)
        if factory is not None:
            return factory(value, ctx)
    raise InvalidValueError(
        f"value {value!r} of type {type(value).__name__} cannot be evaluated by coi-watch",
        ctx.source)
