"""Reverse-shell command lines: signal 3 of :mod:`coi_watch.detectors.reverse_shell`.

Strategy: judge what a command line *runs*, with set lookups over lexed shell structure,
never a regex over the raw text. The caller normalises the argv; :meth:`Matcher.argv`
resolves the program through wrappers (``env``, ``timeout``, ``busybox`` ...) by name
(:meth:`Matcher.lookup`: basename, login-shell dash, version suffix) and dispatches on its
kind. nc and socat are judged by their options, with the Go original's gates (``nc -c`` only
with a shell command for its value; socat only with both an exec and a network address).
Shells, ``su -c`` and ``eval`` recurse into their script (:meth:`Matcher.script`, at most
:data:`MAX_DEPTH` levels). Interpreters' inline code needs a network indicator *and* a way to
run commands. A script is cut into simple commands by
:func:`~coi_watch.detectors._cmdline.parse_script`; each distinct command is reduced once to
its :class:`_Facts`, and the pipeline families (a relay meeting a shell that reads stdin, a
fifo, ``/dev/tcp`` redirections, ``ztcp``) are decided when a pipeline ends. The families,
their evidence names and their gates are listed in the detector's module docstring.

Linear in the input and a pure function of it: a substring prefilter (:data:`_TRIGGERS`)
spares ordinary scripts the lexer, option walks read each distinct word once, and
:meth:`Matcher.judge` remembers short command lines. The result is a :class:`Hit`; the
detector reports the strongest (:data:`STRONG` > :data:`ONE_LINER` > :data:`IO`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from coi_watch.detectors._cmdline import (
    Command,
    base_name,
    cheap_unquote,
    parse_script,
    prepare,
    unquote,
)

__all__ = (
    "CODE_LANGS",
    "IO",
    "MAX_DEPTH",
    "ONE_LINER",
    "SOCAT_NET",
    "STRONG",
    "Hit",
    "Matcher",
    "clip",
    "host_of",
    "relay_remote",
)

MAX_DEPTH = 4
"""Nesting of ``sh -c`` / ``eval`` / substitutions followed (each level is linear)."""

_RELAYS: Mapping[str, str] = {
    "nc": "nc", "ncat": "nc", "netcat": "nc", "nc.traditional": "nc", "nc.openbsd": "nc",
    "socat": "socat", "telnet": "telnet", "openssl": "openssl",
}
# Wrappers run the command after them; the set lists their options that take a value, the
# int how many positionals come before the command (timeout DURATION, chroot DIR).
_WRAPPERS: Mapping[str, tuple[frozenset[str], int]] = {
    "exec": (frozenset({"-a"}), 0),
    "command": (frozenset(), 0),
    "builtin": (frozenset(), 0),
    "nohup": (frozenset(), 0),
    "setsid": (frozenset(), 0),
    "env": (frozenset({"-u", "--unset", "-C", "--chdir"}), 0),
    "nice": (frozenset({"-n", "--adjustment"}), 0),
    "ionice": (frozenset({"-c", "-n", "-p", "--class", "--classdata"}), 0),
    "timeout": (frozenset({"-s", "--signal", "-k", "--kill-after"}), 1),
    "stdbuf": (frozenset({"-i", "-o", "-e"}), 0),
    "sudo": (frozenset({"-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U", "-T", "-R"}), 0),
    "doas": (frozenset({"-u", "-C"}), 0),
    "chroot": (frozenset(), 1),
    "time": (frozenset({"-f", "-o"}), 0),
    "unbuffer": (frozenset(), 0),
    "busybox": (frozenset(), 0),
}
_OTHER_KINDS: Mapping[str, str] = {
    "eval": "eval", "su": "runner", "runuser": "runner", "script": "runner",
    "mkfifo": "fifo", "mknod": "mknod", "ztcp": "ztcp",
}
CODE_LANGS = frozenset({"python", "perl", "ruby", "php", "lua", "node", "awk"})
_COMPOUND_ENDS = frozenset({"done", "fi", "esac", "}", ")"})
_LOOPBACK = frozenset(
    {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", "::1", "[::1]",
     "0.0.0.0", "0", "::", "[::]"}
)

# Signal 3 one-liners: (network indicators, command-execution indicators), lower case.
_NET: Mapping[str, tuple[str, ...]] = {
    "python": ("socket", "open_connection", "create_connection", "telnetlib"),
    "perl": ("socket", "sockaddr_in", "inet_aton"),
    "ruby": ("socket",),
    "php": ("fsockopen", "socket_create", "socket_connect", "stream_socket_client"),
    "lua": ("socket", ":connect("),
    "node": ("net.socket", "net.connect", "createconnection", "require('net')",
             'require("net")', "require(`net`)", "node:net"),
    "awk": ("/inet/", "/inet4/", "/inet6/"),
}
_SPAWN: Mapping[str, tuple[str, ...]] = {
    "python": ("pty.", "import pty", ",pty", "pty,", "subprocess", "dup2", "system(",
               "popen", "exec", "spawn", "call(", "/bin/"),
    "perl": ("exec", "system", "open(stdin", "open stdin", "fdopen", "popen", "`", "/bin/"),
    "ruby": ("exec", "system", "spawn", "popen", "`", "%x", "/bin/"),
    "php": ("exec", "system", "passthru", "popen", "proc_open", "`", "/bin/"),
    "lua": ("execute", "popen", "/bin/"),
    "node": ("child_process", "spawn", "exec", "/bin/"),
    "awk": ("getline", "system(", "/bin/"),
}
_PYTHON_PTY = ("pty.", "import pty", ",pty", "pty,")
_FAMILY: Mapping[str, str] = {
    "python": "python-socket", "perl": "perl-socket", "ruby": "ruby-socket",
    "php": "php-socket", "lua": "lua-socket", "node": "node-net", "awk": "gawk-inet",
}
# Options that hold inline code, and options whose value is glued on or is the next word.
_CODE_OPTS: Mapping[str, frozenset[str]] = {
    "python": frozenset("c"), "perl": frozenset("eE"), "ruby": frozenset("e"),
    "php": frozenset("rBRE"), "lua": frozenset("e"),
}
_VALUE_OPTS: Mapping[str, frozenset[str]] = {
    "python": frozenset("WXQ"), "perl": frozenset("0lCDdFIiMmVx"),
    "ruby": frozenset("0CEFIKTWxr"), "php": frozenset("cdfz"), "lua": frozenset("l"),
}
_MODULE_OPTS: Mapping[str, str] = {"perl": "M", "ruby": "r", "lua": "l"}
_NODE_CODE = frozenset({"-e", "--eval", "-p", "--print"})
_NC_VALUE_OPTS = frozenset("gGiIMmOoPpqsTVwXxb")
_NC_EXEC_LONG = frozenset({"exec", "sh-exec", "lua-exec"})
_NCAT_LONG_VALUE = frozenset(
    {"source", "proxy", "proxy-type", "proxy-auth", "proxy-dns", "wait", "idle-timeout",
     "delay", "output", "hex-dump", "append-output", "max-conns", "allow", "allowfile",
     "deny", "denyfile", "ssl-cert", "ssl-key", "ssl-trustfile", "ssl-ciphers",
     "ssl-servername", "ssl-alpn"}
)
_SOCAT_EXEC = frozenset({"exec", "system", "shell"})
SOCAT_NET = frozenset(
    f"{proto}{v}{suffix}"
    for proto in ("tcp", "udp", "sctp", "dccp", "ip")
    for v in ("", "4", "6")
    for suffix in ("", "-connect", "-listen", "-l", "-sendto", "-datagram", "-recvfrom",
                   "-recv")
) | {"openssl", "openssl-connect", "openssl-listen", "ssl", "ssl-l", "socks", "socks4",
     "socks4a", "socks5", "socks5-connect", "socks5-listen", "proxy", "proxy-connect",
     "vsock-connect", "vsock-listen"}

# Prefilter: a script that holds none of these (quotes and case removed) cannot hit, so the
# common `cd x && make` costs a few C-speed substring scans and no lexing.
_TRIGGERS: tuple[str, ...] = (
    "nc", "netcat", "socat", "telnet", "openssl", "/dev/", "ztcp", "python", "pypy", "perl",
    "ruby", "php", "lua", "node", "bun", "awk",
)

STRONG, ONE_LINER, IO = 3, 2, 1
_EVIDENCE_CHARS = 512  # evidence strings are clipped to this many characters
_MEMO_CHARS, _MEMO_ENTRIES = 4096, 4096  # command lines remembered: length and count caps


# ----------------------------------------------------------------------------- hits


@dataclass(frozen=True, slots=True)
class Hit:
    """One finding: a family, the program behind it and how strong it is."""

    family: str
    program: str  # the program that makes or carries the connection (nc, socat, python ...)
    strength: int  # STRONG, ONE_LINER or IO
    lang: str = "sh"  # what the attacker gets to run, for the MITRE sub-technique
    remote: str = ""  # peer host where the command line names it
    detail: tuple[tuple[str, str], ...] = ()
    tls: bool = False


@dataclass(frozen=True, slots=True)
class _Facts:
    """What one command of a script contributes (see ``Matcher._facts``)."""

    inert: bool  # contributes nothing (a kept command that is harmless here)
    hit: Hit | None  # its own argv, and here-strings into it when it reads code from stdin
    name: str  # resolved program name and kind ("" when none)
    kind: str
    first: str  # its first word, unquoted (exec, done ...)
    reader: str  # language of the code it reads from stdin, "" when none
    relay: tuple[str, str, str] | None  # (kind, name, remote) of nc/telnet/openssl/socat
    fifo: bool
    ztcp: bool
    fd_dup: bool  # a descriptor duplication (>&5, >&$REPLY)
    devs: tuple[tuple[str, str], ...]  # (operator, target) of /dev/tcp|udp redirections
    herestrings: tuple[str, ...]  # here-strings that are data (it does not read code)


def _best(a: Hit | None, b: Hit | None) -> Hit | None:
    if a is None:
        return b
    if b is None:
        return a
    return b if b.strength > a.strength else a


def clip(text: str, limit: int = _EVIDENCE_CHARS) -> str:
    """``text`` cut to ``limit`` characters for evidence, saying how many were left out."""
    return text if len(text) <= limit else f"{text[:limit]}...(+{len(text) - limit} chars)"


def host_of(endpoint: str) -> str:
    """``1.2.3.4:4444`` -> ``1.2.3.4``, ``[::1]:80`` -> ``[::1]``."""
    return endpoint.rpartition(":")[0] if ":" in endpoint else endpoint


def _is_loopback(host: str) -> bool:
    host = host.lower()
    return host in _LOOPBACK or host.startswith(("127.", "[::ffff:127.", "::ffff:127."))


def _positionals(args: Sequence[str]) -> Iterator[str]:
    """Non-option arguments of nc (lazily), skipping the values of its options: a cluster
    ending in a value option (``-lvnp 4444``, ``-e /bin/sh``) or a long option without
    ``=`` that takes one (``--sh-exec CMD``)."""
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a[:2] == "--":
            key, eq, _ = a[2:].partition("=")
            skip = not eq and (key in _NCAT_LONG_VALUE or key in _NC_EXEC_LONG)
        elif a[:1] == "-" and len(a) > 1:
            skip = a[-1] in _NC_VALUE_OPTS or a[-1] in "ec"
        else:
            yield a


# ----------------------------------------------------------------------------- matching


class Matcher:
    """Signal 3 (and the command-line part of signal 2), over normalised words."""

    def __init__(self, shells: Iterable[str], interpreters: Mapping[str, str]) -> None:
        kinds: dict[str, str] = {}
        kinds.update((name, "wrapper") for name in _WRAPPERS)
        kinds["busybox"] = "busybox"
        kinds.update(_OTHER_KINDS)
        kinds.update(_RELAYS)
        kinds.update((name, lang or "interp") for name, lang in interpreters.items())
        kinds.update((name, "shell") for name in shells)
        self.kinds = kinds
        self._cache: dict[str, tuple[str, str]] = {}
        self._memo: dict[tuple[tuple[str, ...], bool], Hit | None] = {}

    # -- names

    def lookup(self, word: str) -> tuple[str, str]:
        """``(canonical name, kind)`` of a command word; kind ``""`` when unknown.

        ``/usr/bin/Python3.11`` -> ``("python", "python")``; ``-bash`` (a login shell) ->
        ``("bash", "shell")``; versions are stripped only when the exact name is unknown.
        """
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        name = base_name(word).partition(" (deleted)")[0].lstrip("-").lower()
        kind = self.kinds.get(name)
        if kind is None:
            short = name.rstrip("0123456789.-")
            kind = self.kinds.get(short)
            if kind is not None:
                name = short
        found = (name, kind or "")
        if len(word) <= 256:
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[word] = found
        return found

    def keep(self, first: str) -> bool:
        """Whether a script's command word is worth recording (see ``parse_script``)."""
        return bool(self.lookup(first)[1])

    def resolve(self, words: Sequence[str]) -> tuple[int, str, str] | None:
        """``(index, name, kind)`` of the program ``words`` really runs, through wrappers
        (``env X=1 timeout 5 busybox nc`` -> nc); ``None`` when there is none."""
        i, n = 0, len(words)
        for _ in range(8):
            if i >= n:
                return None
            name, kind = self.lookup(words[i])
            if kind != "wrapper" and kind != "busybox":
                return i, name, kind
            value_opts, skip = _WRAPPERS[name] if kind == "wrapper" else (frozenset(), 0)
            i += 1
            while i < n:
                w = words[i]
                if w == "--":
                    i += 1
                    break
                if w.startswith("-") and len(w) > 1:
                    i += 2 if w in value_opts else 1
                elif "=" in w and name == "env":
                    i += 1
                elif skip > 0:
                    skip -= 1
                    i += 1
                else:
                    break
        return None

    # -- argv and scripts

    def argv(self, words: Sequence[str], depth: int, lossy: bool = False) -> Hit | None:
        """Judge one command (kernel argv, or the unquoted words of a script command).

        ``lossy``: ``words`` are an ancestor's space-joined cmdline split again, so the
        quoting is gone and a ``-c`` script or code runs to the end of the line.
        """
        found = self.resolve(words)
        if found is None:
            return None
        i, name, kind = found
        args = words[i + 1 :]
        if kind == "nc":
            return self._nc(name, args)
        if kind == "socat":
            return self._socat(args)
        if kind == "shell":
            return self.script(_shell_script(args, lossy), depth + 1)
        if kind == "runner":
            return self.script(_runner_script(args, lossy), depth + 1)
        if kind == "eval":
            return self.script(" ".join(args), depth + 1)
        if kind in CODE_LANGS:
            return self._code(kind, name, args, lossy)
        return None

    def judge(self, argv: tuple[str, ...], lossy: bool = False) -> Hit | None:
        """:meth:`argv` at the top level, remembered for short command lines: agents run the
        same few commands over and over (a pure function of the argv, so replay-safe)."""
        if sum(map(len, argv)) > _MEMO_CHARS:
            return self.argv(argv, 0, lossy)
        key = (argv, lossy)
        memo = self._memo
        if key in memo:
            return memo[key]
        if len(memo) >= _MEMO_ENTRIES:
            memo.clear()
        hit = memo[key] = self.argv(argv, 0, lossy)
        return hit

    def may_hit(self, text: str) -> bool:
        """Cheap prefilter: can ``text`` hold anything :meth:`script` reports?"""
        if "$'" in text:  # ANSI-C quoting can spell any name ($'\x6e\x63' is nc)
            return True
        low = cheap_unquote(text).lower()
        return any(t in low for t in _TRIGGERS)

    def script(self, text: str, depth: int) -> Hit | None:
        """Judge a shell script (``sh -c`` text, ``eval`` words, a here-document)."""
        if depth > MAX_DEPTH or not text:
            return None
        text = prepare(text)
        if not self.may_hit(text):
            return None
        parsed = parse_script(text, self.keep)
        memo: dict[int, _Facts] = {}  # identical commands share one Command: judge it once
        best: Hit | None = None
        fifo = ztcp = fd_dup = False
        met: list[tuple[tuple[str, str, str], str]] = []  # (relay, reader language) in a pipe
        # The pipeline being read: its relay, the language of a stage reading stdin, its
        # /dev/tcp redirections and the stdin texts of its other stages.
        cur, relay, reader = -1, None, ""
        devs: list[tuple[str, str, str, str]] = []
        data: list[str] = []
        get = memo.get
        for pipeline, cmd, heredocs in parsed.commands:
            if pipeline != cur:
                if devs or (reader and (relay or data)):
                    best = _best(best, self._pipe_end(relay, reader, devs, data, met, depth))
                    devs, data = [], []
                cur, relay, reader = pipeline, None, ""
            f = get(id(cmd))
            if f is None:
                f = memo[id(cmd)] = self._facts(cmd, depth)
            if f.inert and not heredocs:
                continue
            if f.hit is not None:
                best = _best(best, f.hit)
                if best is not None and best.strength == STRONG:
                    return best
            fifo, ztcp, fd_dup = fifo or f.fifo, ztcp or f.ztcp, fd_dup or f.fd_dup
            relay = relay or f.relay
            if f.reader:
                reader = reader or f.reader
                for body in heredocs:
                    best = _best(best, self._stdin_code(f.reader, f.name, body, depth))
            else:
                data.extend(f.herestrings)
                data.extend(heredocs)
            if f.devs:
                devs.extend((op, target, f.name or f.first, f.kind) for op, target in f.devs)
        if devs or (reader and (relay or data)):
            best = _best(best, self._pipe_end(relay, reader, devs, data, met, depth))
        for (kind, program, remote), lang in met:
            family = f"mkfifo-{kind}" if fifo else f"{kind}-pipe"
            best = _best(best, Hit(family, program, STRONG, lang, remote,
                                    tls=kind == "openssl"))
        if ztcp and fd_dup:
            best = _best(best, Hit("zsh-ztcp", "zsh", STRONG))
        if best is None or best.strength < STRONG:
            for sub in parsed.substitutions:
                best = _best(best, self.script(sub, depth + 1))
        return best

    def _facts(self, cmd: Command, depth: int) -> _Facts:
        """What one command contributes to its script (computed once per command text)."""
        words = [unquote(w) for w in cmd.words] if cmd.quoted else list(cmd.words)
        found = self.resolve(words) if words else None
        name, kind = (found[1], found[2]) if found else ("", "")
        args = words[found[0] + 1 :] if found else []
        hit = self.argv(words, depth) if cmd.kept and words else None
        reader = ""
        if (kind == "shell" or kind in CODE_LANGS) and _reads_stdin(kind, args):
            reader = "sh" if kind == "shell" else kind
            for body in cmd.herestrings:
                hit = _best(hit, self._stdin_code(reader, name, body, depth))
        relay = None
        if kind in ("nc", "telnet", "socat") or (
            kind == "openssl" and ("s_client" in args or "s_server" in args)
        ):
            relay = (kind, name, relay_remote(kind, args))
        devs = []
        fd_dup = False
        for op, target in cmd.redirs:
            t = unquote(target)
            fd_dup = fd_dup or op.endswith("&") or "$reply" in t.lower()
            if t.startswith(("/dev/tcp/", "/dev/udp/")):
                devs.append((op, t))
        fifo = kind == "fifo" or (kind == "mknod" and "p" in args)
        return _Facts(
            inert=not (hit or reader or relay or fifo or kind == "ztcp" or fd_dup or devs
                       or cmd.herestrings),
            hit=hit,
            name=name,
            kind=kind,
            first=words[0] if words else "",
            reader=reader,
            relay=relay,
            fifo=fifo,
            ztcp=kind == "ztcp",
            fd_dup=fd_dup,
            devs=tuple(devs),
            herestrings=() if reader else cmd.herestrings,
        )

    def _pipe_end(
        self,
        relay: tuple[str, str, str] | None,
        reader: str,
        devs: list[tuple[str, str, str, str]],
        data: list[str],
        met: list[tuple[tuple[str, str, str], str]],
        depth: int,
    ) -> Hit | None:
        """Judge a finished pipeline: /dev/tcp redirections (strong when a stage reads code
        from stdin), stdin texts fed to such a stage, and a relay meeting a reader."""
        best: Hit | None = None
        for op, target, first, kind in devs:
            best = _best(best, _dev_socket(op, target, first, kind, bool(reader)))
        if reader:
            if relay is not None:
                met.append((relay, reader))
            for body in data:
                best = _best(best, self._stdin_code(reader, reader, body, depth))
        return best

    def _stdin_code(self, lang: str, name: str, body: str, depth: int) -> Hit | None:
        if lang == "sh":
            return self.script(body, depth + 1)
        return self._judge_code(lang, name, body, False)

    # -- families

    def _nc(self, name: str, args: Sequence[str]) -> Hit | None:
        """``nc-exec``: an exec option (Falco's list) anywhere among the options.

        Each distinct option word is read once (a hostile argv repeats them); getopt
        clusters count up to their first option that takes a value (``-lvnpe`` is not
        ``-e`` after ``-p``), a ``-c`` only with a shell command for its value.
        """
        opt = target = ""
        for a in dict.fromkeys(args):  # distinct words, in order (deterministic evidence)
            if a[:1] != "-" or a == "-":
                continue
            if a.startswith("--"):
                key, eq, val = a[2:].partition("=")
                if key in _NC_EXEC_LONG:
                    opt, target = "--" + key, val if eq else _after(args, a)
                    break
                continue
            cluster = a[1:]
            for k, ch in enumerate(cluster):
                if ch == "e" or ch == "c":
                    glued = cluster[k + 1 :]
                    values = [glued] if glued else _all_after(args, a)
                    if ch == "e":
                        opt, target = "-e", values[0] if values else ""
                    else:
                        opt, target = "-c", next(
                            (v for v in dict.fromkeys(values) if self._is_shell_command(v)), ""
                        )
                        opt = opt if target else ""
                    break
                if ch in _NC_VALUE_OPTS:
                    break
            if opt:
                break
        if not opt:
            return None
        return Hit("nc-exec", name, STRONG, remote=relay_remote("nc", args),
                    detail=(("option", opt), ("target", clip(target or "?", 256))))

    def _is_shell_command(self, text: str) -> bool:
        head = text.split(None, 1)
        if not head:
            return False
        kind = self.lookup(head[0])[1]
        return kind == "shell" or kind in CODE_LANGS or kind == "interp" or "/bin/" in text

    def _socat(self, args: Sequence[str]) -> Hit | None:
        exec_addr = net_addr = ""
        for a in args:
            if a.startswith("-") and a != "-":
                continue
            head = a.lstrip("'\"").split(":", 1)[0].split(",", 1)[0].lower()
            if head in _SOCAT_EXEC:
                exec_addr = exec_addr or a
            elif head in SOCAT_NET:
                net_addr = net_addr or a
        if not (exec_addr and net_addr):
            return None
        parts = net_addr.split(":")
        host = parts[1] if len(parts) > 2 else ""
        return Hit("socat-exec", "socat", STRONG, remote=host.split(",")[0],
                    detail=(("exec", clip(exec_addr, 256)), ("network", clip(net_addr, 256))),
                    tls=net_addr.lower().lstrip("'\"").startswith(("openssl", "ssl")))

    def _code(self, lang: str, name: str, args: Sequence[str], lossy: bool) -> Hit | None:
        code, modules = _inline_code(lang, args, lossy)
        module_net = any("socket" in m.lower() or m.lower() == "io" for m in modules)
        if code is None:
            return None
        return self._judge_code(lang, name, code, module_net)

    def _judge_code(self, lang: str, name: str, code: str, module_net: bool) -> Hit | None:
        low = code.lower()
        if not (module_net or any(x in low for x in _NET[lang])):
            return None
        if not any(x in low for x in _SPAWN[lang]):
            return None
        family = _FAMILY[lang]
        if lang == "python" and any(x in low for x in _PYTHON_PTY):
            family = "python-pty"
        return Hit(family, name, ONE_LINER, lang, detail=(("code", clip(code, 256)),))


def _after(args: Sequence[str], word: str) -> str:
    """The argument after the first ``word`` (an option's value), or ``""``."""
    i = list(args).index(word) + 1
    return args[i] if i < len(args) else ""


def _all_after(args: Sequence[str], word: str) -> list[str]:
    """The arguments after every occurrence of ``word``."""
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == word]


def _shell_script(args: Sequence[str], lossy: bool) -> str:
    """The ``-c`` script of a shell's arguments, or ``""`` (a script file, or stdin).

    Like bash, the script is the first argument after the options, wherever ``c`` appeared
    among them (``bash -c -l 'x'``, ``sh -ec 'x'``, ``bash -o pipefail -c 'x'``).
    """
    has_c = False
    j, n = 0, len(args)
    while j < n:
        a = args[j]
        if a == "--":
            j += 1
            break
        if a[:1] not in ("-", "+") or len(a) == 1:
            break
        j += 1
        if a in ("-o", "+o", "-O", "+O", "--rcfile", "--init-file"):
            j += 1  # these take the next argument as their value
        elif a[:2] not in ("--", "++"):
            has_c = has_c or "c" in a[1:]
    if not has_c or j >= n:
        return ""
    return " ".join(args[j:]) if lossy else args[j]


def _runner_script(args: Sequence[str], lossy: bool) -> str:
    """``su -c CMD`` / ``runuser -c CMD`` / ``script -c CMD``."""
    for j, a in enumerate(args):
        if a in ("-c", "--command") and j + 1 < len(args):
            return " ".join(args[j + 1 :]) if lossy else args[j + 1]
        if a.startswith("--command="):
            return a[len("--command=") :]
    return ""


def _inline_code(lang: str, args: Sequence[str], lossy: bool) -> tuple[str | None, list[str]]:
    """``(inline code or None, modules loaded by option)`` of an interpreter's arguments."""
    if lang == "awk":
        return " ".join(args), []
    if lang == "node":
        for j, a in enumerate(args):
            key, eq, val = a.partition("=")
            if key in _NODE_CODE:
                if eq:
                    return val, []
                if j + 1 < len(args):
                    return (" ".join(args[j + 1 :]) if lossy else args[j + 1]), []
            elif not a.startswith("-"):
                break
        return None, []
    code_opts, value_opts = _CODE_OPTS[lang], _VALUE_OPTS[lang]
    module_opt = _MODULE_OPTS.get(lang, "")
    codes: list[str] = []
    modules: list[str] = []
    j, n = 0, len(args)
    while j < n:
        a = args[j]
        j += 1
        if a == "--" or not a.startswith("-") or a == "-":
            break  # a script file, or stdin: code given inline ends here
        if a.startswith("--"):
            continue
        cluster = a[1:]
        for k, ch in enumerate(cluster):
            glued = cluster[k + 1 :]
            if ch in code_opts:
                if glued:
                    codes.append(glued)
                elif j < n:
                    codes.append(" ".join(args[j:]) if lossy else args[j])
                    j += 1
                break
            if ch == module_opt or ch in value_opts:
                val = glued
                if not glued and j < n and ch in "MIlr":
                    val, j = args[j], j + 1
                if ch == module_opt:
                    modules.append(val)
                break
            if lang == "python" and ch == "m":
                return None, modules  # python -m MODULE: no inline code
    if not codes:
        return ("" if modules else None), modules
    return "\n".join(codes), modules


def _reads_stdin(kind: str, args: Sequence[str]) -> bool:
    """Whether a shell or interpreter takes its commands from stdin (no ``-c``/``-e`` code,
    no script file): the stage of a pipeline that executes what a relay receives."""
    for a in args:
        if a in ("-", "-s", "--"):
            return True
        if not a.startswith("-"):
            return False
        if a.startswith("--"):
            if kind == "node" and a.partition("=")[0] in _NODE_CODE:
                return False
            continue
        cluster = a[1:]
        if kind == "shell" and "c" in cluster:
            return False
        if kind in _CODE_OPTS and any(ch in _CODE_OPTS[kind] for ch in cluster):
            return False
        if kind == "node" and a in _NODE_CODE:
            return False
        if kind == "python" and "m" in cluster:
            return False
    return kind != "awk"  # awk's program is its first argument, never stdin


def relay_remote(kind: str, args: Sequence[str]) -> str:
    """The peer host a relay's arguments name (nc, socat, ``openssl -connect``), or ``""``."""
    if kind == "openssl":
        for j, a in enumerate(args):
            if a == "-connect" and j + 1 < len(args):
                return host_of(args[j + 1])
        return ""
    if kind == "socat":
        for a in args:
            parts = a.split(":")
            if len(parts) > 2 and parts[0].lower() in SOCAT_NET:
                return parts[1]
        return ""
    # nc HOST PORT: the first positional that is not a port (values of -p/-s/-w ... are
    # skipped by the getopt walk in _positionals).
    return next((p for p in _positionals(args) if not p.isdigit()), "")


def _dev_socket(op: str, target: str, first: str, kind: str, fed: bool) -> Hit | None:
    """Go's gate for ``/dev/tcp``: a redirection target to a non-loopback host; strong when
    it gives a shell or a lasting descriptor a socket (see the module docstring)."""
    if not target.startswith(("/dev/tcp/", "/dev/udp/")):
        return None
    parts = target.split("/")
    host = parts[3] if len(parts) > 3 else ""
    if _is_loopback(host):
        return None
    proto = parts[2]
    strong = (
        "<>" in op
        or kind == "shell"
        or kind in CODE_LANGS
        or kind == "interp"
        or first == "exec"
        or first in _COMPOUND_ENDS
        or fed
    )
    family = f"dev-{proto}" if strong else f"dev-{proto}-io"
    return Hit(family, first or "sh", STRONG if strong else IO, remote=host,
                detail=(("redirection", clip(f"{op}{target}", 256)),))
