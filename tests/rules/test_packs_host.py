"""The host threat-class packs (coi-credential-access.yml, coi-persistence.yml) through the
real loader and engine: exact rule, severity and action per attack, silence on the honest
neighbours, no overlap with the starter packs, and linear time on hostile command lines."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from coi_watch.events import Event, FileAccess, ProcExec
from coi_watch.rules.engine import RuleEngine, RuleSet
from coi_watch.rules.lint import lint_paths
from coi_watch.rules.load import load_rules
from coi_watch.rules.testing import run_tests
from coi_watch.verdicts import Severity

ROOT = Path(__file__).resolve().parents[2]
PACKS = ROOT / "rules" / "packs"
CREDENTIALS = PACKS / "coi-credential-access.yml"
PERSISTENCE = PACKS / "coi-persistence.yml"
DATA = Path(__file__).parent / "data" / "packs"

PRIVATE_KEY = "13a71dbf-40cb-4ae1-bddc-72ed8c2d4924"
SHADOW_READ = "f0d66c3c-4d50-4030-8f4a-2faec81a4dc6"
KEY_SEARCH = "6c4dfb3c-7069-49c6-a8f4-8fd9fcf2918a"
SECRET_WORDS = "982fbd55-4544-4553-b12d-90b5e05134ea"
ENV_DUMP = "06cc1adf-1c3f-4e2d-aa33-3fcda0d13fab"
OTHER_ENVIRON = "a66dd0ee-9094-4045-805d-41378a170abf"
SUDOERS = "3f6f143b-7fe1-494d-83ed-fbd4eb6a4f0e"
CRON = "a7c089c1-8fb6-4ea3-b0f3-9a6c15acaf69"
UNIT = "dbb07b4a-82ac-4c79-8244-8aa850ba6a65"
USER_RC = "ed82d653-e66d-4922-9767-2df2d89e1cd5"
SYSTEM_RC = "3c95b4ab-047b-477e-abcf-13717325cf32"
PRELOAD = "e8981f48-369c-4017-8478-a82c5455991d"
OURS = {PRIVATE_KEY, SHADOW_READ, KEY_SEARCH, SECRET_WORDS, ENV_DUMP, OTHER_ENVIRON, SUDOERS,
        CRON, UNIT, USER_RC, SYSTEM_RC, PRELOAD}

H, W, X = Severity.HIGH, Severity.WARNING, Severity.CRITICAL


def ex(*argv: str, exe: str | None = None) -> ProcExec:
    base = argv[0].rpartition("/")[2]
    return ProcExec(ts_ns=1, wall_ns=1, container="c", pid=10, ppid=1, uid=1001000,
                    comm=base[:15], exe=exe or f"/usr/bin/{base}", argv=argv,
                    cwd="/workspace")


def fa(path: str, comm: str, op: str = "open") -> FileAccess:
    return FileAccess(ts_ns=1, wall_ns=1, container="c", pid=11, op=op, path=path, comm=comm)


@pytest.fixture(scope="module")
def engine() -> RuleEngine:
    result = load_rules([CREDENTIALS, PERSISTENCE], include_packs=False)
    assert result.diagnostics == ()
    assert {r.id for r in result.rules} == OURS
    return RuleEngine(ruleset=RuleSet.from_load(result))


def fired(engine: RuleEngine, ev: Event) -> list[tuple[str, Severity, str]]:
    return [(v.evidence["rule"], v.severity, v.action) for v in engine.feed(ev, 1)]


ATTACKS: list[tuple[Event, tuple[str, Severity, str]]] = [
    (fa("/root/.ssh/id_rsa", "cat"), (PRIVATE_KEY, H, "pause")),
    (fa("/home/a/.ssh/id_ecdsa", "base64"), (PRIVATE_KEY, H, "pause")),
    (fa("/home/a/.ssh/github_deploy", "python3"), (PRIVATE_KEY, H, "pause")),
    (fa("/etc/shadow", "cat"), (SHADOW_READ, H, "pause")),
    (fa("/etc/gshadow-", "tar"), (SHADOW_READ, H, "pause")),
    (ex("grep", "-rE", "AKIA[0-9A-Z]{16}", "/home"), (KEY_SEARCH, H, "pause")),
    (ex("grep", "-r", "BEGIN OPENSSH PRIVATE KEY", "/"), (KEY_SEARCH, H, "pause")),
    (ex("ag", "aws_session_token", "/root"), (KEY_SEARCH, H, "pause")),
    (ex("find", "/home", "-name", "id_*"), (KEY_SEARCH, H, "pause")),
    (ex("find", "/", "-path", "*/.aws/credentials"), (KEY_SEARCH, H, "pause")),
    (ex("grep", "-Rni", "secret", "/etc"), (SECRET_WORDS, W, "alert")),
    (ex("ugrep", "-i", "passwd", "$HOME"), (SECRET_WORDS, W, "alert")),
    (ex("printenv", "-0"), (ENV_DUMP, W, "alert")),
    (ex("env", "-u", "HOME"), (ENV_DUMP, W, "alert")),
    (ex("bash", "-c", "export -p > /tmp/e"), (ENV_DUMP, W, "alert")),
    (ex("sh", "-c", "declare -px"), (ENV_DUMP, W, "alert")),
    (ex("python3", "-c", "import os,json;print(json.dumps(dict(os.environ)))"),
     (ENV_DUMP, W, "alert")),
    (ex("perl", "-e", 'print "$_=$ENV{$_}\\n" for keys %ENV'), (ENV_DUMP, W, "alert")),
    (ex("ruby", "-e", "puts ENV.to_h"), (ENV_DUMP, W, "alert")),
    (ex("sh", "-c", "xargs -0 < /proc/1/environ"), (OTHER_ENVIRON, H, "pause")),
    (ex("bash", "-c", "while read -d '' v; do echo $v; done < /proc/$PPID/environ"),
     (OTHER_ENVIRON, H, "pause")),
    (ex("node", "-e", "fs.readFileSync('/proc/1/environ')"), (OTHER_ENVIRON, H, "pause")),
    (fa("/etc/sudoers", "python3", "close_write"), (SUDOERS, X, "kill")),
    (fa("/etc/sudoers.tmp", "visudo", "close_write"), (SUDOERS, X, "kill")),
    (fa("/etc/sudoers.d/zz", "tee", "close_write"), (SUDOERS, X, "kill")),
    (fa("/etc/cron.hourly/x", "cp", "close_write"), (CRON, H, "pause")),
    (fa("/var/spool/cron/atjobs/a0001", "at", "close_write"), (CRON, H, "pause")),
    (fa("/etc/anacrontab", "sed", "close_write"), (CRON, H, "pause")),
    (fa("/etc/systemd/system/multi-user.target.wants/x.service", "cp", "close_write"),
     (UNIT, H, "pause")),
    (fa("/etc/systemd/system/ssh.service.d/override.conf", "systemctl", "close_write"),
     (UNIT, H, "pause")),
    (fa("/root/.zshrc", "sh", "close_write"), (USER_RC, H, "alert")),
    (fa("/home/code/.bash_profile", "python3", "close_write"), (USER_RC, H, "alert")),
    (fa("/etc/environment", "tee", "close_write"), (SYSTEM_RC, H, "pause")),
    (fa("/etc/zsh/zshrc", "sed", "close_write"), (SYSTEM_RC, H, "pause")),
    (fa("/etc/ld.so.preload", "echo", "close_write"), (PRELOAD, X, "kill")),
]


@pytest.mark.parametrize(("ev", "expected"), ATTACKS)
def test_attack(engine: RuleEngine, ev: Event, expected: tuple[str, Severity, str]) -> None:
    assert fired(engine, ev) == [expected]


BENIGN: list[Event] = [
    fa("/home/code/.ssh/id_ed25519", "ssh"),
    fa("/home/code/.ssh/id_ed25519", "git"),
    fa("/home/code/.ssh/id_ed25519", "ssh-add"),
    fa("/home/code/.ssh/id_ed25519", "ssh-keygen", "close_write"),
    fa("/home/code/.ssh/id_ed25519.pub", "cat"),
    fa("/home/code/.ssh/config", "python3"),
    fa("/home/code/.ssh/authorized_keys", "sshd"),
    fa("/home/code/.ssh", "ls"),
    fa("/etc/shadow", "sudo"),
    fa("/etc/shadow", "su"),
    fa("/etc/shadow", "useradd"),
    fa("/etc/shadow", "cat", "close_nowrite"),
    fa("/etc/passwd", "cat"),
    ex("grep", "-rn", "token", "src/"),
    ex("grep", "-r", "password", "."),
    ex("rg", "api_key", "/workspace"),
    ex("grep", "-r", "AkIa", "src"),  # AKIA is matched as written
    ex("find", ".", "-name", "*.py"),
    ex("git", "log", "-S", "AKIA"),
    ex("gitleaks", "detect", "--source", "."),
    ex("printenv", "PATH"),
    ex("printenv", "HOME", "USER"),
    ex("env", "FOO=1", "make"),
    ex("/usr/bin/env", "python3", "x.py"),
    ex("env", "-i", "PATH=/bin", "sh", "-c", "make"),
    ex("bash", "-c", "set -e; make"),
    ex("bash", "-c", "set -o pipefail && make | tee log"),
    ex("bash", "-c", "export PATH=$PATH:/opt/bin; make"),
    ex("bash", "-c", "declare -a arr=(1 2)"),
    ex("python3", "-c", 'import os; print(os.environ.get("HOME"))'),
    ex("python3", "-c", 'import os; print(os.environ["PATH"])'),
    ex("node", "-e", "console.log(process.env.HOME)"),
    ex("cat", "/proc/self/environ"),
    ex("cat", "/proc/cpuinfo"),
    ex("ps", "aux"),
    fa("/etc/sudoers", "sudo"),
    fa("/etc/sudoers.d/README.dpkg-new", "dpkg", "close_write"),
    fa("/etc/cron.d/sysstat.dpkg-new", "dpkg", "close_write"),
    fa("/etc/systemd/system/foo.service", "dpkg", "close_write"),
    fa("/etc/profile.d/x.sh.dpkg-new", "dpkg", "close_write"),
    fa("/home/code/.bashrc", "bash"),
    fa("/home/code/.bash_history", "bash", "close_write"),
    fa("/home/code/.bashrc.swp", "vim", "close_write"),
    fa("/workspace/.profile.md", "python3", "close_write"),
    fa("/etc/ld.so.cache", "ldconfig", "close_write"),
    fa("/etc/passwd", "useradd", "close_write"),  # the persistence detector's
]


@pytest.mark.parametrize("ev", BENIGN)
def test_benign(engine: RuleEngine, ev: Event) -> None:
    assert fired(engine, ev) == []


def test_verdict_shape(engine: RuleEngine) -> None:
    [v] = engine.feed(fa("/etc/sudoers", "python3", "close_write"), 1)
    assert v.detector == f"sigma:{SUDOERS}" and v.title == "Sudoers File Written"
    assert v.mitre == ("T1548.003",) and v.mode == "enforce"
    assert v.evidence["fields"] == {"TargetFilename": "/etc/sudoers", "Comm": "python3"}


def test_regression_tests_pass() -> None:
    report = run_tests([DATA])
    assert report.ok, report.render()
    assert [r.name for r in report.results] == ["coi-credential-access pack",
                                                "coi-persistence pack"]


def test_shipped_with_the_other_packs_without_overlap() -> None:
    assert lint_paths([], include_packs=True) == ()
    full = RuleEngine()
    ids = [r.id for r in full.ruleset.rules]
    assert set(ids) >= OURS and len(ids) == len(set(ids))

    def ids_of(ev: Event) -> set[str]:
        return {v.evidence["rule"] for v in full.feed(ev, 1)}

    # One act, one rule: the starter packs keep what they already cover.
    assert ids_of(ex("cat", "/proc/1/environ")) == {"36ef4b18-0d53-43be-b097-2709ceca02a4"}
    assert ids_of(ex("sh", "-c", "xargs -0 < /proc/1/environ")) == {OTHER_ENVIRON}
    assert ids_of(fa("/root/.ssh/authorized_keys", "sh", "close_write")) == {
        "1be172c5-5e82-4ac9-b353-b4ab0c042b0c"}
    assert ids_of(fa("/root/.aws/credentials", "python3")) == {
        "251fdebb-3dbf-47fe-b43f-6c52eca9fe1a"}


_MIB = 1 << 20


@pytest.mark.parametrize("unit", ["a", "/proc/", "$x/", "grep -r ", "set;", " -r ", "\u200b"])
def test_one_mib_command_line_is_linear(engine: RuleEngine, unit: str) -> None:
    pad = unit * (_MIB // len(unit))
    cases = [ex("sh", "-c", pad + " xargs -0 < /proc/1/environ"),
             ex("grep", "-r", pad, "AKIA", "/"),
             ex("env", pad)]
    start = time.process_time()
    results = [fired(engine, ev) for ev in cases]
    assert time.process_time() - start < 1.5  # three 1 MiB events
    assert (OTHER_ENVIRON, H, "pause") in results[0]  # ("set;" is an env dump as well)
    assert results[1] == [(KEY_SEARCH, H, "pause")]
