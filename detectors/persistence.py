"""Persistence through the account databases: /etc/passwd, /etc/shadow, /etc/gshadow written.

Strategy: most persistence is a single-event pattern and ships as Sigma rules
(``rules/packs/coi-persistence.yml``: sudoers, cron, systemd units, shell startup files,
``ld.so.preload``). The account databases are different: ``apt-get install postgresql``
writes them too (dpkg runs the package's postinst, which runs ``adduser``, which runs
``useradd``), and so does an agent adding itself a backdoor account, through the very same
``useradd``. A file event names only the writer (pid and comm), so the difference is in
the writer's **ancestry**, which only a detector that has seen the execs can know.

So this detector remembers, per container, which live processes descend from a package
manager: a process whose exec shows a package manager as itself or as an ancestor
(:attr:`~coi_watch.events.ProcExec.ancestry`, nearest parent first), and any child forked
from such a process. A ``close_write`` of an account database (the file itself, or the
``NAME+`` copy that shadow-utils writes before renaming it over) is then reported at the
Go original's level (``/etc/shadow`` critical, ``/etc/passwd`` and ``/etc/gshadow`` high)
unless its writer descends from a package manager, which is ``managed_level`` (``info``:
logged for the record, not acted on). Like every name-based judgement, a binary renamed to
``dpkg`` passes; an agent able to do that is already root in its container.

Reads of ``/etc/shadow`` are ``coi-credential-access.yml`` ("Shadow Password File Read").

State: the set of package-manager descendants (at most ``max_tracked`` pids per container,
oldest first out; exit evicts) and at most :data:`MAX_CONTAINERS` containers. A write by a
pid whose exec was never seen counts as not managed. Dedup key:
``persistence:<container>:<database>`` (one threat per database, whatever the pid).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from coi_watch.detectors._cmdline import base_name
from coi_watch.detectors._config import LEVELS, cfg_int, cfg_level, cfg_strings, check_keys
from coi_watch.detectors._windows import LruMap
from coi_watch.events import Event, FileAccess, ProcExec, ProcExit, ProcFork
from coi_watch.verdicts import Verdict

__all__ = ("ACCOUNT_DATABASES", "MAX_CONTAINERS", "PACKAGE_MANAGERS", "Persistence")

PACKAGE_MANAGERS: frozenset[str] = frozenset({
    "dpkg", "apt", "apt-get", "aptitude", "unattended-upgrade", "rpm", "dnf", "dnf5",
    "yum", "microdnf", "tdnf", "zypper", "apk", "pacman",
})
"""Programs whose descendants may write the account databases (matched on comm and exe
basename, both cut to the kernel's 15-character task name)."""

ACCOUNT_DATABASES: Mapping[str, tuple[str, str, tuple[str, ...]]] = {
    # path -> (config key, default level, MITRE technique ids)
    "/etc/passwd": ("passwd_level", "high", ("T1136.001",)),
    "/etc/shadow": ("shadow_level", "critical", ("T1136.001", "T1098")),
    "/etc/gshadow": ("gshadow_level", "high", ("T1098",)),
}
"""The databases watched, with the Go original's levels."""

MAX_CONTAINERS = 4096
"""Containers whose state is kept at once."""

_NAME = "persistence"
_COMM = 15  # TASK_COMM_LEN - 1


def _task_name(name: str) -> str:
    return name.lower()[:_COMM]


class Persistence:
    """Account database writes, judged by the writer's ancestry; see the module docstring.

    Config keys (``[detectors.persistence]``), with defaults:

    ``passwd_level = "high"``, ``shadow_level = "critical"``, ``gshadow_level = "high"``
        Level of a write by a process that does not descend from a package manager (the
        Go original's levels; ``critical``, ``high``, ``warning``, ``info`` or ``off``).
    ``managed_level = "info"``
        Level of a write by a package manager's descendant (``off`` drops it).
    ``package_managers = []``
        Extra program names, added to :data:`PACKAGE_MANAGERS`.
    ``max_tracked = 32768``
        Package-manager descendants remembered per container (oldest evicted first).

    Raises:
        ConfigError: an unknown key, or a value of the wrong type or outside its set.
    """

    name: ClassVar[str] = _NAME
    consumes: ClassVar[frozenset[str]] = frozenset(
        {"proc.exec", "proc.fork", "proc.exit", "file.access"}
    )

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        cfg = dict(config or {})
        check_keys(_NAME, cfg, (*(key for key, _, _ in ACCOUNT_DATABASES.values()),
                                "managed_level", "package_managers", "max_tracked"))
        self._levels = {path: cfg_level(_NAME, cfg, key, default, LEVELS)
                        for path, (key, default, _) in ACCOUNT_DATABASES.items()}
        self._managed = cfg_level(_NAME, cfg, "managed_level", "info", LEVELS)
        extra = cfg_strings(_NAME, cfg, "package_managers")
        self._managers = frozenset(_task_name(n) for n in (*PACKAGE_MANAGERS, *extra))
        self._max = cfg_int(_NAME, cfg, "max_tracked", 32768)
        # container -> {pid: package manager it descends from}
        self._managed_pids: LruMap[str, LruMap[int, str]] = LruMap(MAX_CONTAINERS)

    # -- events

    def feed(self, ev: Event, now_ns: int) -> Iterable[Verdict]:
        """Take one event; return a verdict for an account database written."""
        if isinstance(ev, FileAccess):
            return self._file(ev)
        if isinstance(ev, ProcExec):
            # No manager in sight keeps what the fork said: the ancestry is cut at
            # ANCESTRY_DEPTH parents, and a reused pid was evicted by its exit.
            manager = self._manager_of(ev)
            if manager:
                self._remember(ev.container, ev.pid, manager)
        elif isinstance(ev, ProcFork):
            pids = self._managed_pids.get(ev.container)
            if pids is not None:
                parent = pids.get(ev.ppid)
                if parent:
                    self._remember(ev.container, ev.pid, parent)
        elif isinstance(ev, ProcExit):
            pids = self._managed_pids.get(ev.container)
            if pids is not None:
                pids.pop(ev.pid, None)
                if not pids:
                    del self._managed_pids[ev.container]
        return ()

    def _manager_of(self, ev: ProcExec) -> str:
        """The package manager ``ev``'s process is or descends from, ``""`` when none."""
        managers = self._managers
        for comm, exe in ((ev.comm, ev.exe), *((a.comm, a.exe) for a in ev.ancestry)):
            for name in (comm, base_name(exe)):
                if name and _task_name(name) in managers:
                    return _task_name(name)
        return ""

    def _remember(self, container: str, pid: int, manager: str) -> None:
        pids = self._managed_pids.touch(container)
        if pids is None:
            pids = LruMap(self._max)
            self._managed_pids.put(container, pids)
        pids.put(pid, manager)

    def _file(self, ev: FileAccess) -> list[Verdict]:
        if ev.op != "close_write" or not ev.path.startswith("/etc/"):
            return []
        path = ev.path[:-1] if ev.path.endswith("+") else ev.path
        if path not in self._levels:
            return []
        pids = self._managed_pids.get(ev.container)
        manager = pids.get(ev.pid, "") if pids is not None else ""
        severity = self._managed if manager else self._levels[path]
        if severity is None:
            return []
        _, _, mitre = ACCOUNT_DATABASES[path]
        evidence: dict[str, Any] = {
            "path": ev.path, "database": path, "pid": ev.pid, "comm": ev.comm, "op": ev.op,
            "managed": bool(manager),
        }
        if manager:
            evidence["package_manager"] = manager
        title = (f"Account database written: {path}" if not manager
                 else f"Account database written by {manager}: {path}")
        return [Verdict(
            ts_ns=ev.ts_ns,
            wall_ns=ev.wall_ns,
            container=ev.container,
            detector=self.name,
            title=title,
            severity=severity,
            evidence=evidence,
            mitre=mitre,
            dedup_key=f"persistence:{ev.container}:{path}",
            event_kind=ev.kind,
            pid=ev.pid,
        )]
