"""The credentials detector: sweeps (attack and benign sessions), other processes' environ,
path classification, windows, exemptions, config, bounds and hostile input."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coi_watch.detectors import credentials as mod
from coi_watch.detectors.credentials import CredentialAccess, classify_path
from coi_watch.errors import ConfigError
from coi_watch.events import Event, FileAccess, ProcExec, ProcExit
from coi_watch.protocols import Detector
from coi_watch.verdicts import Severity, Verdict

C = "coi-test-1"
S = 1_000_000_000
_MIB = 1 << 20


def ex(*argv: str, t: float = 1.0, pid: int = 100, cwd: str = "/workspace",
       comm: str | None = None, exe: str | None = None, container: str = C) -> ProcExec:
    base = argv[0].rpartition("/")[2]
    ts = int(t * S)
    return ProcExec(ts_ns=ts, wall_ns=ts, container=container, pid=pid, ppid=1, uid=1001000,
                    comm=(comm if comm is not None else base)[:15],
                    exe=exe if exe is not None else f"/usr/bin/{base}", argv=argv, cwd=cwd)


def fa(path: str, comm: str = "cat", *, t: float = 1.0, pid: int = 200, op: str = "open",
       container: str = C) -> FileAccess:
    ts = int(t * S)
    return FileAccess(ts_ns=ts, wall_ns=ts, container=container, pid=pid, op=op, path=path,
                      comm=comm)


def run(det: CredentialAccess, events: Iterable[Event]) -> list[Verdict]:
    out: list[Verdict] = []
    for ev in events:
        out.extend(det.feed(ev, ev.ts_ns))
    return out


def signals(verdicts: Sequence[Verdict]) -> list[tuple[str, Severity]]:
    return [(v.evidence["signal"], v.severity) for v in verdicts]


# ----------------------------------------------------------------------------- contract


def test_is_a_detector() -> None:
    det = CredentialAccess()
    assert isinstance(det, Detector)
    assert det.name == "credentials"
    assert det.consumes == frozenset({"proc.exec", "file.access"})
    assert run(det, [ProcExit(ts_ns=1, wall_ns=1, container=C, pid=1)]) == []


# ----------------------------------------------------------------------------- attacks

SCAN = [("scan", Severity.HIGH)]

ATTACKS: dict[str, tuple[list[Event], list[tuple[str, Severity]]]] = {
    "one cat of three secrets": (
        [ex("cat", "/root/.aws/credentials", "/root/.netrc", "/root/.ssh/id_rsa")], SCAN),
    "a shell script: env, aws, key": (
        [ex("sh", "-c", "env; cat ~/.aws/credentials && cat ~/.ssh/id_ed25519")], SCAN),
    "file events by a reader": (
        [fa("/root/.aws/credentials", t=1), fa("/root/.docker/config.json", t=2),
         fa("/home/code/.kube/config", t=3)], SCAN),
    "tar of credential directories": (
        [ex("tar", "czf", "-", "/root/.ssh", "/root/.aws", "/root/.kube")], SCAN),
    "find keys, then read them": (
        [ex("find", "/", "-name", "id_rsa", t=1),
         fa("/home/a/.ssh/id_rsa", t=2),
         fa("/root/.git-credentials", comm="python3", t=3)], SCAN),
    ".env files outside the workspace": (
        [fa("/srv/app/.env", t=1), fa("/opt/svc/.env.production", t=2),
         fa("/home/code/old/.env", t=3)], SCAN),
    "python one-liner naming secrets": (
        [ex("python3", "-c", "import pathlib;[print(pathlib.Path(p).expanduser().read_text())"
            " for p in ('~/.aws/credentials','~/.config/gcloud/credentials.db',"
            "'~/.azure/msal_token_cache.json')]")], SCAN),
    "environ of pid 1": ([fa("/proc/1/environ", comm="python3", pid=300)],
                         [("environ", Severity.HIGH)]),
    "environ through a task directory": (
        [fa("/proc/1/task/1/environ", comm="sh", pid=300)], [("environ", Severity.HIGH)]),
    "ps e reads every environ: one verdict": (
        [fa(f"/proc/{n}/environ", comm="ps", pid=400, t=1 + n / 100) for n in range(1, 40)],
        [("environ", Severity.HIGH)]),
    "xargs on environ, shadow, key search": (
        [ex("sh", "-c", "xargs -0 -L1 < /proc/1/environ", t=1),
         fa("/etc/shadow", comm="cat", t=2),
         ex("grep", "-r", "AKIA", "/", t=3)], SCAN),
    "sudo -u git is not git": (
        [ex("sudo", "-u", "git", "cat", "/root/.ssh/id_rsa", "/root/.npmrc", "/root/.pypirc")],
        SCAN),
    "fullwidth and zero-width spelling": (
        [ex("cat", "\uff5e/.\uff41\uff57\uff53/credentials", "~/.s\u200bsh/id_rsa",
            "~/.net\u200drc")], SCAN),
    "spread over a minute": (
        [ex("cat", "/root/.aws/credentials", t=1), ex("cat", "/root/.kube/config", t=30),
         ex("cat", "/root/.docker/config.json", t=59)], SCAN),
    "nested shells": (
        [ex("bash", "-c", "sh -c 'cat ~/.netrc; env'; cat /root/.pypirc")], SCAN),
    "environ of a pid chosen in a loop": (
        [ex("bash", "-c", "for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ; done; "
            "printenv; cat ~/.git-credentials")], SCAN),
}


@pytest.mark.parametrize("name", ATTACKS)
def test_attack(name: str) -> None:
    events, expected = ATTACKS[name]
    verdicts = run(CredentialAccess(), events)
    assert signals(verdicts) == expected, [v.evidence for v in verdicts]
    for v in verdicts:
        orjson.dumps(v)  # JSON-native evidence
        assert v.detector == "credentials" and v.container == C


def test_scan_verdict_fields() -> None:
    [v] = run(CredentialAccess(), ATTACKS["one cat of three secrets"][0])
    assert v.dedup_key == f"credentials:{C}:scan"
    assert v.evidence["count"] == 3 and v.evidence["threshold"] == 3
    assert v.evidence["kinds"] == ["aws", "netrc", "ssh-key"]
    assert {s["what"] for s in v.evidence["sources"]} == {
        "/root/.aws/credentials", "/root/.netrc", "/root/.ssh/id_rsa"}
    assert v.mitre == ("T1552.001", "T1552.004")
    assert v.event_kind == "proc.exec" and v.pid == 100


def test_environ_verdict_fields() -> None:
    [v] = run(CredentialAccess(), [fa("/proc/1/environ", comm="python3", pid=300)])
    assert v.dedup_key == f"credentials:{C}:environ"
    assert v.evidence == {"signal": "environ", "path": "/proc/1/environ", "target_pid": "1",
                          "pid": 300, "comm": "python3", "op": "open"}


# ----------------------------------------------------------------------------- benign

BENIGN_SESSION: list[Event] = [
    ex("sh", "-c", "set -eu; env; make -j8", t=1),              # env once in a build script
    ex("printenv", "PATH", t=2),
    ex("python3", "-c", 'import os; print(os.environ.get("HOME"))', t=3),
    fa("/workspace/.env", comm="python3", t=4),                  # dotenv
    fa("/workspace/web/.env.local", comm="node", t=4.1),
    ex("cat", ".env", t=4.2, cwd="/workspace/api"),
    ex("cp", ".env.example", ".env", t=4.3),
    ex("ssh", "-i", "~/.ssh/id_ed25519", "git@host", t=5),
    fa("/home/code/.ssh/id_ed25519", comm="ssh", t=5.1),
    ex("git", "push", "origin", "main", t=6),
    fa("/home/code/.git-credentials", comm="git", t=6.1),
    fa("/home/code/.git-credentials", comm="git-credential-store", t=6.2),
    fa("/home/code/.pypirc", comm="pip", t=7),
    fa("/home/code/.netrc", comm="pip3", t=7.1),
    fa("/home/code/.npmrc", comm="npm", t=8),
    fa("/home/code/.aws/credentials", comm="aws", t=9),
    fa("/home/code/.kube/config", comm="kubectl", t=9.1),
    fa("/home/code/.docker/config.json", comm="docker", t=9.2),
    ex("ls", "-la", "/home/code/.ssh", "/home/code/.aws", t=10),
    ex("chmod", "600", "/home/code/.ssh/id_ed25519", t=10.1),
    ex("ssh-keygen", "-t", "ed25519", "-f", "/home/code/.ssh/id_ed25519", t=10.2),
    ex("rsync", "-e", "ssh -i ~/.ssh/deploy", "dist/", "host:/srv", t=10.3),
    ex("git", "-c", "core.sshCommand=ssh -i ~/.ssh/deploy", "fetch", t=10.4),
    ex("/usr/bin/env", "python3", "manage.py", "runserver", t=11),
    ex("env", "FOO=1", "make", "test", t=11.1),
    ex("grep", "-rn", "token", "src/", t=12),
    ex("cat", "/home/code/.ssh/id_ed25519.pub", "/home/code/.ssh/known_hosts", t=13),
    ex("sh", "-c", "echo 'export AWS_PROFILE=dev' >> ~/.bashrc", t=14),
    fa("", comm="cat", t=15),                                    # procfs file not nameable
    fa("/proc/200/environ", comm="cat", pid=200, t=16),          # its own environ
    fa("/proc/self/environ", comm="cat", t=16.1),
    fa("/home/code/.aws/credentials", comm="cat", op="close_write", t=17),  # a write
    ex("bash", "-lc", "source ~/.nvm/nvm.sh && nvm use 20", t=18),
]


def test_benign_session_is_quiet() -> None:
    assert run(CredentialAccess(), BENIGN_SESSION) == []


def test_benign_session_plus_one_honest_read_is_quiet() -> None:
    # A boto3 script (comm python3, not the aws CLI) reads the AWS file once: one source,
    # with the env dump of the build script two: still under the threshold.
    events = [*BENIGN_SESSION, fa("/home/code/.aws/credentials", comm="python3", t=19)]
    assert run(CredentialAccess(), events) == []


# ----------------------------------------------------------------------------- classification


@pytest.mark.parametrize(("path", "expected"), [
    ("/root/.ssh/id_rsa", ("ssh-key", "/root", ".ssh/id_rsa")),
    ("/home/a/.ssh/deploy_key", ("ssh-key", "/home/a", ".ssh/deploy_key")),
    ("/root/.ssh/id_rsa.pub", None),
    ("/root/.ssh/known_hosts", None),
    ("/root/.ssh/authorized_keys", None),
    ("/root/.ssh/config", None),
    ("/root/.ssh", None),
    ("~/.aws/credentials", ("aws", "~", ".aws")),
    ("$HOME/.aws/sso/cache/abc.json", ("aws", "~", ".aws")),
    ("/root/.aws/config", None),
    ("/home/a/.config/gcloud/application_default_credentials.json",
     ("gcloud", "/home/a", ".config/gcloud")),
    ("/home/a/.config/gcloud/access_tokens.db", ("gcloud", "/home/a", ".config/gcloud")),
    ("/home/a/.config/gcloud/configurations/config_default", None),
    ("/root/.azure/msal_token_cache.json", ("azure", "/root", ".azure")),
    ("/root/.azure/azureProfile.json", None),
    ("/root/.kube/config", ("kube", "/root", ".kube/config")),
    ("/root/.docker/config.json", ("docker", "/root", ".docker/config.json")),
    ("${HOME}/.netrc", ("netrc", "~", ".netrc")),
    ("/root/.git-credentials", ("git-credentials", "/root", ".git-credentials")),
    ("/root/.config/git/credentials", ("git-credentials", "/root", ".git-credentials")),
    ("/root/.npmrc", ("npmrc", "/root", ".npmrc")),
    ("/root/.pypirc", ("pypirc", "/root", ".pypirc")),
    ("/etc/shadow", ("shadow", "", "/etc/shadow")),
    ("/etc/gshadow-", ("shadow", "", "/etc/gshadow")),
    ("/etc/passwd", None),
    ("/srv/app/.env", ("dotenv", "/srv/app", ".env")),
    ("/srv/app/.env.local", ("dotenv", "/srv/app", ".env.local")),
    ("/srv/app/.env.example", None),
    ("/srv/app/.envrc", None),
    ("/workspace/src/main.py", None),
    ("", None),
])
def test_classify_path(path: str, expected: tuple[str, str, str] | None) -> None:
    assert classify_path(path) == expected


def test_classify_relative_paths_and_directories() -> None:
    assert classify_path(".aws/credentials", cwd="/root") == ("aws", "/root", ".aws")
    assert classify_path(".env", cwd="/srv") == ("dotenv", "/srv", ".env")
    assert classify_path(".env") == ("dotenv", "~", ".env")
    assert classify_path("~/.ssh", dirs=True) == ("ssh-key", "~", ".ssh/")
    assert classify_path("/root/.kube", dirs=True) == ("kube", "/root", ".kube/config")
    assert classify_path("/root/.config/gcloud", dirs=True) == ("gcloud", "/root",
                                                                 ".config/gcloud")


# ----------------------------------------------------------------------------- windows and state


def test_the_window_expires_and_rearms() -> None:
    det = CredentialAccess()
    spread = [ex("cat", "/root/.aws/credentials", t=1), ex("cat", "/root/.kube/config", t=40),
              ex("cat", "/root/.docker/config.json", t=80)]
    assert run(det, spread) == []  # never three within 60 s
    burst = [ex("cat", "/root/.netrc", t=81), ex("cat", "/root/.npmrc", t=82)]
    assert signals(run(det, burst)) == SCAN  # docker + netrc + npmrc
    assert run(det, [ex("cat", "/root/.pypirc", t=83)]) == []  # same sweep: no repeat
    later = [ex("cat", "/root/.aws/credentials", t=200), ex("cat", "/root/.netrc", t=201),
             ex("cat", "/root/.pypirc", t=202)]
    assert signals(run(det, later)) == SCAN  # the window emptied: re-armed


def test_tilde_and_absolute_name_one_file() -> None:
    # The command line says ~, the file event says /root: the same source, not two.
    det = CredentialAccess({"sources_threshold": 2})
    assert run(det, [ex("cat", "~/.aws/credentials", pid=7), fa("/root/.aws/credentials",
                                                                pid=7)]) == []
    assert run(det, [fa("/root/.aws/credentials", pid=8), ex("cat", "$HOME/.aws/credentials",
                                                             pid=8)]) == []
    assert signals(run(det, [fa("/root/.netrc")])) == [("scan", Severity.HIGH)]


def test_one_tool_counts_once() -> None:
    det = CredentialAccess()
    gcloud = [fa(f"/root/.config/gcloud/{n}", comm="python3") for n in
              ("credentials.db", "access_tokens.db", "application_default_credentials.json")]
    assert run(det, gcloud) == []


def test_environ_verdict_at_most_once_per_window() -> None:
    det = CredentialAccess()
    first = run(det, [fa("/proc/1/environ", t=1, pid=9), fa("/proc/2/environ", t=30, pid=9)])
    assert signals(first) == [("environ", Severity.HIGH)]
    assert signals(run(det, [fa("/proc/1/environ", t=62, pid=9)])) == [
        ("environ", Severity.HIGH)]


def test_containers_are_separate() -> None:
    det = CredentialAccess()
    events = [ex("cat", "/root/.aws/credentials", container="a"),
              ex("cat", "/root/.netrc", container="b"),
              ex("cat", "/root/.npmrc", container="a")]
    assert run(det, events) == []
    assert signals(run(det, [ex("cat", "/root/.pypirc", container="a")])) == SCAN


def test_sources_and_containers_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mod, "MAX_CONTAINERS", 8)
    det = CredentialAccess()
    for i in range(5000):
        det.feed(fa(f"/home/u{i}/.ssh/id_rsa", t=1 + i / 1000), S + i)
    box = det._boxes[C]
    assert len(box.sources) == mod.MAX_SOURCES
    assert sum(len(h) for h in box.homes.values()) == mod.MAX_SOURCES
    for i in range(100):
        det.feed(fa("/root/.netrc", container=f"c{i}"), S)
    assert len(det._boxes) == 8


# ----------------------------------------------------------------------------- config


def test_config_levels_threshold_and_allow() -> None:
    three = ATTACKS["one cat of three secrets"][0]
    assert signals(run(CredentialAccess({"scan_level": "critical"}), three)) == [
        ("scan", Severity.CRITICAL)]
    assert run(CredentialAccess({"scan_level": "off"}), three) == []
    assert run(CredentialAccess({"sources_threshold": 4}), three) == []
    assert run(CredentialAccess({"allow_programs": ["cat"]}), three) == []
    environ = [fa("/proc/1/environ")]
    assert run(CredentialAccess({"environ_level": "off"}), environ) == []
    assert signals(run(CredentialAccess({"environ_level": "warning"}), environ)) == [
        ("environ", Severity.WARNING)]
    assert run(CredentialAccess({"allow_programs": ["cat"]}), environ) == []
    short = CredentialAccess({"window_s": 5})
    assert run(short, ATTACKS["spread over a minute"][0]) == []
    assert run(CredentialAccess({"mode": "monitor"}), []) == []


def test_workspace_dirs() -> None:
    envs = [fa("/srv/a/.env"), fa("/srv/b/.env"), fa("/srv/c/.env")]
    assert signals(run(CredentialAccess(), envs)) == SCAN
    assert run(CredentialAccess({"workspace_dirs": ["/srv"]}), envs) == []
    assert run(CredentialAccess({"workspace_dirs": ["/"]}), envs) == []


@pytest.mark.parametrize(("config", "key"), [
    ({"windows_s": 60}, "windows_s"),
    ({"window_s": 0}, "window_s"),
    ({"window_s": float("nan")}, "window_s"),
    ({"window_s": True}, "window_s"),
    ({"sources_threshold": 0}, "sources_threshold"),
    ({"sources_threshold": 2.5}, "sources_threshold"),
    ({"sources_threshold": 10_000}, "sources_threshold"),
    ({"scan_level": "loud"}, "scan_level"),
    ({"environ_level": 3}, "environ_level"),
    ({"workspace_dirs": "/workspace"}, "workspace_dirs"),
    ({"workspace_dirs": ["workspace"]}, "workspace_dirs"),
    ({"allow_programs": [""]}, "allow_programs"),
])
def test_config_errors_name_the_key(config: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        CredentialAccess(config)


# ----------------------------------------------------------------------------- hostile input

_TAIL = ("/root/.aws/credentials", "/root/.netrc", "/root/.ssh/id_rsa")
_PADDING: dict[str, Callable[[int], list[str]]] = {
    "one long word": lambda n: ["x" * n],
    "many short args": lambda n: ["-v"] * (n // 3),
    "distinct workspace .env": lambda n: [f"/workspace/p{i}/.env" for i in range(n // 22)],
    "distinct exempt keys": lambda n: [f"/home/u/.ssh/id_{i}.pub" for i in range(n // 24)],
    "environ tokens": lambda n: [f"/proc/{i}/environ" for i in range(n // 20)],
    "separators": lambda n: ["=:;()" * (n // 5)],
    "deep path": lambda n: ["/a" * (n // 2)],
    "zero-width": lambda n: ["\u200b.env" * (n // 5)],
}


@pytest.mark.parametrize("name", _PADDING)
def test_one_mib_argv_is_fast_and_the_sweep_still_found(name: str) -> None:
    argv = ["cat", *_PADDING[name](_MIB), *_TAIL]
    start = time.process_time()
    verdicts = run(CredentialAccess(), [ex(*argv)])
    elapsed = time.process_time() - start
    assert signals(verdicts) == SCAN
    assert elapsed < 0.5, f"{elapsed:.3f}s"


@pytest.mark.parametrize("unit", ["set; ", "cat ~/.ssh/k; ", "'", '"$(', "a|", "x=1 "])
def test_one_mib_script_is_fast(unit: str) -> None:
    script = unit * (_MIB // len(unit)) + "; cat " + " ".join(_TAIL)
    start = time.process_time()
    verdicts = run(CredentialAccess(), [ex("sh", "-c", script)])
    elapsed = time.process_time() - start
    assert elapsed < 0.5, f"{elapsed:.3f}s"
    if unit != "'":  # an unclosed quote swallows the rest: the shell would not run it
        assert signals(verdicts) == SCAN


def test_a_script_under_the_parse_cap_with_distinct_commands_is_fast() -> None:
    script = "".join(f"cat ~/.ssh/k{i}.pub; " for i in range(mod.PARSE_CAP // 22))
    start = time.process_time()
    assert run(CredentialAccess(), [ex("sh", "-c", script)]) == []
    assert time.process_time() - start < 0.5


_PIECES = [*"ab ~/.-_;|&<>()`$'\"\\\n=*", "\u200b", "\uff41", ".ssh/", ".aws/credentials",
           "/proc/1/environ", ".env", "env", "set", "export -p", "sh -c ", "AKIA",
           "grep -r ", "find / -name id_rsa", "/etc/shadow", ".netrc"]
_WORDS = st.lists(st.sampled_from(_PIECES), max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(_WORDS, min_size=1, max_size=6), st.sampled_from(["", "/", "/root", "x"]))
def test_random_input_never_raises(argv: list[str], cwd: str) -> None:
    det = CredentialAccess({"sources_threshold": 1})
    for ev in (ex(*argv, cwd=cwd), ex("sh", "-c", " ".join(argv), cwd=cwd),
               fa(argv[0]), fa("/" + argv[-1], op="close_nowrite")):
        for v in det.feed(ev, ev.ts_ns):
            orjson.dumps(v)


@pytest.mark.parametrize("wrapper", [["sudo"], ["env"], ["env", "-u", "X"], ["timeout", "5"],
                                     ["xargs", "-n", "1"]])
def test_one_mib_of_wrappers_is_linear(wrapper: list[str]) -> None:
    argv = wrapper * (_MIB // (len(" ".join(wrapper)) + 1)) + ["cat", *_TAIL]
    start = time.process_time()
    verdicts = run(CredentialAccess(), [ex(*argv)])
    assert time.process_time() - start < 0.5
    assert signals(verdicts) == SCAN
