"""The persistence detector: account databases written, judged by the writer's ancestry."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import orjson
import pytest

from coi_watch.detectors import persistence as mod
from coi_watch.detectors.persistence import Persistence
from coi_watch.errors import ConfigError
from coi_watch.events import Ancestor, Event, FileAccess, ProcExec, ProcExit, ProcFork
from coi_watch.protocols import Detector
from coi_watch.verdicts import Severity, Verdict

C = "coi-test-1"


def ex(pid: int, *argv: str, ancestry: Sequence[tuple[int, str]] = (),
       container: str = C) -> ProcExec:
    base = argv[0].rpartition("/")[2]
    return ProcExec(ts_ns=1, wall_ns=1, container=container, pid=pid, comm=base[:15],
                    exe=f"/usr/sbin/{base}", argv=argv,
                    ancestry=tuple(Ancestor(pid=p, comm=c[:15], exe=f"/usr/bin/{c}")
                                   for p, c in ancestry))


def write(pid: int, path: str, comm: str = "useradd", op: str = "close_write",
          container: str = C) -> FileAccess:
    return FileAccess(ts_ns=2, wall_ns=2, container=container, pid=pid, op=op, path=path,
                      comm=comm)


def run(det: Persistence, events: Iterable[Event]) -> list[Verdict]:
    out: list[Verdict] = []
    for ev in events:
        out.extend(det.feed(ev, ev.ts_ns))
    return out


def levels(verdicts: Sequence[Verdict]) -> list[tuple[str, Severity]]:
    return [(v.evidence["database"], v.severity) for v in verdicts]


# Package installation: apt-get -> dpkg -> sh (postinst) -> adduser -> useradd.
POSTINST = ((60, "adduser"), (59, "sh"), (58, "dpkg"), (57, "apt-get"), (1, "systemd"))


def test_is_a_detector() -> None:
    det = Persistence()
    assert isinstance(det, Detector)
    assert det.name == "persistence"
    assert det.consumes == frozenset({"proc.exec", "proc.fork", "proc.exit", "file.access"})


@pytest.mark.parametrize(("path", "database", "severity"), [
    ("/etc/passwd", "/etc/passwd", Severity.HIGH),
    ("/etc/passwd+", "/etc/passwd", Severity.HIGH),  # shadow-utils' new copy
    ("/etc/shadow", "/etc/shadow", Severity.CRITICAL),
    ("/etc/shadow+", "/etc/shadow", Severity.CRITICAL),
    ("/etc/gshadow", "/etc/gshadow", Severity.HIGH),
])
def test_agent_writes_at_the_go_levels(path: str, database: str, severity: Severity) -> None:
    det = Persistence()
    events: list[Event] = [
        ex(500, "useradd", "-o", "-u", "0", "backdoor", ancestry=((400, "bash"),)),
        write(500, path)]
    [v] = run(det, events)
    assert (v.evidence["database"], v.severity) == (database, severity)
    assert v.evidence["managed"] is False and "package_manager" not in v.evidence
    assert v.dedup_key == f"persistence:{C}:{database}"
    assert v.detector == "persistence" and v.pid == 500 and v.event_kind == "file.access"
    orjson.dumps(v)


def test_a_write_by_an_unseen_process_counts_as_the_agent() -> None:
    assert levels(run(Persistence(), [write(77, "/etc/shadow", comm="python3")])) == [
        ("/etc/shadow", Severity.CRITICAL)]


def test_package_installation_is_info() -> None:
    det = Persistence()
    events: list[Event] = [ex(61, "useradd", "--system", "postgres", ancestry=POSTINST),
                           write(61, "/etc/passwd+"), write(61, "/etc/shadow+")]
    verdicts = run(det, events)
    assert levels(verdicts) == [("/etc/passwd", Severity.INFO), ("/etc/shadow", Severity.INFO)]
    assert verdicts[0].evidence["package_manager"] == "dpkg"
    assert "dpkg" in verdicts[0].title


def test_managed_is_inherited_through_forks_and_forgotten_at_exit() -> None:
    det = Persistence()
    run(det, [ex(70, "dpkg", "-i", "x.deb"),
              ProcFork(ts_ns=1, wall_ns=1, container=C, pid=71, ppid=70),
              ProcFork(ts_ns=1, wall_ns=1, container=C, pid=72, ppid=71)])
    assert levels(run(det, [write(72, "/etc/gshadow", comm="sh")])) == [
        ("/etc/gshadow", Severity.INFO)]
    run(det, [ProcExit(ts_ns=3, wall_ns=3, container=C, pid=72)])
    assert levels(run(det, [write(72, "/etc/gshadow", comm="sh")])) == [  # a reused pid
        ("/etc/gshadow", Severity.HIGH)]


def test_an_exec_beyond_the_ancestry_depth_keeps_what_the_fork_said() -> None:
    det = Persistence()
    run(det, [ex(80, "apt-get", "install", "x"),
              ProcFork(ts_ns=1, wall_ns=1, container=C, pid=81, ppid=80),
              ex(81, "useradd", "x", ancestry=tuple((200 + i, "sh") for i in range(8)))])
    assert levels(run(det, [write(81, "/etc/passwd")])) == [("/etc/passwd", Severity.INFO)]


def test_other_files_and_operations_are_not_ours() -> None:
    det = Persistence()
    run(det, [ex(90, "useradd", "x")])
    for ev in (write(90, "/etc/passwd", op="open"), write(90, "/etc/shadow", op="close_nowrite"),
               write(90, "/etc/passwd-"), write(90, "/etc/group"), write(90, "/etc/sudoers"),
               write(90, "/home/a/etc/passwd"), write(90, ""), write(90, "/etc/passwd++")):
        assert run(det, [ev]) == [], ev


def test_containers_are_separate() -> None:
    det = Persistence()
    run(det, [ex(61, "useradd", "x", ancestry=POSTINST, container="a")])
    assert levels(run(det, [write(61, "/etc/passwd", container="b")])) == [
        ("/etc/passwd", Severity.HIGH)]


def test_config_levels_and_extra_managers() -> None:
    det = Persistence({"shadow_level": "high", "passwd_level": "off", "managed_level": "off",
                       "package_managers": ["nix-daemon"]})
    assert levels(run(det, [write(1, "/etc/shadow")])) == [("/etc/shadow", Severity.HIGH)]
    assert run(det, [write(1, "/etc/passwd")]) == []
    run(det, [ex(5, "useradd", "x", ancestry=((4, "nix-daemon"),))])
    assert run(det, [write(5, "/etc/shadow")]) == []
    assert run(Persistence({"mode": "monitor"}), []) == []


def test_state_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    det = Persistence({"max_tracked": 10})
    run(det, [ex(1000 + i, "useradd", "x", ancestry=POSTINST) for i in range(100)])
    assert len(det._managed_pids[C]) == 10
    assert levels(run(det, [write(1000, "/etc/passwd")])) == [("/etc/passwd", Severity.HIGH)]
    assert levels(run(det, [write(1099, "/etc/passwd")])) == [("/etc/passwd", Severity.INFO)]
    monkeypatch.setattr(mod, "MAX_CONTAINERS", 3)
    det = Persistence()
    run(det, [ex(1, "dpkg", container=f"c{i}") for i in range(20)])
    assert len(det._managed_pids) == 3


@pytest.mark.parametrize(("config", "key"), [
    ({"passwd": "high"}, "passwd"),
    ({"shadow_level": "severe"}, "shadow_level"),
    ({"managed_level": None}, "managed_level"),
    ({"package_managers": "dpkg"}, "package_managers"),
    ({"max_tracked": 0}, "max_tracked"),
])
def test_config_errors_name_the_key(config: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        Persistence(config)
