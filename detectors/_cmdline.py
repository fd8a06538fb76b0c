"""Command-line text for detectors: normalising, shell lexing, program names.

Strategy: detectors judge what a process *means*, so attacker-controlled text is first put in
a canonical form and then cut into shell structure; matching is done on that structure with
set lookups, never with a regex over the raw text.

- :func:`normalize` removes invisible (format / default-ignorable) characters and applies
  NFKC, so ``n<ZWSP>c`` and fullwidth ``nc`` (U+FF4E U+FF43) read as ``nc``. NFKC is not
  cosmetic here: Python folds identifiers with NFKC (PEP 3131), so ``import socket`` spelt
  in fullwidth letters really imports ``socket``.
- :func:`parse_script` cuts a ``sh -c`` script into simple commands (words still quoted,
  redirections, pipeline number, here-document bodies) and keeps only the commands the
  caller's ``keep`` predicate asks for, plus any command with a ``/dev/...`` redirection or
  a here-document, so an uninteresting command costs one dictionary lookup.

Linear time on hostile input (a 1 MiB argv): the lexer regexes never backtrack. Every
alternative is chosen by its first character (``<``/``>`` or fd digits for a redirection,
an operator character, a quote, a word character; digits that turn out not to precede a
redirection are read once more as a word) and every repetition is possessive (``*+``,
``++``; Python 3.11), so each character is examined a bounded number of times. Lexing is two
levels: ``re.findall`` cuts the script into simple-command texts and their operators in C,
and only a command text not seen before is lexed into words. The per-command Python work is
a dictionary lookup, and repeats are dropped (see :func:`parse_script`). Here-document bodies
are found with ``str.find`` and never lexed.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate, chain, groupby, repeat
from operator import itemgetter

__all__ = (
    "IGNORABLE_RANGES",
    "Command",
    "Script",
    "base_name",
    "cheap_unquote",
    "dq_substitutions",
    "is_assignment",
    "normalize",
    "parse_script",
    "prepare",
    "unquote",
)

# ----------------------------------------------------------------------------- normalising

IGNORABLE_RANGES: tuple[tuple[int, int], ...] = (
    # Unicode general category Cf (format) and Default_Ignorable_Code_Point (DerivedCoreProperties
    # .txt): zero-width space/joiners, bidi controls, soft hyphen, variation selectors, tags,
    # Hangul fillers. All render as nothing, so none can be part of an honest command word.
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x0600, 0x0605), (0x061C, 0x061C),
    (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891), (0x08E2, 0x08E2),
    (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F),
    (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFFB), (0x110BD, 0x110BD),
    (0x110CD, 0x110CD), (0x13430, 0x1343F), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
_DROP_IGNORABLE: dict[int, None] = {
    cp: None for lo, hi in IGNORABLE_RANGES for cp in range(lo, hi + 1)
}


def normalize(text: str) -> str:
    """``text`` without invisible characters, in NFKC form (ASCII passes through as is)."""
    if text.isascii():
        return text
    text = text.translate(_DROP_IGNORABLE)
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    return text


def base_name(path: str) -> str:
    """The last ``/`` component of ``path`` (``path`` itself when it has none)."""
    return path.rpartition("/")[2]


def is_assignment(word: str) -> bool:
    """True for a shell assignment word ``NAME=value`` (it precedes the command word)."""
    name, eq, _ = word.partition("=")
    return bool(eq) and name.isidentifier()


# ----------------------------------------------------------------------------- quoting

_QUOTE_CHARS = str.maketrans("", "", "'\"\\")

# One quoted or unquoted segment of a word. Groups: 1 '...', 2 "...", 3 \x, 4 $'...', 5 plain.
# Each alternative starts with a different character and repeats possessively: linear.
_SEGMENT = re.compile(
    r"'([^']*+)'?"
    r"|\"((?:[^\"\\]++|\\.)*+)\"?"
    r"|\\(.?)"
    r"|\$'((?:[^'\\]++|\\.)*+)'?"
    r"|([^'\"\\$]++|\$)",
    re.S,
)
_DQ_ESCAPE = re.compile(r"\\([$`\"\\\n])")  # the only escapes bash honours inside "..."


def cheap_unquote(word: str) -> str:
    """``word`` with every quote and backslash deleted: ``'n'c`` -> ``nc``.

    Right for command names and options, where quoting only hides letters; use
    :func:`unquote` where the text will be parsed again (``sh -c`` scripts, code).
    """
    if "'" in word or '"' in word or "\\" in word:
        return word.translate(_QUOTE_CHARS)
    return word


def _ansi_c(body: str) -> str:
    # $'...' strings: bash decodes \xHH, \NNN, \n ... (an easy way to spell "nc" as
    # $'\x6e\x63'). unicode_escape is linear; malformed escapes keep the raw text.
    try:
        return codecs.decode(body.encode("latin-1", "backslashreplace"), "unicode_escape")
    except (UnicodeDecodeError, ValueError):
        return body


def unquote(word: str) -> str:
    """Shell quote removal for one word (``'...'``, ``"..."``, ``\\x``, ``$'...'``)."""
    if "'" not in word and '"' not in word and "\\" not in word:
        return word
    out: list[str] = []
    for sq, dq, esc, ansi, plain in _SEGMENT.findall(word):
        if plain:
            out.append(plain)
        elif dq:
            out.append(_DQ_ESCAPE.sub(r"\1", dq) if "\\" in dq else dq)
        elif sq:
            out.append(sq)
        elif esc:
            out.append(esc)
        elif ansi:
            out.append(_ansi_c(ansi))
    return "".join(out)


def dq_substitutions(word: str) -> list[str]:
    """Bodies of ``"..."`` segments of ``word`` that hold ``$(`` or a backtick: the shell
    runs those (command substitution works inside double quotes), so they are scripts."""
    return [
        dq for _, dq, _, _, _ in _SEGMENT.findall(word) if dq and ("$(" in dq or "`" in dq)
    ]


# ----------------------------------------------------------------------------- lexing

# A redirection operator with the fd number in front of it (2>&1, 5<>, &>).
_REDIR_SRC = r"[0-9]*+(?:&>>|&>|<<<|<<-|<<|<>|<&|>&|>>|>\||<|>)"
# A word: unquoted run, '...', $'...', "...", \x, or a lone $ (not "$(" nor "$'").
_WORD_SRC = (
    r"(?:[^\s;&|()<>'\"\\`$]++"
    r"|'[^']*+'?"
    r"|\$'(?:[^'\\]++|\\.)*+'?"
    r"|\"(?:[^\"\\]++|\\.)*+\"?"
    r"|\\.?"
    r"|\$(?![('])"
    r")++"
)
# Control operators; "(" ")" "`" "$(" open and close subshells and substitutions.
_SEP_SRC = r";;|&&|\|\||\|&|\$\(|[;&|()`\n]"
# Level 1: a simple command's text (group 1) and the operator that ends it (group 2, empty
# at the end of the script). Every position of a script starts one of the alternatives, so
# each match makes progress and the text is covered exactly once.
_CHUNK = re.compile(
    r"((?:" + _REDIR_SRC + "|" + _WORD_SRC + r"|[ \t\r\f\v]++)*+)(" + _SEP_SRC + r"|\Z)", re.S
)
# Level 2, inside one command: its redirection operators and words (blanks skipped).
_TOKEN = re.compile(_REDIR_SRC + "|" + _WORD_SRC, re.S)

_PIPES = frozenset({"|", "|&"})
# Reserved words that come before a command word ("if nc ...", "! sh", "{ sh; }").
_PREFIX_WORDS = frozenset(
    {"{", "!", "if", "then", "do", "else", "elif", "while", "until", "time", "coproc"}
)
_DIGITS = "0123456789"
_SPECIAL = frozenset("<>&'\"\\$=`")  # a first word holding these needs the lexer


@dataclass(frozen=True, slots=True, eq=False)
class Command:
    """One simple command of a script, shared by every identical occurrence (so it is
    compared and hashed by identity).

    ``words`` keep their quotes (:func:`unquote` them where needed) and hold only the command
    word when the caller's ``keep`` did not ask for the command (it was recorded for a
    redirection); ``redirs`` are ``(operator, target)``, the target quoted as written;
    ``herestrings`` are ``<<<`` texts (unquoted); ``heredocs`` are ``(delimiter, strip_tabs)``
    of ``<<`` / ``<<-`` here-documents, whose bodies come with each occurrence; ``quoted``
    is false when no word needs :func:`unquote`.
    """

    words: tuple[str, ...]
    redirs: tuple[tuple[str, str], ...] = ()
    herestrings: tuple[str, ...] = ()
    heredocs: tuple[tuple[str, bool], ...] = ()
    kept: bool = False
    quoted: bool = True  # some word holds a quote or a backslash


@dataclass(frozen=True, slots=True)
class Script:
    """What :func:`parse_script` found.

    ``commands`` are ``(pipeline, command, heredoc bodies)`` in script order, for the commands
    worth a look only; commands joined by ``|`` share a pipeline number, and numbers never
    decrease. ``substitutions`` are ``$(...)``/backtick texts inside double quotes, which the
    shell runs too (unquoted ones are lexed in place).
    """

    commands: list[tuple[int, Command, tuple[str, ...]]]
    substitutions: list[str]


def prepare(script: str) -> str:
    """``script`` after line continuations and the empty or separator-only expansions that
    obfuscators slip between letters (idempotent; :func:`parse_script` applies it)."""
    # What the shell does before it splits words, or what only adds letters to hide them:
    # backslash-newline is a line continuation; unquoted $IFS expands to a separator
    # (Sigma's "nc$IFS-e" variants); "$@" expands to nothing in a -c script.
    if "\\\n" in script:
        script = script.replace("\\\n", "")
    if "$" in script:
        for hider, repl in (("${IFS}", " "), ("$IFS", " "), ("${@}", ""), ("$@", "")):
            if hider in script:
                script = script.replace(hider, repl)
    return script


def _heredoc_end(script: str, start: int, delim: str, strip_tabs: bool) -> tuple[int, int]:
    """``(body_end, resume)`` for a here-document body from ``start``: the body ends before
    the line that equals ``delim`` (after leading tabs for ``<<-``); ``resume`` is just after
    that line. An unterminated body runs to the end, as in bash. Linear: plain bodies need
    one ``str.find``; for ``<<-`` each candidate is a distinct ``delim`` followed by a
    newline and the tab runs scanned before distinct candidates are disjoint.
    """
    n = len(script)
    if not strip_tabs:
        line = f"\n{delim}\n"
        k = script.find(line, start - 1)  # start - 1: the newline that ended the command line
        if k >= 0:
            return k + 1, k + len(line)
        if script.endswith(line[:-1]) and n - len(line) >= start - 2:
            return n - len(delim), n
        return n, n
    k = script.find(f"{delim}\n", start)
    while k >= 0:
        j = k
        while j > start and script[j - 1] == "\t":
            j -= 1
        if j == start or script[j - 1] == "\n":
            return j, k + len(delim) + 1
        k = script.find(f"{delim}\n", k + 1)
    if script.endswith(delim):
        j = k = n - len(delim)
        while j > start and script[j - 1] == "\t":
            j -= 1
        if j >= start and (j == start or script[j - 1] == "\n"):
            return j, n
    return n, n


def _is_redirection(tok: str) -> bool:
    c = tok[0]
    return c in "<>" or (c in _DIGITS and tok.lstrip(_DIGITS)[:1] in ("<", ">", "&"))


def _command_word(body: str) -> str | None:
    """The command word of ``body`` (quotes deleted), after redirections, assignments and
    reserved words; ``None`` when there is none."""
    pending = False
    for tok in _TOKEN.findall(body):
        if _is_redirection(tok):
            pending = True
        elif pending:
            pending = False  # the redirection's target
        else:
            first = unquote(tok) if "$'" in tok else cheap_unquote(tok)
            if first not in _PREFIX_WORDS and not is_assignment(first):
                return first
    return None


def _command(body: str, keep: Callable[[str], bool], subs: list[str]) -> Command | None:
    """Lex one command's text; ``None`` when it is of no interest (see :func:`parse_script`)."""
    if "/dev/" not in body and "<<" not in body and not (
        '"' in body and ("$(" in body or "`" in body)
    ):
        # Nothing but the command word can make it interesting: decide on that first. A
        # plain first word needs no lexing at all (the common boring command).
        head = body.split(None, 1)
        if not head:
            return None
        word: str | None = head[0]
        if not _SPECIAL.isdisjoint(head[0]) or head[0][0] in _DIGITS or word in _PREFIX_WORDS:
            word = _command_word(body)
        if word is None or not keep(word):
            return None
    words: list[str] = []
    redirs: list[tuple[str, str]] = []
    herestrings: list[str] = []
    heredocs: list[tuple[str, bool]] = []
    started = record = False
    pending = ""  # a redirection operator waiting for its target word
    for tok in _TOKEN.findall(body):
        if _is_redirection(tok):
            pending = tok
            continue
        if '"' in tok and ("$(" in tok or "`" in tok):
            subs.extend(dq_substitutions(tok))
        if pending:
            op, pending = pending, ""
            if op.endswith("<<<"):
                herestrings.append(unquote(tok))
            elif op.endswith(("<<", "<<-")):
                heredocs.append((unquote(tok), op.endswith("-")))
            elif record or "/dev/" in cheap_unquote(tok):
                redirs.append((op, tok))
            continue
        if not started:
            first = unquote(tok) if "$'" in tok else cheap_unquote(tok)
            if first in _PREFIX_WORDS or is_assignment(first):
                continue
            started = True
            record = keep(first)
            words.append(tok)
        elif record:
            words.append(tok)
    if not (record or redirs or herestrings or heredocs):
        return None
    quoted = "'" in body or '"' in body or "\\" in body
    return Command(
        tuple(words), tuple(redirs), tuple(herestrings), tuple(heredocs), record, quoted
    )


_MISSING = Command(())


def parse_script(script: str, keep: Callable[[str], bool]) -> Script:
    """Cut ``script`` into simple commands; see :class:`Script` and the module docstring.

    ``keep`` gets each command's first word (after assignments and reserved words, quotes
    deleted) and says whether to record all its words. A command is also recorded, with its
    first word only, when it has a ``/dev/...`` redirection, a here-string or a here-document.
    Identical command texts are lexed once, and a pipeline made of the same commands as an
    earlier one is left out: every fact a command gives its script is idempotent, so the
    repeat adds nothing (the hostile "c; c; c; ..." costs one step per chunk, in C where
    ``groupby`` can drop a run).
    """
    script = prepare(script)
    if "<<" in script:
        return _parse_heredocs(script, keep)
    out: list[tuple[int, Command, tuple[str, ...]]] = []
    subs: list[str] = []
    cache: dict[str, Command | None] = {}
    seen: set[tuple[Command, ...]] = set()
    stages: list[Command] = []
    lookup, pipes, pipeline = cache.get, _PIPES, 0
    # Chunks with an empty text only repeat a boundary the chunk before them already made
    # ("a; ; b", "`a`"), or continue a pipeline over a newline as bash does ("a |\n b"):
    # drop them, then the runs of identical chunks, both in C.
    chunks = filter(itemgetter(0), _CHUNK.findall(script))
    for body, sep in [chunk for chunk, _ in groupby(chunks)]:
        cmd = lookup(body, _MISSING)
        if cmd is _MISSING:
            cmd = cache[body] = _command(body, keep, subs)
        if cmd is not None:
            stages.append(cmd)
        if sep not in pipes:
            if stages:
                key = tuple(stages)
                if key not in seen:
                    seen.add(key)
                    out.extend((pipeline, cmd, ()) for cmd in stages)
                stages = []
            pipeline += 1
    if stages and tuple(stages) not in seen:
        out.extend((pipeline, cmd, ()) for cmd in stages)
    return Script(out, subs)


def _parse_heredocs(script: str, keep: Callable[[str], bool]) -> Script:
    """:func:`parse_script` for a script with ``<<``: here-document bodies are skipped.

    Lex with findall and track positions; at the newline that ends a line with
    here-documents (and so its pipeline), find the bodies and skip the chunks inside them.
    The bodies are kept only when a stage of that pipeline may read them as code (a kept
    command). A body with an unbalanced quote makes a chunk straddle its end: from there on,
    match lazily (finditer) and restart after each set of bodies, so no text is lexed twice.
    """
    out: list[tuple[int, Command, tuple[str, ...]]] = []
    subs: list[str] = []
    cache: dict[str, Command | None] = {}
    seen: set[tuple[object, ...]] = set()
    stages: list[Command] = []
    has_docs = kept = False  # of the pipeline being read
    lookup, pipes, pipeline = cache.get, _PIPES, 0
    chunks = _CHUNK.findall(script)
    ends = list(accumulate(map(len, chain.from_iterable(chunks))))[1::2]
    source: Iterator[tuple[tuple[str, str], int]] = zip(chunks, ends, strict=True)
    lazy = False
    while True:
        resume = -1
        for (body, sep), end in source:
            if body:
                cmd = lookup(body, _MISSING)
                if cmd is _MISSING:
                    cmd = cache[body] = _command(body, keep, subs)
                if cmd is not None:
                    stages.append(cmd)
                    has_docs = has_docs or bool(cmd.heredocs)
                    kept = kept or cmd.kept
            if sep in pipes:
                continue
            docs: list[tuple[str, ...]] = []
            if has_docs and sep == "\n":
                resume = end
                for cmd in stages:
                    texts = []
                    for delim, tabs in cmd.heredocs:
                        k = -1 if tabs else script.find(f"\n{delim}\n", resume - 1)
                        if k >= 0:  # the common case, inline: a plain terminator line
                            body_end, after = k + 1, k + len(delim) + 2
                        else:
                            body_end, after = _heredoc_end(script, resume, delim, tabs)
                        if kept:  # else nothing in this pipeline reads code: bodies are data
                            texts.append(script[resume:body_end])
                        resume = after
                    docs.append(tuple(texts))
                if not kept:
                    docs = []
            has_docs = kept = False
            if stages:
                key = (*stages, *docs)  # a repeat, bodies and all, adds nothing
                if key not in seen:
                    seen.add(key)
                    if docs:
                        out.extend(zip(repeat(pipeline), stages, docs, strict=False))
                    else:
                        out.extend((pipeline, cmd, ()) for cmd in stages)
            stages = []
            pipeline += 1
            if resume < 0:
                continue
            if lazy:
                break  # restart the lazy matcher after the bodies
            while end < resume:  # skip the chunks lexed inside the bodies
                nxt = next(source, None)
                if nxt is None:
                    break
                end = nxt[1]
            if end != resume:
                break  # the bodies end inside a chunk: lex lazily from their end
            resume = -1
        if resume < 0 or resume >= len(script):
            break
        lazy = True
        source = (((m.group(1), m.group(2)), m.end()) for m in _CHUNK.finditer(script, resume))
    return Script(out, subs)
