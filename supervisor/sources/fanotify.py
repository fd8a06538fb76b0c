"""The file source: opens, execs and closes inside containers, from one fanotify group.

Strategy (measured in ``notes/kernel-sources.md`` section 4): a single notification group
(``fanotify_init(FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_FD_ERROR, O_RDONLY | O_LARGEFILE |
O_CLOEXEC)``) holds *mount* marks on the container's own mounts, reached through
``/proc/INIT_PID/root/<mount point>``. A mark on the host path of the rootfs sees nothing
(the container uses its own idmapped bind mount), a filesystem mark sees the whole host;
a mount mark sees exactly the container's accesses, with paths in the container's view.
One mark covers one mount, so every mount worth watching gets its own (:func:`wanted`):

- marked: the root mount, every ``proc`` mount (``/proc/N/environ`` scans), and every
  mount of a real filesystem: disk devices (``/workspace`` bind mounts from the host), ext4,
  xfs, btrfs, overlay, nfs, fuse, ... and ``tmpfs`` outside ``/dev`` (``/tmp``, ``/run``);
- skipped: pseudo filesystems with no user data (:data:`PSEUDO_FS`: sysfs, devpts,
  devtmpfs, cgroup, mqueue, debugfs, lxcfs, ...), the ``tmpfs`` Incus mounts at ``/dev``
  and below (device nodes, ``/dev/incus``, ``/dev/.incus-mounts``), and mounts under
  ``/sys`` or ``/proc`` that are not procfs (lxc's ``boot_id`` bind).

Marks are placed on what the path *resolves to*, checked against the container's own
mount table: the path is opened ``O_PATH``, its mount id read from ``/proc/self/fdinfo``
and accepted only if that id is in ``/proc/INIT_PID/mountinfo`` (a container that swaps a
directory for a symlink to ``/`` cannot make us mark a host mount), then marked through
``/proc/self/fd/N`` (fanotify refuses an ``O_PATH`` dirfd with a NULL path).

The mount table is followed, not polled: ``/proc/PID/mountinfo`` signals ``EPOLLPRI`` when
the namespace's mounts change (``mounts_poll``). It also always reports ``EPOLLIN``, so it
sits in a private ``epoll`` registered for ``EPOLLPRI`` only, whose fd the loop watches; a
wake-up means "rescan": new mounts (a disk device hot-plugged with ``incus config device
add``, a ``tmpfs`` the container mounted itself) are marked, vanished ones forgotten. A
``pidfd`` of the init process ends that watch when the container stops, because the open
``mountinfo`` pins the mount namespace (and its mounts) while it is held. A container
restart has a new init pid, new mounts and so needs new marks: :meth:`FanotifySource.attach`
is idempotent per ``(name, init_pid)`` and re-marks for a new pid.

Events (:class:`FanotifyTracker`): one ``FileAccess`` per operation in the (possibly
merged) mask: ``open``, ``open_exec``, ``close_write``, ``close_nowrite`` (``access`` and
``modify`` on request: they fire per ``read()``/``write()`` call, so close events are the
cheap measure of volume). ``size`` is the file size at close, from ``fstat`` of the event
fd: after ``close_write`` that is what the writer left; after ``close_nowrite`` it is only
an **upper bound** of what was read (a reader may have read a few bytes of a big file).
``path`` comes from ``readlink /proc/self/fd/N`` (container view, decoded with backslash
escapes; the name it had if the file was deleted before we read the event); with
``FAN_REPORT_FD_ERROR`` a file the kernel could not open for us (a procfs file of a process
that already exited) arrives with ``fd = -errno``: the event keeps its pid, with
``path=""``. ``comm`` is read from ``/proc/PID/comm`` when the event is handled
(best effort: empty if a short-lived process had already exited). Every event fd is
closed, whatever happens.

Attribution is by pid (``lxc.payload.NAME`` in ``/proc/PID/cgroup``,
:func:`~coi_watch.sources.attribution.container_of`), cached with ``comm`` for
``cache_ttl_ms`` (pids recycle: ``pid_max`` is 32768 on the test host) and dropped after an
exec (the comm changes). A process that is already gone is attributed by the mount its file
was opened through (``mnt_id`` of the event fd -> the container whose mark it is); with no
fd either, the event is counted as an ``unattributed`` drop. Host processes reaching into a
container's mounts (``incus file pull``) are not container activity and are skipped, as is
coi-watch itself. ``FAN_Q_OVERFLOW`` (the kernel's 16,384-event queue was full; its fd is
``-EBADF`` with FD_ERROR, so the mask is what tells) is an ``overflow`` drop plus a
``system`` record. Without ``FAN_REPORT_FD_ERROR`` (kernels before 6.13, or ``fd_error =
false``) the source runs *degraded*: a failed open fails the whole ``read()`` (counted as a
``read_error`` drop) or, in a partial read, loses the event silently.

Known gap: marks belong to mounts of the container's *initial* mount namespace. A process
that makes its own namespace (``unshare -m``) works on copies of those mounts, which carry
no marks; the proc source still sees its execs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import resource
import select
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from coi_watch.containers import ContainerInfo
from coi_watch.errors import SourceError, WireError
from coi_watch.events import FileAccess, wall_from_mono
from coi_watch.protocols import SourceContext
from coi_watch.sources.attribution import Attribution, container_of
from coi_watch.wire.fanotify import FanEvent, iter_events, mask_of, ops_of

__all__ = (
    "DEFAULT_OPS",
    "PSEUDO_FS",
    "FanotifySource",
    "FanotifyTracker",
    "MountEntry",
    "fanotify_init",
    "fanotify_mark",
    "fd_mount_id",
    "open_group",
    "parse_mountinfo",
    "wanted",
)

# linux/fanotify.h: fanotify_init flags (FAN_CLASS_NOTIF = 0: notification only).
FAN_CLOEXEC: Final = 0x00000001
FAN_NONBLOCK: Final = 0x00000002
FAN_UNLIMITED_QUEUE: Final = 0x00000010
FAN_REPORT_FD_ERROR: Final = 0x00002000  # 6.13+ (backported to 6.12.5 and 6.6.66)
# linux/fanotify.h: fanotify_mark flags
FAN_MARK_ADD: Final = 0x00000001
FAN_MARK_REMOVE: Final = 0x00000002
FAN_MARK_MOUNT: Final = 0x00000010
AT_FDCWD: Final = -100  # linux/fcntl.h

DEFAULT_OPS: Final = ("open", "open_exec", "close_write", "close_nowrite")
_CLOSE_OPS: Final = frozenset({"close_write", "close_nowrite"})
_EVENT_LEN: Final = 24  # FAN_EVENT_METADATA_LEN: no info records in this group
_READ_SIZE: Final = 8192  # 341 events, so at most 341 event fds open at once
_BATCH: Final = 32  # reads per wake-up before yielding to the loop
_REPORT_EVERY_NS: Final = 1_000_000_000
_CACHE_CAP: Final = 4096

PSEUDO_FS: Final = frozenset({
    "sysfs", "devpts", "devtmpfs", "cgroup", "cgroup2", "mqueue", "debugfs", "tracefs",
    "securityfs", "pstore", "bpf", "configfs", "fusectl", "binfmt_misc", "hugetlbfs",
    "autofs", "nsfs", "rpc_pipefs", "efivarfs", "selinuxfs", "fuse.lxcfs", "ramfs",
})
"""Filesystem types that hold no user data and are never marked."""

# ------------------------------------------------------------------ syscalls (ctypes)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_init.restype = ctypes.c_int
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                ctypes.c_char_p]
_libc.fanotify_mark.restype = ctypes.c_int


def fanotify_init(flags: int, event_f_flags: int) -> int:
    """``fanotify_init(2)``: a new group's fd.

    Raises:
        OSError: the kernel refused (``EINVAL`` unknown flag, ``EPERM`` not
            ``CAP_SYS_ADMIN``, ``ENOSYS`` no ``CONFIG_FANOTIFY``).
    """
    fd = int(_libc.fanotify_init(flags, event_f_flags))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fanotify_init: {os.strerror(err)}")
    return fd


def fanotify_mark(group: int, flags: int, mask: int, path: bytes) -> None:
    """``fanotify_mark(2)`` on ``path`` (relative to the cwd when not absolute).

    Raises:
        OSError: the kernel refused (``ENOENT`` path gone or, on remove, no such mark).
    """
    if _libc.fanotify_mark(group, flags, mask, AT_FDCWD, path) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fanotify_mark {path.decode(errors='replace')}: {os.strerror(err)}")


Init = Callable[[int, int], int]


def open_group(*, fd_error: bool = True, unlimited_queue: bool = False,
               init: Init = fanotify_init) -> tuple[int, bool]:
    """Create the notification group: ``(fd, has FAN_REPORT_FD_ERROR)``.

    Asks for ``FAN_REPORT_FD_ERROR`` first (when ``fd_error``) and, if the kernel does not
    know the flag (``EINVAL``), tries again without it.

    Raises:
        SourceError: fanotify is unavailable or we lack ``CAP_SYS_ADMIN``.
    """
    flags = FAN_CLOEXEC | FAN_NONBLOCK | (FAN_UNLIMITED_QUEUE if unlimited_queue else 0)
    event_f_flags = os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC
    attempts = [flags | FAN_REPORT_FD_ERROR, flags] if fd_error else [flags]
    for i, attempt in enumerate(attempts):
        try:
            return init(attempt, event_f_flags), bool(attempt & FAN_REPORT_FD_ERROR)
        except OSError as exc:
            if exc.errno == errno.EINVAL and i + 1 < len(attempts):
                continue
            if exc.errno == errno.EPERM:
                raise SourceError("fanotify needs CAP_SYS_ADMIN: coi-watch must run as "
                                  "root") from exc
            if exc.errno == errno.ENOSYS:
                raise SourceError("the kernel has no fanotify (CONFIG_FANOTIFY)") from exc
            raise SourceError(f"fanotify unavailable: {exc}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


def fd_mount_id(fd: int, proc: str = "/proc") -> int:
    """The mount id (as in ``mountinfo``) of an open fd, from ``/proc/self/fdinfo``; 0 if
    unknown."""
    try:
        with open(f"{proc}/self/fdinfo/{fd}", "rb") as f:
            text = f.read(4096)
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(b"mnt_id:"):
            with contextlib.suppress(ValueError):
                return int(line[7:])
    return 0


# ------------------------------------------------------------------ mount table


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of ``/proc/PID/mountinfo`` (``proc(5)``), mount point in the process's
    view, unescaped."""

    mount_id: int
    parent_id: int
    root: str
    mount_point: str
    fstype: str
    source: str = ""


def _unescape(field_: str) -> str:
    # show_mountinfo escapes space, tab, newline and backslash as \ooo octal (seq_escape).
    if "\\" not in field_:
        return field_
    out = bytearray()
    raw = field_.encode("utf-8", "surrogateescape")
    i = 0
    while i < len(raw):
        chunk = raw[i + 1 : i + 4]
        if raw[i] == 0x5C and len(chunk) == 3 and all(0x30 <= c <= 0x37 for c in chunk):
            out.append(int(chunk, 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse ``mountinfo`` text; malformed lines are skipped.

    Format: ``ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE
    SUPER_OPTIONS``.
    """
    out = []
    for line in text.splitlines():
        parts = line.split(" ")
        try:
            sep = parts.index("-", 6)
            out.append(MountEntry(
                mount_id=int(parts[0]), parent_id=int(parts[1]), root=_unescape(parts[3]),
                mount_point=_unescape(parts[4]), fstype=parts[sep + 1],
                source=_unescape(parts[sep + 2]) if len(parts) > sep + 2 else ""))
        except (ValueError, IndexError):
            continue
    return out


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def wanted(entry: MountEntry) -> bool:
    """Whether a container mount gets a mark (the policy in the module docstring)."""
    if entry.fstype == "proc":
        return True
    if entry.fstype in PSEUDO_FS:
        return False
    if _under(entry.mount_point, "/proc") or _under(entry.mount_point, "/sys"):
        return False
    return not (entry.fstype == "tmpfs" and _under(entry.mount_point, "/dev"))


# ------------------------------------------------------------------ events


def _read_comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read(64).rstrip(b"\n").decode("utf-8", "backslashreplace")
    except OSError:
        return ""


_DELETED: Final = b" (deleted)"


def _fd_path(fd: int) -> str:
    try:
        raw = os.readlink(b"/proc/self/fd/%d" % fd)
    except OSError:
        return ""
    # d_path appends " (deleted)" once the file is unlinked (a file written, read and
    # removed before we got to the event): report the name it had. A file really named
    # "x (deleted)" still has links, and keeps its name.
    if raw.endswith(_DELETED):
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_nlink == 0:
                raw = raw[: -len(_DELETED)]
    return raw.decode("utf-8", "backslashreplace")


class FanotifyTracker:
    """Parsed fanotify records in, :class:`~coi_watch.events.FileAccess` events out.

    Synchronous and group-free, so tests and benchmarks can feed it buffers or
    :class:`~coi_watch.wire.fanotify.FanEvent`\\ s whose fds they opened themselves (the
    tracker closes them). :attr:`mounts` maps marked mount ids to container names (the
    source keeps it current). ``stats`` counts ``events``, ``published``, ``own``, ``host``,
    ``unwatched``, ``by_mount``, ``unattributed``, ``fd_errors``, ``overflows``,
    ``wire_errors``, ``read_errors``.
    """

    def __init__(
        self,
        ctx: SourceContext,
        *,
        self_pid: int | None = None,
        attribute: Callable[[int], Attribution] = container_of,
        read_comm: Callable[[int], str] = _read_comm,
        cache_ttl_ns: int = 1_000_000_000,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.ctx = ctx
        self.self_pid = os.getpid() if self_pid is None else self_pid
        self.mounts: dict[int, str] = {}
        self.stats: dict[str, int] = dict.fromkeys(
            ("events", "published", "own", "host", "unwatched", "by_mount", "unattributed",
             "fd_errors", "overflows", "wire_errors", "read_errors"), 0)
        self._attribute = attribute
        self._read_comm = read_comm
        self._ttl = cache_ttl_ns
        self._clock = clock
        self._pids: dict[int, tuple[str, str, int]] = {}  # pid -> (container, comm, expiry)
        self._ops: dict[int, tuple[str, ...]] = {}  # mask -> ops_of(mask), memoised
        self._reported: dict[str, int] = {}
        self._suppressed: dict[str, int] = {}

    # -------------------------------------------------------------- input

    def feed(self, buf: bytes) -> None:
        """Handle one ``read()`` buffer of the group."""
        ts_ns = self._clock()
        try:
            for ev in iter_events(buf):
                self.handle(ev, ts_ns)
        except WireError as exc:
            # Cannot happen with a sane kernel; the fds of records after this point leak.
            self.stats["wire_errors"] += 1
            self.ctx.count_drop("", "fanotify", "wire_error", 1)
            self._report("wire_error", {"error": str(exc), "len": len(buf)})

    def lost_read(self, exc: OSError) -> None:
        """A ``read()`` failed: without ``FAN_REPORT_FD_ERROR`` the kernel's open of an event
        file failed and that event is gone."""
        self.stats["read_errors"] += 1
        self.ctx.count_drop("", "fanotify", "read_error", 1)
        self._report("read_error", {"errno": exc.errno, "error": os.strerror(exc.errno or 0)})

    def handle(self, ev: FanEvent, ts_ns: int) -> None:
        """Handle one record; its fd (and pidfd) is closed in every case."""
        try:
            self._handle(ev, ts_ns)
        finally:
            if ev.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(ev.fd)
            if ev.pidfd >= 0:  # only with FAN_REPORT_PIDFD, which the source does not ask for
                with contextlib.suppress(OSError):
                    os.close(ev.pidfd)

    def forget(self, name: str) -> None:
        """Drop what is cached for container ``name`` (pids, mount ids)."""
        for pid in [p for p, v in self._pids.items() if v[0] == name]:
            del self._pids[pid]
        for mid in [m for m, n in self.mounts.items() if n == name]:
            del self.mounts[mid]

    # -------------------------------------------------------------- per event

    def _handle(self, ev: FanEvent, ts_ns: int) -> None:
        self.stats["events"] += 1
        if ev.overflow:
            self.stats["overflows"] += 1
            self.ctx.count_drop("", "fanotify", "overflow", 1)
            self._report("overflow", {"detail": "the kernel's fanotify queue overflowed; "
                                                "file events were lost"})
            return
        if ev.pid == self.self_pid:
            self.stats["own"] += 1
            return
        fd = ev.fd
        if fd < 0:
            self.stats["fd_errors"] += 1
        who = self._who(ev.pid, fd)
        if who is None:
            return
        container, comm = who
        if not self.ctx.watched(container):
            self.stats["unwatched"] += 1
            return
        ops = self._ops.get(ev.mask)
        if ops is None:
            ops = ops_of(ev.mask)
            if len(self._ops) < 256:  # a handful of masks ever occur; stay bounded anyway
                self._ops[ev.mask] = ops
        path = _fd_path(fd) if fd >= 0 else ""
        size = -1
        if fd >= 0 and not _CLOSE_OPS.isdisjoint(ops):
            with contextlib.suppress(OSError):
                size = os.fstat(fd).st_size
        wall = wall_from_mono(ts_ns)
        for op in ops:
            self.stats["published"] += 1
            self.ctx.publish(FileAccess(
                ts_ns=ts_ns, wall_ns=wall, container=container, pid=ev.pid, op=op,
                path=path, size=size if op in _CLOSE_OPS else -1, comm=comm))
        if "open_exec" in ops:
            self._pids.pop(ev.pid, None)  # the exec is about to change comm

    def _who(self, pid: int, fd: int) -> tuple[str, str] | None:
        now = self._clock()
        hit = self._pids.get(pid)
        if hit is not None and hit[2] > now:
            return hit[0], hit[1]
        got = self._attribute(pid)
        if isinstance(got, str):
            comm = self._read_comm(pid)
            if len(self._pids) >= _CACHE_CAP:
                self._pids.pop(next(iter(self._pids)))
            self._pids[pid] = (got, comm, now + self._ttl)
            return got, comm
        if got is None:  # a host process reaching into a container mount
            self.stats["host"] += 1
            return None
        # The process is gone: the mount the file was opened through names the container.
        name = self.mounts.get(fd_mount_id(fd)) if fd >= 0 else None
        if name is not None:
            self.stats["by_mount"] += 1
            return name, ""
        self.stats["unattributed"] += 1
        self.ctx.count_drop("", "fanotify", "unattributed", 1)
        return None

    def _report(self, kind: str, detail: dict[str, Any]) -> None:
        """A ``system`` record, at most one per kind per second (the rest are counted)."""
        now = self._clock()
        last = self._reported.get(kind)
        if last is not None and now - last < _REPORT_EVERY_NS:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._reported[kind] = now
        self.ctx.system("", kind, {"source": "fanotify", **detail,
                                   "suppressed": self._suppressed.pop(kind, 0)})


# ------------------------------------------------------------------ the source


@dataclass(slots=True)
class _Watch:
    """What is kept for one attached container."""

    info: ContainerInfo
    marked: dict[int, str] = field(default_factory=dict)  # mount id -> mount point
    mountinfo: int = -1
    epoll: select.epoll | None = None
    pidfd: int = -1

    @property
    def following(self) -> bool:
        return self.mountinfo >= 0


class FanotifySource:
    """The ``fanotify`` source (:class:`~coi_watch.protocols.Source`, ``ContainerAware``).

    Config keys: ``events`` (op names, default :data:`DEFAULT_OPS`; ``access`` and
    ``modify`` may be added), ``fd_error`` (ask for ``FAN_REPORT_FD_ERROR``, default true),
    ``unlimited_queue`` (``FAN_UNLIMITED_QUEUE``, default false: the kernel's 16,384 events
    then memory is bounded and overflow is reported), ``read_size`` (bytes per ``read()``,
    default 8192, capped so the event fds of one read stay under a quarter of
    ``RLIMIT_NOFILE``), ``cache_ttl_ms`` (pid attribution cache, default 1000).
    :attr:`degraded` is true when the group runs without ``FAN_REPORT_FD_ERROR``.
    """

    name: ClassVar[str] = "fanotify"

    def __init__(self, config: Mapping[str, Any] | None = None, *,
                 init: Init = fanotify_init) -> None:
        cfg = dict(config or {})
        events = cfg.get("events", DEFAULT_OPS)
        if isinstance(events, str) or not isinstance(events, Iterable):
            raise ValueError("sources.fanotify.events must be a list of op names")
        self.mask = mask_of(events)
        self.fd_error = bool(cfg.get("fd_error", True))
        self.unlimited_queue = bool(cfg.get("unlimited_queue", False))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        cap = (soft // 4) * _EVENT_LEN if soft > 0 else _READ_SIZE
        self.read_size = max(_EVENT_LEN * 16, min(int(cfg.get("read_size", _READ_SIZE)), cap))
        self.cache_ttl_ns = int(float(cfg.get("cache_ttl_ms", 1000)) * 1_000_000)
        self.degraded = False
        self.tracker: FanotifyTracker | None = None
        self._init = init
        self._group = -1
        self._ctx: SourceContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watches: dict[str, _Watch] = {}

    @property
    def watches(self) -> Mapping[str, Mapping[int, str]]:
        """Per attached container: marked mount id -> mount point."""
        return {name: dict(w.marked) for name, w in self._watches.items()}

    # -------------------------------------------------------------- ContainerAware

    async def attach(self, info: ContainerInfo) -> None:
        """Mark ``info``'s mounts (now, or when :meth:`run` starts). Idempotent per
        ``(name, init_pid)``; a new init pid (restart) drops the old watch and re-marks.

        Raises:
            SourceError: the container is running but not one mount could be marked.
        """
        old = self._watches.get(info.name)
        if old is not None:
            if old.info.init_pid == info.init_pid:
                return
            self._drop(old, remove_marks=True)
        w = self._watches[info.name] = _Watch(info)
        if self._group >= 0:
            self._start(w, "attach", strict=True)

    async def release(self, name: str) -> None:
        """Remove ``name``'s marks (if its mounts still exist; a stopped container's marks
        went with its mounts) and forget everything kept for it. Idempotent."""
        w = self._watches.pop(name, None)
        if w is not None:
            self._drop(w, remove_marks=True)

    # -------------------------------------------------------------- run

    async def run(self, ctx: SourceContext, ready: asyncio.Future[None]) -> None:
        """Open the group, mark attached containers, set ``ready``, read until cancelled.

        Raises:
            SourceError: fanotify is unavailable, or reading the group failed.
        """
        loop = self._loop = asyncio.get_running_loop()
        group, has_fd_error = open_group(fd_error=self.fd_error,
                                         unlimited_queue=self.unlimited_queue, init=self._init)
        self._group = group
        self._ctx = ctx
        self.degraded = not has_fd_error
        tracker = self.tracker = FanotifyTracker(ctx, cache_ttl_ns=self.cache_ttl_ns)
        failed: asyncio.Future[None] = loop.create_future()
        if self.degraded:
            ctx.system("", "source_degraded", {
                "source": "fanotify", "missing": "FAN_REPORT_FD_ERROR",
                "detail": "file events whose file the kernel cannot open for us (procfs "
                          "files of exited processes) fail whole reads and are lost"})

        def on_readable() -> None:
            for _ in range(_BATCH):
                try:
                    buf = os.read(group, self.read_size)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    if exc.errno in (errno.EBADF, errno.EINVAL, errno.EFAULT):
                        loop.remove_reader(group)
                        if not failed.done():
                            failed.set_exception(SourceError(f"fanotify read failed: {exc}"))
                        return
                    tracker.lost_read(exc)
                    continue
                if not buf:
                    return
                try:
                    tracker.feed(buf)
                except Exception as exc:  # a bug: surface it through run()
                    loop.remove_reader(group)
                    if not failed.done():
                        failed.set_exception(exc)
                    return

        loop.add_reader(group, on_readable)
        try:
            for w in list(self._watches.values()):
                self._start(w, "attach", strict=False)
            if not ready.done():
                ready.set_result(None)
            await failed
        finally:
            loop.remove_reader(group)
            for w in self._watches.values():
                self._unfollow(w)
                w.marked.clear()
            self._group = -1
            self._ctx = None
            self.tracker = None
            os.close(group)  # every mark of the group goes with it

    # -------------------------------------------------------------- marking

    def _start(self, w: _Watch, reason: str, *, strict: bool) -> None:
        """Mark a container's mounts and follow its mount table."""
        name, pid = w.info.name, w.info.init_pid
        try:
            w.mountinfo = os.open(f"/proc/{pid}/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
            w.pidfd = os.pidfd_open(pid)
        except OSError as exc:
            self._unfollow(w)
            self._system(name, "source_attach_failed", {
                "init_pid": pid, "error": f"container process gone ({exc.strerror})"})
            return
        added, failed = self._rescan(w)
        if not w.marked:
            self._unfollow(w)
            msg = f"no mount of {name} (init pid {pid}) could be marked: {failed}"
            if strict and os.path.exists(f"/proc/{pid}"):
                raise SourceError(msg)
            self._system(name, "source_attach_failed", {"init_pid": pid, "error": msg})
            return
        self._report_marks(w, reason, added, failed)
        assert self._loop is not None and w.epoll is None
        ep = w.epoll = select.epoll(1)
        ep.register(w.mountinfo, select.EPOLLPRI)
        self._loop.add_reader(ep.fileno(), self._on_mounts, w)
        self._loop.add_reader(w.pidfd, self._on_exit, w)

    def _rescan(self, w: _Watch) -> tuple[list[str], list[str]]:
        """Bring the marks in line with the mount table: (mount points added, failures)."""
        entries = self._mount_table(w)
        by_id = {e.mount_id: e for e in entries}
        tracker = self.tracker
        for mid in [m for m in w.marked if m not in by_id]:  # unmounted: the mark is gone
            del w.marked[mid]
            if tracker is not None:
                tracker.mounts.pop(mid, None)
        added: list[str] = []
        failed: list[str] = []
        points = {e.mount_point for e in entries if wanted(e)}
        for point in sorted(points):
            res = self._mark(w, point, by_id)
            if res is None:
                continue
            if res:
                failed.append(f"{point}: {res}")
            else:
                added.append(point)
        return added, failed

    def _mark(self, w: _Watch, point: str, by_id: Mapping[int, MountEntry]) -> str | None:
        """Mark the mount ``point`` resolves to: None (nothing to do), "" (marked), or why
        not."""
        path = f"/proc/{w.info.init_pid}/root{point}".encode("utf-8", "surrogateescape")
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError as exc:
            return exc.strerror or str(exc)
        try:
            mid = fd_mount_id(fd)
            entry = by_id.get(mid)
            if entry is None:
                return f"resolves outside the container (mount {mid})"
            if mid in w.marked or not wanted(entry):
                return None  # reached through another mount point, or overmounted
            fanotify_mark(self._group, FAN_MARK_ADD | FAN_MARK_MOUNT, self.mask,
                          b"/proc/self/fd/%d" % fd)
        except OSError as exc:
            return exc.strerror or str(exc)
        finally:
            os.close(fd)
        w.marked[mid] = entry.mount_point
        if self.tracker is not None:
            self.tracker.mounts[mid] = w.info.name
        return ""

    def _mount_table(self, w: _Watch) -> list[MountEntry]:
        """Read the mount table through the fd held since attach (always the same mount
        namespace, whatever happens to the pid)."""
        chunks = []
        try:
            os.lseek(w.mountinfo, 0, os.SEEK_SET)
            while chunk := os.read(w.mountinfo, 65536):
                chunks.append(chunk)
        except OSError:
            return []
        return parse_mountinfo(b"".join(chunks).decode("utf-8", "surrogateescape"))

    def _on_mounts(self, w: _Watch) -> None:
        if w.epoll is None:
            return
        with contextlib.suppress(OSError):
            w.epoll.poll(0)  # consume; the wake-up itself is the signal
        had = set(w.marked)
        added, failed = self._rescan(w)
        if added or failed or had != set(w.marked):
            self._report_marks(w, "mount_change", added, failed)

    def _on_exit(self, w: _Watch) -> None:
        # The init process ended: the container stopped (or is restarting). Let go of the
        # mount namespace now; release() or a new attach() follows.
        self._unfollow(w)
        if self.tracker is not None:
            for mid in w.marked:
                self.tracker.mounts.pop(mid, None)
        w.marked.clear()

    def _unfollow(self, w: _Watch) -> None:
        if w.epoll is not None:
            if self._loop is not None:
                self._loop.remove_reader(w.epoll.fileno())
            w.epoll.close()
            w.epoll = None
        if w.pidfd >= 0:
            if self._loop is not None:
                self._loop.remove_reader(w.pidfd)
            os.close(w.pidfd)
            w.pidfd = -1
        if w.mountinfo >= 0:
            os.close(w.mountinfo)
            w.mountinfo = -1

    def _drop(self, w: _Watch, *, remove_marks: bool) -> None:
        """Forget a watch; remove its marks if its mounts are still there."""
        if remove_marks and self._group >= 0 and w.following:
            by_id = {e.mount_id: e for e in self._mount_table(w)}
            for mid, point in w.marked.items():
                if mid in by_id:
                    self._unmark(w, point, mid)
        self._unfollow(w)
        w.marked.clear()
        if self.tracker is not None:
            self.tracker.forget(w.info.name)

    def _unmark(self, w: _Watch, point: str, mid: int) -> None:
        path = f"/proc/{w.info.init_pid}/root{point}".encode("utf-8", "surrogateescape")
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if fd_mount_id(fd) == mid:
                fanotify_mark(self._group, FAN_MARK_REMOVE | FAN_MARK_MOUNT, self.mask,
                              b"/proc/self/fd/%d" % fd)
        except OSError:
            pass  # no such mark any more: fine
        finally:
            os.close(fd)

    def _report_marks(self, w: _Watch, reason: str, added: list[str],
                      failed: list[str]) -> None:
        self._system(w.info.name, "fanotify_marked", {
            "init_pid": w.info.init_pid, "reason": reason, "added": added,
            "failed": failed, "mounts": sorted(w.marked.values())})

    def _system(self, container: str, what: str, detail: Mapping[str, Any]) -> None:
        # Never for a container the supervisor has let go of: that would reopen its
        # (released) audit file for a record nobody needs.
        if self._ctx is not None and self._ctx.watched(container):
            self._ctx.system(container, what, {"source": "fanotify", **detail})
