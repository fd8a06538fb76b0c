"""Hot reload of the rule set: SIGHUP or a changed rule file, validated before it goes live.

Strategy (Falco's, see the research notes: dry-run in a scratch state, keep the old rules
on error, say so loudly): a :class:`RuleReloader` owns the rule paths and a reference to
the running :class:`~coi_watch.rules.engine.RuleEngine`. A reload compiles the whole set
from scratch (``load_rules`` + ``RuleSet.from_load``) in a worker thread, so the event
loop keeps evaluating events meanwhile. Then, back on the loop:

- no *error* diagnostic: ``engine.swap(new)`` and ``on_success(new, diagnostics)``. The
  swap is one assignment made by the loop thread, which is also the only thread that
  calls ``engine.feed``; a ``feed`` never awaits, so every event is evaluated exactly
  once, entirely by the old set or entirely by the new one;
- any error diagnostic (or the loader raising): the running set stays and
  ``on_failure(diagnostics)`` is called (the app writes a system audit record and
  raises an alert).

Triggers:

- ``SIGHUP`` (``loop.add_signal_handler``): reload at once.
- inotify (through ctypes; no polling) on every rule directory (recursively) and on the
  parent directory of every rule file and of the placeholder file, so editors' atomic
  rename-replace (``IN_MOVED_TO``), deletes, new files and new subdirectories are seen
  like in-place writes. Changes are **debounced**: the reload starts once nothing
  changed for ``debounce_s`` (200 ms); while a file that was written is not closed yet
  (``IN_MODIFY`` or ``IN_CREATE`` without ``IN_CLOSE_WRITE``) it waits longer, up to
  ``max_wait_s``, so a half-written file is read once its writer has finished. A queue
  overflow or a watched directory that vanished also reloads (and re-creates watches).
  Without inotify (the kernel refuses an instance) SIGHUP still works; the failure is
  logged.

Reloads never overlap: triggers that arrive during one start one more afterwards.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import signal
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from coi_watch.errors import CoiWatchError, RuleLocation
from coi_watch.rules.lint import Diagnostic, diagnostic

if TYPE_CHECKING:
    from coi_watch.rules.engine import RuleSet

__all__ = (
    "Build",
    "RuleReloader",
    "Swappable",
    "build_ruleset",
    "parse_inotify_events",
)

log = logging.getLogger(__name__)

# linux/inotify.h
IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_MASK = (IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
         | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then name
_RULE_SUFFIXES = (".yml", ".yaml")

Placeholders = Mapping[str, Sequence[str]]
Built = tuple["RuleSet | None", tuple[Diagnostic, ...]]
Build = Callable[[Sequence[str], bool, Placeholders | None], Built]
"""Compile rules: ``(paths, include_packs, placeholders) -> (rule set or None, diagnostics)``."""


class Swappable(Protocol):
    """The engine side of a reload: ``RuleEngine.swap``."""

    def swap(self, ruleset: RuleSet) -> None: ...


def build_ruleset(
    paths: Sequence[str], include_packs: bool, placeholders: Placeholders | None
) -> Built:
    """Load and compile a rule set; ``None`` when any diagnostic is an error."""
    from coi_watch.rules.engine import RuleSet
    from coi_watch.rules.load import load_rules

    result = load_rules(paths, include_packs=include_packs, placeholders=placeholders)
    if any(d.severity == "error" for d in result.diagnostics):
        return None, tuple(result.diagnostics)
    return RuleSet.from_load(result), tuple(result.diagnostics)


def parse_inotify_events(buf: bytes) -> Iterator[tuple[int, int, int, str]]:
    """``(wd, mask, cookie, name)`` for each ``struct inotify_event`` in ``buf``."""
    off = 0
    size = _EVENT.size
    while off + size <= len(buf):
        wd, mask, cookie, length = _EVENT.unpack_from(buf, off)
        raw = buf[off + size: off + size + length]
        off += size + length
        yield wd, mask, cookie, os.fsdecode(raw.split(b"\0", 1)[0])


class _Inotify:
    """A non-blocking inotify instance (libc through ctypes)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = (ctypes.c_int, ctypes.c_int)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd

    def add(self, path: Path, mask: int) -> int:
        wd: int = self._add(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        return wd

    def remove(self, wd: int) -> None:
        self._rm(self.fd, wd)  # EINVAL when the kernel already dropped it: fine

    def close(self) -> None:
        os.close(self.fd)


class RuleReloader:
    """Reload rules into ``engine`` on SIGHUP and on rule file changes (see module doc).

    ``placeholders`` is a mapping, or the path of a placeholder file that is watched and
    re-read on every reload. ``build`` replaces :func:`build_ruleset` (tests). Callbacks
    run on the event loop; an exception in one is logged, never propagated.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        engine: Swappable,
        *,
        on_success: Callable[[RuleSet, tuple[Diagnostic, ...]], None] | None = None,
        on_failure: Callable[[tuple[Diagnostic, ...]], None] | None = None,
        include_packs: bool = True,
        placeholders: Placeholders | str | os.PathLike[str] | None = None,
        build: Build | None = None,
        debounce_s: float = 0.2,
        max_wait_s: float = 5.0,
        watch: bool = True,
        sighup: bool = True,
    ) -> None:
        self.paths = tuple(str(p) for p in paths)
        self.engine = engine
        self.on_success = on_success
        self.on_failure = on_failure
        self.include_packs = include_packs
        self.placeholders = placeholders
        self.build = build or build_ruleset
        self.debounce_s = debounce_s
        self.max_wait_s = max_wait_s
        self.watch = watch
        self.sighup = sighup
        self.ready = asyncio.Event()
        """Set once signal handler and watches are installed."""
        self.reloads = 0
        """Completed reload attempts (successful or not)."""
        self.failures = 0
        self._wake = asyncio.Event()
        self._reasons: list[str] = []
        self._ino: _Inotify | None = None
        self._watches: dict[int, tuple[Path, frozenset[str] | None]] = {}
        self._open_writes: set[tuple[int, str]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._first_change = 0.0

    # ----------------------------------------------------------------- public

    def request(self, reason: str) -> None:
        """Ask for a reload now (what SIGHUP does)."""
        self._reasons.append(reason)
        self._wake.set()

    async def run(self) -> None:
        """Serve reload triggers until cancelled."""
        loop = asyncio.get_running_loop()
        if self.sighup:
            loop.add_signal_handler(signal.SIGHUP, self.request, "SIGHUP")
        try:
            if self.watch:
                self._start_watching(loop)
            self.ready.set()
            while True:
                await self._wake.wait()
                self._wake.clear()
                reasons, self._reasons = self._reasons, []
                await self.reload(", ".join(dict.fromkeys(reasons)) or "request")
        finally:
            if self._timer is not None:
                self._timer.cancel()
            if self.sighup:
                loop.remove_signal_handler(signal.SIGHUP)
            if self._ino is not None:
                loop.remove_reader(self._ino.fd)
                self._ino.close()
                self._ino = None
            self._watches.clear()

    async def reload(self, reason: str = "request") -> bool:
        """Compile the rule set afresh and swap it in; True on success."""
        log.info("reloading rules (%s)", reason)
        try:
            placeholders = self._placeholders()
            ruleset, diags = await asyncio.to_thread(
                self.build, self.paths, self.include_packs, placeholders
            )
        except Exception as exc:  # a loader bug must not kill the supervisor
            where = RuleLocation(self.paths[0] if self.paths else "<rules>")
            code = "E010" if isinstance(exc, (OSError, CoiWatchError)) else "E001"
            ruleset, diags = None, (diagnostic(code, f"reload failed: {exc}", where),)
        finally:
            self.reloads += 1
        if self._ino is not None:
            self._rewatch()
        if ruleset is None or any(d.severity == "error" for d in diags):
            self.failures += 1
            log.error("rule reload failed (%s); keeping the running rules", reason)
            self._call(self.on_failure, diags)
            return False
        self.engine.swap(ruleset)  # on the loop thread, between two events
        self._call(self.on_success, ruleset, diags)
        return True

    # ----------------------------------------------------------------- internals

    def _placeholders(self) -> Placeholders | None:
        ph = self.placeholders
        if ph is None or isinstance(ph, Mapping):
            return ph
        from coi_watch.rules.tuning import load_placeholders

        return load_placeholders(ph)

    @staticmethod
    def _call(callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            log.exception("rule reload callback failed")

    def _targets(self) -> dict[Path, frozenset[str] | None]:
        """Directory -> names to watch in it (None: every rule file and subdirectory)."""
        targets: dict[Path, frozenset[str] | None] = {}

        def add(d: Path, names: frozenset[str] | None) -> None:
            if d in targets:
                old = targets[d]
                targets[d] = None if old is None or names is None else old | names
            else:
                targets[d] = names

        files = list(self.paths)
        ph = self.placeholders
        if ph is not None and not isinstance(ph, Mapping):
            files.append(os.fspath(ph))
        for raw in files:
            p = Path(raw).absolute()
            if p.is_dir():
                add(p.parent, frozenset({p.name}))  # the directory replaced or re-created
                add(p, None)
                for root, dirs, _ in os.walk(p):
                    dirs[:] = [d for d in dirs if not d.startswith(".")]
                    for d in dirs:
                        add(Path(root) / d, None)
            else:
                add(p.parent, frozenset({p.name}))
        return targets

    def _start_watching(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self._ino = _Inotify()
        except OSError as exc:
            log.warning("no inotify (%s): rule files are reloaded on SIGHUP only", exc)
            return
        loop.add_reader(self._ino.fd, self._on_readable)
        self._rewatch()

    def _rewatch(self) -> None:
        """Make the watches match :meth:`_targets` (directories come and go)."""
        ino = self._ino
        assert ino is not None
        wanted = self._targets()
        current = {path: wd for wd, (path, _) in self._watches.items()}
        for path, wd in current.items():
            if path not in wanted:
                ino.remove(wd)
                self._watches.pop(wd, None)
        for path, names in wanted.items():
            try:
                wd = ino.add(path, _MASK)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    log.warning("cannot watch %s: %s", path, exc)
                continue
            self._watches[wd] = (path, names)

    def _on_readable(self) -> None:
        ino = self._ino
        if ino is None:
            return
        try:
            buf = os.read(ino.fd, 64 * 1024)
        except BlockingIOError:
            return
        changed = False
        for wd, mask, _cookie, name in parse_inotify_events(buf):
            if mask & IN_Q_OVERFLOW:
                changed = True
                continue
            watch = self._watches.get(wd)
            if watch is None:
                continue
            if mask & _GONE:
                if mask & IN_IGNORED:
                    self._watches.pop(wd, None)
                changed = True
                continue
            _, names = watch
            if names is None:
                if name.startswith(".") or not (
                    mask & IN_ISDIR or name.endswith(_RULE_SUFFIXES)
                ):
                    continue  # editor swap/lock files, other files
            elif name not in names:
                continue
            key = (wd, name)
            if mask & (IN_MODIFY | IN_CREATE) and not mask & IN_ISDIR:
                self._open_writes.add(key)
            if mask & (IN_CLOSE_WRITE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO):
                self._open_writes.discard(key)
            changed = True
        if changed:
            self._arm()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is None:
            self._first_change = loop.time()
        else:
            self._timer.cancel()
        self._timer = loop.call_later(self.debounce_s, self._due)

    def _due(self) -> None:
        loop = asyncio.get_running_loop()
        if self._open_writes and loop.time() - self._first_change < self.max_wait_s:
            self._timer = loop.call_later(self.debounce_s, self._due)
            return
        self._timer = None
        self._open_writes.clear()
        self.request("rule files changed")
