"""Secret redaction for audit records: credentials never reach the disk.

Strategy: a :class:`Redactor` is a list of :class:`Pattern`\\ s, each a named ``str -> str``
function, applied to every string value of a record's payload (recursively through dicts,
lists and tuples) before the record is serialised and chained; the chain fields themselves
are never touched. Two structural rules sit beside the patterns: in a list of strings (an
``argv``) the element after a secret-named flag (``--password``, ``--token``, ``--api-key``)
is replaced whole, and a dict value whose key is a secret name (``"password"``,
``"client_secret"``) is replaced. A match keeps its name and loses its value:
``DB_PASSWORD=[REDACTED]``, ``Bearer [REDACTED]``, ``ghp_[REDACTED]``.

Hostile input: a container controls argv, paths and DNS names, so every built-in pattern is
linear in its input. They use Python's ``re`` with possessive quantifiers, fixed-width
look-behinds that only let a match start at the beginning of a run of name characters, and
bounded repetitions, so no character is rescanned more than a constant number of times (a
1 MiB adversarial string takes milliseconds, see the tests). Names are judged in Python
after a cheap candidate match, not with a regex that would backtrack over them. Patterns a
user adds from configuration are compiled with RE2 (``google-re2``), which guarantees linear
time for any expression.

Speed: each pattern lists ``hints``, ASCII literals one of which every match contains. A
record whose serialised payload contains none of them (most of them: forks, exits, flows)
skips decoding and walking entirely, and within a record a pattern only runs on strings that
contain one of its hints. A pattern without hints (a user's) always runs.

Names, decided once and tested: ``NAME=value`` / ``NAME: value`` is redacted when NAME
contains ``secret``, ``token``, ``passw``, ``credential``, ``apikey``, ``privkey``,
``privatekey`` or ``accesskey``, or has ``key``, ``pass``, ``pwd``, ``pw`` or ``auth`` as
one of its components (split at ``_ . -`` and camelCase). So ``GITHUB_TOKEN``,
``DB_PASSWORD``, ``PGPASSWORD``, ``MYSQL_PWD``, ``SSH_KEY`` and ``apiKey`` are secrets;
``monkey``, ``keyboard``, ``KEYMAP``, ``bypass``, ``author`` are not, and neither are the
shell's ``PWD`` and ``OLDPWD``, nor a file name with its line
(``coi-credential-access.yml:17``). A flag takes the next word as a secret only when its name
ends in ``password``, ``passwd``, ``passphrase``, ``token``, ``secret``, ``apikey`` or
``credential(s)`` (ignoring separators) or is ``-pass``/``-passin``/``-passout``/``-pw``/
``-pwd`` (openssl, plink): ``--passwordless``, ``--password-stdin`` and ``--token-file`` are
left alone, as is ``-p`` (too often a port or a path).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import orjson
import re2  # google-re2 ships no type information (mypy: ignore_missing_imports)

from coi_watch.errors import ConfigError

__all__ = (
    "DEFAULT_PATTERNS",
    "REDACTED",
    "Pattern",
    "Redactor",
    "is_secret_flag",
    "is_secret_key",
    "is_secret_name",
)

REDACTED: Final = "[REDACTED]"
"""What a secret value is replaced with."""


@dataclass(frozen=True, slots=True)
class Pattern:
    """One redaction rule: ``apply`` returns its input with the secrets in it replaced.

    ``hints`` are lower-case ASCII literals (no ``"`` or ``\\``) of which every match
    contains at least one, ignoring case; they let the redactor skip strings and whole
    records cheaply. Leave them empty when unsure: the pattern then always runs.
    """

    name: str
    apply: Callable[[str], str]
    hints: tuple[str, ...] = ()

    @classmethod
    def regex(cls, expression: str, *, name: str = "", hints: Iterable[str] = ()) -> Pattern:
        """A pattern from an RE2 expression (linear time whatever the expression).

        A group named ``secret`` is replaced and the rest of the match kept
        (``token=(?P<secret>\\w+)`` gives ``token=[REDACTED]``); without one the whole match
        is replaced.

        Raises:
            ConfigError: ``expression`` is not valid RE2 syntax.
        """
        try:
            compiled = re2.compile(expression)
        except re2.error as exc:
            raise ConfigError(f"redaction pattern {expression!r} is not a valid RE2 "
                              f"expression: {exc}") from None
        group: int = compiled.groupindex.get("secret", 0)
        return cls(
            name=name or expression,
            apply=lambda s: compiled.sub(lambda m: _mask(m, group), s),
            hints=tuple(h.lower() for h in hints),
        )


def _mask(m: Any, group: int) -> str:
    """The replacement for match ``m``: its group number ``group`` (the ``secret`` group;
    0 when there is none) redacted, or all of it."""
    text: str = m.group(0)
    if not group or m.group(group) is None:
        return REDACTED
    start, end = m.span(group)
    base = m.start()
    return text[: start - base] + REDACTED + text[end - base:]


def _stdlib(name: str, expression: str, hints: tuple[str, ...]) -> Pattern:
    """A built-in pattern on Python's ``re`` (ASCII semantics: case-folding stays ASCII, so
    the ASCII ``hints`` are exact)."""
    compiled = re.compile(expression, re.ASCII)
    group = compiled.groupindex.get("secret", 0)
    return Pattern(name=name, apply=lambda s: compiled.sub(lambda m: _mask(m, group), s),
                   hints=hints)


# --------------------------------------------------------------------------- names

_STRONG: Final = ("secret", "token", "passw", "credential", "apikey", "privkey",
                  "privatekey", "accesskey")
_COMPONENTS: Final = frozenset({"key", "pass", "pwd", "pw", "auth"})
_STRICT_SUFFIXES: Final = ("password", "passwd", "passphrase", "token", "secret", "apikey",
                           "credential", "credentials")
_STRICT_FLAGS: Final = frozenset({"pass", "passin", "passout", "pw", "pwd"})
_CAMEL = re.compile(r"([a-z0-9])([A-Z])", re.ASCII)
_SEPARATORS = re.compile(r"[_.\-\s]+", re.ASCII)
_CACHEABLE = 128  # names longer than this are judged but not cached (hostile input)


def _components(name: str) -> list[str]:
    return [c for c in _SEPARATORS.split(_CAMEL.sub(r"\1 \2", name).lower()) if c]


# A NAME ending like a file name is a location (``coi-credential-access.yml:17``, a rule's
# file and line in verdict evidence), not a variable holding a secret.
_FILE_SUFFIXES: Final = (".yml", ".yaml", ".json", ".toml", ".py", ".sh", ".md", ".txt",
                         ".cfg", ".ini", ".conf", ".js", ".ts", ".go", ".rs", ".jsonl")


@lru_cache(maxsize=4096)
def _secret_name_cached(name: str) -> bool:
    low = name.lower()
    if low.endswith(_FILE_SUFFIXES):
        return False
    if any(w in low for w in _STRONG):
        return True
    parts = _components(name)
    if parts == ["pwd"]:  # the shell's working directory, in every environment dump
        return False
    return any(p in _COMPONENTS for p in parts)


def is_secret_name(name: str) -> bool:
    """Whether ``NAME`` in ``NAME=value`` names a secret (see the module docstring)."""
    if len(name) > _CACHEABLE:
        return _secret_name_cached.__wrapped__(name)
    return _secret_name_cached(name)


def _joined(name: str) -> str:
    return _SEPARATORS.sub("", name.lstrip("-").lower())


def is_secret_flag(flag: str) -> bool:
    """Whether the command-line flag ``flag`` (``--api-key``) takes a secret as its value."""
    joined = _joined(flag)
    return joined.endswith(_STRICT_SUFFIXES) or joined in _STRICT_FLAGS


def is_secret_key(key: str) -> bool:
    """Whether a mapping key (``password``, ``client_secret``, ``apiKey``) holds a secret.

    Stricter than :func:`is_secret_name` so that no field of coi-watch's own records
    (``dedup_key``, ``event_kind``) ever qualifies.
    """
    if len(key) > _CACHEABLE:
        return _joined(key).endswith(_STRICT_SUFFIXES)
    return _secret_key_cached(key)


@lru_cache(maxsize=4096)
def _secret_key_cached(key: str) -> bool:
    return _joined(key).endswith(_STRICT_SUFFIXES)


# --------------------------------------------------------------------------- assignments

# A candidate ``NAME=`` / ``NAME: `` / ``"NAME": ``. The look-behind lets a candidate start
# only where a run of name characters starts, and the run is taken possessively, so the
# scan is linear; whether NAME is a secret is then decided in Python.
_NAME_SEP = re.compile(r"(?<![A-Za-z0-9_.\-])(?P<name>[A-Za-z0-9_.\-]++)[\"']?+[ \t]*+[=:]"
                       r"[ \t]*+", re.ASCII)
_VALUE = re.compile(r"\"[^\"\n]*+\"?+|'[^'\n]*+'?+|[^\s&;'\"]++", re.ASCII)
# A candidate ``--flag value`` inside a longer string (a joined command line).
_FLAG_SP = re.compile(r"(?<![A-Za-z0-9_.\-])(?P<name>--?[A-Za-z][A-Za-z0-9_.\-]*+)[ \t]++",
                      re.ASCII)
_WORD = re.compile(r"\"[^\"\n]*+\"?+|'[^'\n]*+'?+|\S++", re.ASCII)
_FLAG = re.compile(r"--?[A-Za-z][A-Za-z0-9_.\-]*+", re.ASCII)


def _mask_value(value: str) -> str:
    """``REDACTED``, inside the value's own quotes when it had a pair."""
    q = value[:1]
    if q in ('"', "'") and len(value) >= 2 and value.endswith(q):
        return q + REDACTED + q
    return REDACTED


def _value_scanner(candidate: re.Pattern[str], value: re.Pattern[str],
                   judge: Callable[[str], bool]) -> Callable[[str], str]:
    """Redact the value after every candidate whose name ``judge`` calls secret.

    A candidate that is not a secret consumes only its name and separator, so a secret
    nested in the rest (``url?a=1&token=x``, ``https://h/p?key=v``) is still found; values
    already redacted are skipped. Every character is scanned at most twice.
    """

    def apply(s: str) -> str:
        out: list[str] = []
        last = 0
        for m in candidate.finditer(s):
            if m.start() < last or not judge(m.group("name")):
                continue
            v = value.match(s, m.end())
            if v is None:
                continue
            out += (s[last:m.end()], _mask_value(v.group()))
            last = v.end()
        if not out:
            return s
        out.append(s[last:])
        return "".join(out)

    return apply


_NAME_HINTS: Final = ("secret", "token", "pass", "credential", "key", "pw", "auth")
_FLAG_HINTS: Final = ("pass", "token", "secret", "key", "credential", "pw")

DEFAULT_PATTERNS: Final[tuple[Pattern, ...]] = (
    # Whole header values: "Authorization: Basic dXNlcjpwYXNz", "Proxy-Authorization: ...".
    _stdlib("authorization-header",
            r"(?i)\b(?:proxy-)?authorization[ \t]*+:[ \t]*+(?P<secret>[^\r\n'\"]++)",
            ("authorization",)),
    _stdlib("bearer-token", r"(?i)\bbearer[ \t]++(?P<secret>[A-Za-z0-9._~+/=\-]++)",
            ("bearer",)),
    # PEM private keys, with or without their END line (argv may be cut by the cap).
    _stdlib("private-key-pem",
            r"-----BEGIN (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY-----(?P<secret>[^-]*+"
            r"(?:-(?!----END )[^-]*+)*+)(?:-----END [A-Z0-9 ]{0,60}-----)?+",
            ("private key",)),
    _stdlib("aws-access-key-id",
            r"(?<![A-Za-z0-9])(?:AKIA|ASIA)(?P<secret>[A-Z0-9]{16})(?![A-Za-z0-9])",
            ("akia", "asia")),
    _stdlib("github-token", r"(?<![A-Za-z0-9_])gh[pousr]_(?P<secret>[A-Za-z0-9]{20,255}+)",
            ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
    _stdlib("github-pat", r"(?<![A-Za-z0-9_])github_pat_(?P<secret>[A-Za-z0-9_]{20,}+)",
            ("github_pat_",)),
    _stdlib("gitlab-pat", r"(?<![A-Za-z0-9_\-])glpat-(?P<secret>[A-Za-z0-9_\-]{20,}+)",
            ("glpat-",)),
    _stdlib("slack-token", r"(?<![A-Za-z0-9_\-])xox[abposr]-(?P<secret>[A-Za-z0-9\-]{10,}+)",
            ("xox",)),
    # OpenAI and Anthropic API keys (sk-..., sk-proj-..., sk-ant-api03-...).
    _stdlib("sk-api-key", r"(?<![A-Za-z0-9_\-])sk-(?P<secret>[A-Za-z0-9_\-]{32,}+)",
            ("sk-",)),
    # https://user:password@host: keeps the user, drops the password.
    _stdlib("url-credentials",
            r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*+://[^/\s:@]*+:"
            r"(?P<secret>[^/\s@]++)@",
            ("://",)),
    # NAME=value, NAME: value, "NAME": "value", --name=value (AWS secret keys included).
    Pattern("secret-assignment", _value_scanner(_NAME_SEP, _VALUE, is_secret_name),
            _NAME_HINTS),
    # --password value inside one string (a joined command line).
    Pattern("secret-flag", _value_scanner(_FLAG_SP, _WORD, is_secret_flag), _FLAG_HINTS),
)
"""The built-in patterns, in the order they are applied."""


# --------------------------------------------------------------------------- redactor


class Redactor:
    """Applies patterns (and the argv and key rules) to record payloads.

    ``Redactor()`` and :meth:`default` use :data:`DEFAULT_PATTERNS`; ``Redactor(patterns=...)``
    uses exactly the given ones (a ``str`` is an RE2 expression, see :meth:`Pattern.regex`);
    :meth:`extended` adds to a redactor's list; :meth:`disabled` changes nothing.
    ``flag_values`` enables the argv rule, ``secret_keys`` the mapping-key rule.

    Raises:
        ConfigError: a pattern string is not a valid RE2 expression.
    """

    __slots__ = ("_bytes_hints", "_text_hints", "flag_values", "patterns", "secret_keys")

    def __init__(
        self,
        patterns: Iterable[Pattern | str] = DEFAULT_PATTERNS,
        *,
        flag_values: bool = True,
        secret_keys: bool = True,
    ) -> None:
        self.patterns: tuple[Pattern, ...] = tuple(
            p if isinstance(p, Pattern) else Pattern.regex(p) for p in patterns)
        self.flag_values = flag_values
        self.secret_keys = secret_keys
        hints: set[str] = set()
        if flag_values:
            hints.update(_FLAG_HINTS)
        if secret_keys:
            hints.update(_FLAG_HINTS)  # every strict key name contains one of these too
        always = False
        for p in self.patterns:
            always = always or not p.hints
            hints.update(p.hints)
        # None: some pattern has no hints, so every record and string must be looked at.
        # RE2's DFA finds any of ~25 literals in a payload in about 2 us, ignoring case.
        self._bytes_hints: Any = None
        if not always:
            options = re2.Options()
            options.case_sensitive = False
            self._bytes_hints = re2.compile(
                b"|".join(re.escape(h.encode()) for h in sorted(hints)), options)
        # One search of a lower-cased string for any pattern's hint rejects most strings
        # in well under a microsecond; a plain alternation of literals is linear.
        pattern_hints = sorted({h for p in self.patterns for h in p.hints})
        self._text_hints: re.Pattern[str] | None = (
            None if always or not pattern_hints
            else re.compile("|".join(map(re.escape, pattern_hints))))

    @classmethod
    def default(cls) -> Redactor:
        """The built-in patterns and rules."""
        return cls()

    @classmethod
    def disabled(cls) -> Redactor:
        """A redactor that changes nothing."""
        return cls((), flag_values=False, secret_keys=False)

    def extended(self, patterns: Iterable[Pattern | str]) -> Redactor:
        """A new redactor with ``patterns`` applied after this one's.

        Raises:
            ConfigError: a pattern string is not a valid RE2 expression.
        """
        return Redactor((*self.patterns, *patterns), flag_values=self.flag_values,
                        secret_keys=self.secret_keys)

    @property
    def active(self) -> bool:
        """False when this redactor can never change anything."""
        return bool(self.patterns) or self.flag_values or self.secret_keys

    def may_match(self, payload_json: bytes) -> bool:
        """Cheap test on a payload's JSON bytes: False means :meth:`redact` would change
        nothing, so the payload need not even be decoded."""
        if not self.active:
            return False
        if self._bytes_hints is None:
            return True
        return self._bytes_hints.search(payload_json) is not None

    def redact_text(self, text: str) -> str:
        """``text`` with every pattern applied."""
        if not self.patterns:
            return text
        low = text.lower()
        if self._text_hints is not None and self._text_hints.search(low) is None:
            return text
        for p in self.patterns:
            if p.hints and not any(h in low for h in p.hints):
                continue
            new = p.apply(text)
            if new != text:
                text, low = new, new.lower()
        return text

    def redact(self, obj: Any) -> Any:
        """``obj`` with every string inside redacted (dicts, lists and tuples are rebuilt,
        other values returned as they are)."""
        t = type(obj)
        if t is int or t is float or t is bool or obj is None:  # most leaves: done at once
            return obj
        if isinstance(obj, str):
            return self.redact_text(obj)
        if t is dict or isinstance(obj, Mapping):
            return {k: self._value_for_key(k, v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            items = self._redact_items(obj)
            return tuple(items) if isinstance(obj, tuple) else items
        return obj

    def redact_json(self, payload_json: bytes) -> bytes:
        """A payload's JSON bytes, redacted (the same bytes when nothing had to change)."""
        if not self.may_match(payload_json):
            return payload_json
        obj = orjson.loads(payload_json)
        new = self.redact(obj)
        return payload_json if new == obj else orjson.dumps(new)

    def _value_for_key(self, key: Any, value: Any) -> Any:
        if self.secret_keys and isinstance(value, str) and value and isinstance(key, str) \
                and is_secret_key(key):
            return REDACTED
        return self.redact(value)

    def _redact_items(self, items: Iterable[Any]) -> list[Any]:
        out: list[Any] = []
        secret_next = False
        for item in items:
            if secret_next and isinstance(item, str):
                out.append(REDACTED)
                secret_next = False
                continue
            secret_next = False
            if isinstance(item, str):
                # An argv element that is exactly a secret-named flag: its value is the next
                # element ("--password", "hunter2"); "--password=x" is a pattern's job.
                secret_next = (self.flag_values and _FLAG.fullmatch(item) is not None
                               and is_secret_flag(item))
            out.append(self.redact(item))
        return out
