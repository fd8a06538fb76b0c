"""Sigma conditions: a small parser, and the boolean closures they compile into.

Strategy: the condition string is parsed here (not by pySigma's pyparsing grammar, whose
cached parse trees are mutated by post-processing) into an immutable tree, resolved against
the rule's selection names (``1 of sel_*`` becomes an OR of the selections it names), then
turned into a tiny boolean IR whose leaves are compiled detection items. The IR is folded
at load time: leaves on fields that are constant or unobservable for an event kind become
``Const`` nodes, so a rule that can never match is found at load time with the reasons, and
the rest compiles into nested closures ``Callable[[EventView], bool]`` built once.

Grammar (EBNF; keywords are lower-case, as in the Sigma specification)::

    condition  ::= or_expr
    or_expr    ::= and_expr { "or" and_expr }
    and_expr   ::= not_expr { "and" not_expr }
    not_expr   ::= "not" not_expr | term
    term       ::= "(" or_expr ")" | selector | identifier
    selector   ::= ( "1" | "any" | "all" ) "of" ( "them" | pattern )
    identifier ::= word                      (no "*")
    pattern    ::= word                      ("*" matches any run of characters)
    word       ::= { letter | digit | "_" | "-" | "*" }+

Precedence, loosest first: ``or`` < ``and`` < ``not`` < ``x of`` < parentheses. ``them``
and patterns skip identifiers starting with ``_`` unless the pattern itself starts with
``_`` (pySigma's rule, which Sigma filters rely on). A list of conditions is OR-ed. The
deprecated aggregation syntax (``| count() > 5``) and ``near`` are errors pointing at
correlation rules.

The prefilter: :func:`guard` derives, from the IR, a set of ``(field, literal)`` pairs of
which at least one must occur in the lower-cased field for the rule to have any chance to
match (``None`` when no such set exists, e.g. under ``not``). The engine scans each event
once per field with an RE2 set and only evaluates the rules whose guard was hit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from coi_watch.errors import RuleError, RuleLocation, RuleSyntaxError

__all__ = (
    "AllOf",
    "AnyOf",
    "Const",
    "Expr",
    "Guard",
    "Leaf",
    "MissingSelectionError",
    "Negate",
    "Node",
    "Not",
    "Op",
    "Quant",
    "Ref",
    "closure",
    "fold",
    "guard",
    "parse_condition",
    "resolve",
)


class MissingSelectionError(RuleError):
    """The condition names a selection the rule does not define (E006)."""

    code = "E006"


# --------------------------------------------------------------------------- syntax tree


@dataclass(frozen=True, slots=True)
class Ref:
    """A selection named in the condition."""

    name: str
    col: int


@dataclass(frozen=True, slots=True)
class Quant:
    """``1 of pattern`` (``any``) or ``all of pattern``; ``them`` is the pattern ``*``."""

    all: bool
    pattern: str
    col: int


@dataclass(frozen=True, slots=True)
class Not:
    arg: Node


@dataclass(frozen=True, slots=True)
class Op:
    """``and`` / ``or`` over two or more operands."""

    op: str
    args: tuple[Node, ...]


Node = Ref | Quant | Not | Op

_TOKEN = re.compile(r"\s*(?:(?P<paren>[()])|(?P<word>[A-Za-z0-9_*\-]+)|(?P<bad>\S))")
_KEYWORDS = frozenset({"and", "or", "not", "of", "them"})


def _tokens(text: str, source: RuleLocation | None) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # only trailing whitespace is left
            break
        col = m.start(m.lastgroup or 0) + 1
        if m.group("bad") is not None:
            ch = m.group("bad")
            if ch == "|":
                raise RuleSyntaxError(
                    "the aggregation syntax ('| count() ...') is deprecated: write a Sigma "
                    "correlation rule (type event_count / value_count) instead", source)
            raise RuleSyntaxError(f"unexpected {ch!r} at column {col} of the condition",
                                  source)
        out.append((m.group("paren") or m.group("word"), col))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str, source: RuleLocation | None) -> None:
        self.text = text
        self.source = source
        self.toks = _tokens(text, source)
        self.i = 0

    def error(self, what: str) -> RuleSyntaxError:
        if self.i < len(self.toks):
            tok, col = self.toks[self.i]
            where = f"{tok!r} at column {col}"
        else:
            where = "the end"
        return RuleSyntaxError(f"condition {self.text!r}: {what}, found {where}", self.source)

    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.toks[j][0] if j < len(self.toks) else None

    def take(self) -> tuple[str, int]:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def parse(self) -> Node:
        if not self.toks:
            raise RuleSyntaxError("the condition is empty", self.source)
        node = self.or_expr()
        if self.i != len(self.toks):
            if self.peek() == "near":
                raise RuleSyntaxError("'near' is deprecated: write a temporal correlation "
                                      "rule", self.source)
            raise self.error("expected 'and', 'or' or the end")
        return node

    def _chain(self, op: str, sub: Callable[[], Node]) -> Node:
        args = [sub()]
        while self.peek() == op:
            self.take()
            args.append(sub())
        return args[0] if len(args) == 1 else Op(op, tuple(args))

    def or_expr(self) -> Node:
        return self._chain("or", self.and_expr)

    def and_expr(self) -> Node:
        return self._chain("and", self.not_expr)

    def not_expr(self) -> Node:
        if self.peek() == "not":
            self.take()
            return Not(self.not_expr())
        return self.term()

    def term(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise self.error("expected a selection, 'not', '1 of', 'all of' or '('")
        if tok == "(":
            self.take()
            node = self.or_expr()
            if self.peek() != ")":
                raise self.error("expected ')'")
            self.take()
            return node
        if tok in ("1", "any", "all") and self.peek(1) == "of":
            _, col = self.take()
            self.take()
            pat = self.peek()
            if pat is None or pat in ("(", ")") or pat in _KEYWORDS - {"them"}:
                raise self.error(f"expected a selection pattern or 'them' after '{tok} of'")
            self.take()
            return Quant(tok == "all", "*" if pat == "them" else pat, col)
        if tok == ")" or tok in _KEYWORDS:
            raise self.error("expected a selection, 'not', '1 of', 'all of' or '('")
        name, col = self.take()
        if "*" in name:
            raise self.error(f"a pattern like {name!r} needs '1 of' or 'all of'")
        return Ref(name, col)


def parse_condition(text: str, source: RuleLocation | None = None) -> Node:
    """Parse one condition string.

    Raises:
        RuleSyntaxError: the condition does not follow the grammar (E001).
    """
    if not isinstance(text, str):
        raise RuleSyntaxError(f"a condition must be a string, not {type(text).__name__}",
                              source)
    return _Parser(text, source).parse()


def _pattern_names(pattern: str, names: Sequence[str]) -> list[str]:
    rx = re.compile(".*".join(re.escape(p) for p in pattern.split("*")))
    hidden_ok = pattern.startswith("_")
    return [n for n in names if rx.fullmatch(n) and (hidden_ok or not n.startswith("_"))]


# --------------------------------------------------------------------------- boolean IR


@dataclass(frozen=True, slots=True)
class Const:
    """A value known at load time; ``why`` says what made it so: ``(code, reason, line)``."""

    value: bool
    why: tuple[tuple[str, str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Leaf:
    """A compiled detection item (or a whole selection name, for explain)."""

    pred: Callable[[Any], bool]
    guard: frozenset[tuple[str, str]] | None
    label: str


@dataclass(frozen=True, slots=True)
class AllOf:
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Negate:
    arg: Expr


Expr = Const | Leaf | AllOf | AnyOf | Negate
Guard = frozenset[tuple[str, str]] | None


def resolve(node: Node, selections: Mapping[str, Expr], source: RuleLocation | None,
            used: set[str]) -> Expr:
    """Replace selection names (and quantifiers) by their IR; record names in ``used``.

    Raises:
        MissingSelectionError: a name or pattern that matches no selection (E006).
    """
    names = list(selections)
    if isinstance(node, Ref):
        if node.name not in selections:
            raise MissingSelectionError(
                f"the condition names selection {node.name!r} (column {node.col}), which the "
                f"rule does not define; it defines: {', '.join(names)}", source)
        used.add(node.name)
        return selections[node.name]
    if isinstance(node, Quant):
        hits = _pattern_names(node.pattern, names)
        if not hits:
            shown = "them" if node.pattern == "*" else node.pattern
            raise MissingSelectionError(
                f"'{'all' if node.all else '1'} of {shown}' (column {node.col}) matches no "
                f"selection; the rule defines: {', '.join(names)}", source)
        used.update(hits)
        args = tuple(selections[n] for n in hits)
        return args[0] if len(args) == 1 else (AllOf(args) if node.all else AnyOf(args))
    if isinstance(node, Not):
        return Negate(resolve(node.arg, selections, source, used))
    args = tuple(resolve(a, selections, source, used) for a in node.args)
    return AllOf(args) if node.op == "and" else AnyOf(args)


def fold(expr: Expr) -> Expr:
    """Constant-fold ``expr``: constants absorb (``False and x`` -> ``False``) or vanish."""
    if isinstance(expr, Negate):
        arg = fold(expr.arg)
        if isinstance(arg, Const):
            return Const(not arg.value, arg.why)
        if isinstance(arg, Negate):
            return arg.arg
        return Negate(arg)
    if isinstance(expr, AllOf | AnyOf):
        absorbing = isinstance(expr, AnyOf)  # True absorbs OR; False absorbs AND
        kept: list[Expr] = []
        neutral_why: list[tuple[str, str, int]] = []
        for a in (fold(x) for x in expr.args):
            if isinstance(a, Const):
                if a.value is absorbing:
                    return a
                neutral_why.extend(a.why)
                continue
            if isinstance(a, AllOf | AnyOf) and type(a) is type(expr):
                kept.extend(a.args)  # flatten (a and (b and c))
            else:
                kept.append(a)
        if not kept:
            return Const(not absorbing, tuple(dict.fromkeys(neutral_why)))
        if len(kept) == 1:
            return kept[0]
        return type(expr)(tuple(kept))
    return expr


def closure(expr: Expr) -> Callable[[Any], bool]:
    """The closure that evaluates a folded ``expr`` on an :class:`EventView`."""
    if isinstance(expr, Leaf):
        return expr.pred
    if isinstance(expr, Const):
        value = expr.value
        return lambda view: value
    if isinstance(expr, Negate):
        inner = closure(expr.arg)
        return lambda view: not inner(view)
    fs = tuple(closure(a) for a in expr.args)
    if isinstance(expr, AllOf):
        if len(fs) == 2:
            f0, f1 = fs
            return lambda view: f0(view) and f1(view)

        def all_of(view: Any) -> bool:
            for f in fs:  # noqa: SIM110 - a loop beats any()/all() on a generator here
                if not f(view):
                    return False
            return True

        return all_of
    if len(fs) == 2:
        g0, g1 = fs
        return lambda view: g0(view) or g1(view)

    def any_of(view: Any) -> bool:
        for f in fs:  # noqa: SIM110 - a loop beats any()/all() on a generator here
            if f(view):
                return True
        return False

    return any_of


def _score(g: frozenset[tuple[str, str]]) -> tuple[int, int]:
    return (min((len(lit) for _, lit in g), default=1 << 30), -len(g))


MIN_GUARD = 2
"""Shortest literal worth prefiltering on (shorter: the rule is always evaluated)."""


def guard(expr: Expr) -> Guard:
    """Pairs ``(field, literal)`` at least one of which a match needs (see module doc)."""
    if isinstance(expr, Leaf):
        return expr.guard
    if isinstance(expr, Const):
        return None if expr.value else frozenset()
    if isinstance(expr, Negate):
        return None
    gs = [guard(a) for a in expr.args]
    if isinstance(expr, AnyOf):
        out: set[tuple[str, str]] = set()
        for g in gs:
            if g is None:
                return None
            out |= g
        return frozenset(out)
    known = [g for g in gs if g is not None]
    if not known:
        return None
    best = max(known, key=_score)
    return best if not best or _score(best)[0] >= MIN_GUARD else None
