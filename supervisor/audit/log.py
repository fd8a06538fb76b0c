"""The audit writer: one hash-chained JSONL file per container, durable where it matters.

Strategy: appending is synchronous and cheap, so the order of records is fixed at the
moment they are logged: :meth:`AuditLog.event` (``verdict``, ``action``, ``system``)
serialises the payload once (orjson), redacts it if its bytes hint at a secret, and queues
it for its file. Nothing touches the disk on that path.

Chaining happens when records are written, under ``flock(2)`` on the file: the writer
checks whether the file grew since its own last write (another process appended: ``coi-watch
resume`` records its action in the file a running supervisor writes too) and if so chains
onto the real last line; then it gives each queued record the next ``seq`` and the previous
line's hash (:mod:`coi_watch.audit.chain`) and writes them. So any number of processes can
append to one file and its chain stays whole.

Durability is asked for, not implied. ``await sync(container)`` writes the buffer and
fsyncs in a worker thread (``asyncio.to_thread``); the response policy calls it after a
verdict or an action record and before it reports the response done. Event records are
written by :meth:`AuditLog.run_flusher` every ``interval_s`` (fsynced too, in one batch),
or by the next ``sync`` of the same file, which carries them along in order. A per-file
asyncio lock keeps one writer thread per file, a per-file thread lock keeps writes from
interleaving with :meth:`flush_sync`, and a ``sync`` whose bytes an earlier ``sync`` already
made durable returns without a thread (group commit).

Failures keep data: a write that fails (``ENOSPC``, ``EIO``) raises :class:`AuditError` from
``sync``; the file is truncated back to where it was (a short write leaves no half line
for anyone to chain onto) and every record stays queued, so the next attempt writes them
as if nothing had happened. If the disk
stays full, the buffer grows up to ``max_pending`` bytes; beyond that *event* records (never
verdicts, actions or system records) are dropped before they get a ``seq``, and a
``records_dropped`` system record says how many once writing works again.

Reopening continues a file: its last line gives ``seq`` and ``prev``. A torn tail (bytes
after the last newline: the writer died mid-write) is never chained onto. It is closed with
a newline and followed by a ``recovered`` system record chained to the last good line, so
``audit verify`` reports the torn line and everything else still verifies up to it.

Files are 0600 in a 0700 directory (created so, tightened if found looser), opened with
``O_NOFOLLOW``. System records for no particular container go to ``_supervisor.jsonl``: an
Incus instance name cannot start with ``_``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from coi_watch.audit.chain import GENESIS, KINDS, encode_record, line_hash, parse_line
from coi_watch.audit.redact import Redactor
from coi_watch.errors import AuditError
from coi_watch.events import Event
from coi_watch.verdicts import ActionRecord, Verdict

__all__ = ("SUPERVISOR_FILE", "AuditLog", "AuditStats", "default_audit_dir")

SUPERVISOR_FILE: Final = "_supervisor.jsonl"
"""The file of system records whose container is ``""``."""

_log = logging.getLogger(__name__)

_CHUNK: Final = 1 << 20  # bytes handed to one write(2)
_BLOCK: Final = 1 << 16  # bytes read per step when scanning a file's tail
_MAX_PENDING: Final = 64 << 20
_REPORT_EVERY_S: Final = 30.0
_REPR_CAP: Final = 64 << 10


def default_audit_dir() -> Path:
    """``~/.coi/audit``, expanded."""
    return Path("~/.coi/audit").expanduser()


@dataclass(slots=True)
class AuditStats:
    """Running counters. ``records`` counts records accepted per kind (given a ``seq``);
    ``dropped`` counts event records refused because a file's buffer was full."""

    records: dict[str, int] = field(default_factory=lambda: dict.fromkeys(sorted(KINDS), 0))
    bytes_written: int = 0
    fsyncs: int = 0
    write_errors: int = 0
    dropped: int = 0


Queued = tuple[str, int, int, bytes]
"""A record waiting to be chained and written: ``(kind, wall_ns, ts_ns, data)``."""


class _File:
    """One open audit file and its queued records.

    ``appended`` and ``durable`` count bytes of payload queued since the file was opened and
    made durable; ``durable >= appended`` means nothing is pending. ``seq``/``prev``/``size``
    are the chain and the file size as of this process's last write (another process may
    have appended since: the writer checks ``size``). ``partial`` holds bytes that must be
    written before the next record (a newline closing a torn tail). ``state`` guards the
    queue; ``io`` serialises writing.
    """

    __slots__ = ("alock", "appended", "container", "dropped", "durable", "failing_since",
                 "fd", "io", "last_report", "partial", "path", "prev", "queue", "seq", "size",
                 "state")

    def __init__(self, container: str, path: Path, fd: int, seq: int, prev: str,
                 size: int) -> None:
        self.container = container
        self.path = path
        self.fd = fd
        self.seq = seq
        self.prev = prev
        self.size = size
        self.queue: list[Queued] = []
        self.partial = bytearray()
        self.appended = 0
        self.durable = 0
        self.dropped = 0
        self.state = threading.Lock()
        self.io = threading.Lock()
        self.alock = asyncio.Lock()
        self.failing_since = 0.0
        self.last_report = 0.0


class AuditLog:
    """The audit writer for one directory (see the module docstring).

    ``redactor`` defaults to :meth:`Redactor.default` (pass :meth:`Redactor.disabled` to
    write payloads as they are); ``fsync=False`` skips fsync(2) (tests, benchmarks).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        redactor: Redactor | None = None,
        fsync: bool = True,
        max_pending: int = _MAX_PENDING,
    ) -> None:
        self.directory = Path(directory).expanduser()
        self.redactor = redactor if redactor is not None else Redactor.default()
        self.fsync = fsync
        self.max_pending = max_pending
        self.stats = AuditStats()
        self._files: dict[str, _File] = {}
        self._open_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._dir_ready = False
        self._interval_s = 0.2

    # ------------------------------------------------------------------ paths, checks

    def path_for(self, container: str) -> Path:
        """The file of ``container`` (``""``: the supervisor's own file).

        Raises:
            AuditError: the name could escape the directory or clash with the supervisor
                file (a path separator, ``..``, a leading ``.`` or ``_``, NUL, too long).
        """
        if container == "":
            return self.directory / SUPERVISOR_FILE
        if ("/" in container or "\\" in container or "\0" in container or ".." in container
                or container.startswith((".", "_")) or len(container.encode()) > 200):
            raise AuditError(f"refusing container name {container!r} as an audit file name")
        return self.directory / f"{container}.jsonl"

    def check(self) -> None:
        """Create the directory (0700, parents too) or tighten it, and prove it writable.

        Raises:
            AuditError: the directory cannot be created, is not a directory, or a file in
                it cannot be created, written and synced.
        """
        self._ensure_dir()
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=self.directory)
            try:
                os.write(fd, b"ok\n")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            raise AuditError(f"audit directory {self.directory} is not writable: "
                             f"{_strerror(exc)}") from None

    def _ensure_dir(self) -> None:
        d = self.directory
        try:
            missing: list[Path] = []
            p = d
            while not os.path.lexists(p):
                missing.append(p)
                p = p.parent
            for q in reversed(missing):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(q, 0o700)
            st = os.stat(d)
            if not stat.S_ISDIR(st.st_mode):
                raise AuditError(f"audit directory {d} exists and is not a directory")
            if stat.S_IMODE(st.st_mode) != 0o700 and (st.st_mode & 0o077 or missing):
                # Looser than 0700 (or created under an odd umask): records name processes,
                # hosts and paths of the user's work.
                if not missing:
                    _log.warning("audit directory %s had mode %o; tightening to 0700", d,
                                 stat.S_IMODE(st.st_mode))
                os.chmod(d, 0o700)
        except OSError as exc:
            raise AuditError(f"audit directory {d} cannot be created or used: "
                             f"{_strerror(exc)}") from None
        self._dir_ready = True

    # ------------------------------------------------------------------ appending

    def event(self, ev: Event) -> None:
        """Append an event record (batched: made durable by the flusher or a ``sync``).

        Raises:
            AuditError: the container's file cannot be opened.
        """
        self._append(ev.container, "event", ev.wall_ns, ev.ts_ns, self._payload(ev),
                     droppable=True)

    def verdict(self, v: Verdict) -> None:
        """Append a verdict record; ``await sync(v.container)`` makes it durable.

        Raises:
            AuditError: the container's file cannot be opened.
        """
        self._append(v.container, "verdict", v.wall_ns, v.ts_ns, self._payload(v))

    def action(self, a: ActionRecord) -> None:
        """Append an action record; ``await sync(a.container)`` makes it durable.

        Raises:
            AuditError: the container's file cannot be opened.
        """
        self._append(a.container, "action", a.wall_ns, a.ts_ns, self._payload(a))

    def system(self, container: str, what: str, detail: Mapping[str, Any]) -> None:
        """Append a system record ``{"what": what, **detail}`` (``container`` may be ``""``).

        Raises:
            AuditError: the file cannot be opened.
        """
        data = {"what": what, **{k: v for k, v in detail.items() if k != "what"}}
        self._append(container, "system", time.time_ns(), time.monotonic_ns(),
                     self._payload(data))

    def _payload(self, obj: Any) -> bytes:
        try:
            raw = orjson.dumps(obj, default=_fallback, option=orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError as exc:
            # A detector bug must not cost the record that it fired: keep what we can.
            raw = orjson.dumps({"unserialisable": str(exc), "repr": repr(obj)[:_REPR_CAP]})
        return self.redactor.redact_json(raw)

    def _append(self, container: str, kind: str, wall_ns: int, ts_ns: int, data: bytes,
                *, droppable: bool = False) -> None:
        f = self._files.get(container) or self._open(container)
        with f.state:
            if droppable and f.appended - f.durable >= self.max_pending:
                f.dropped += 1
                with self._stats_lock:
                    self.stats.dropped += 1
                return
            f.queue.append((kind, wall_ns, ts_ns, data))
            f.appended += len(data)
        with self._stats_lock:
            self.stats.records[kind] += 1

    # ------------------------------------------------------------------ opening

    def _open(self, container: str) -> _File:
        path = self.path_for(container)
        with self._open_lock:
            f = self._files.get(container)
            if f is not None:
                return f
            if not self._dir_ready:
                self._ensure_dir()
            try:
                fd, created = _open_file(path)
            except FileNotFoundError:  # the directory was removed under us
                self._ensure_dir()
                fd, created = _open_file(path)
            except OSError as exc:
                raise AuditError(f"cannot open audit file {path}: {_strerror(exc)}") from None
            try:
                notes = _secure(fd, path, created, self.directory)
                seq, prev, prefix, recovered = _recover(fd)
            except OSError as exc:
                os.close(fd)
                raise AuditError(f"cannot open audit file {path}: {_strerror(exc)}") from None
            except AuditError:
                os.close(fd)
                raise
            f = _File(container, path, fd, seq, prev, os.fstat(fd).st_size)
            f.partial += prefix
            self._files[container] = f
        for what, detail in notes:
            self.system(container, what, detail)
        if recovered is not None:
            _log.warning("audit file %s: %s", path, recovered["reason"])
            self.system(container, "recovered", recovered)
        return f

    # ------------------------------------------------------------------ writing

    def _drain(self, f: _File) -> None:
        """Chain, write and fsync ``f``'s queued records (caller holds ``f.io``)."""
        if f.fd < 0:
            raise AuditError(f"audit file {f.path} is closed")
        with f.state:
            batch = list(f.queue)
            batch_bytes = f.appended - f.durable
        if not batch and not f.partial:
            return
        try:
            fcntl.flock(f.fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise AuditError(_write_failure(f, exc)) from exc
        try:
            self._write_locked(f, batch)
        finally:
            fcntl.flock(f.fd, fcntl.LOCK_UN)
        with f.state:
            del f.queue[: len(batch)]
            f.durable += batch_bytes

    def _write_locked(self, f: _File, batch: list[Queued]) -> None:
        """The part of :meth:`_drain` done under the file lock."""
        try:
            size = os.fstat(f.fd).st_size
            if size != f.size:
                # Another process appended (or the file was cut): chain onto what is there.
                f.seq, f.prev, prefix, _ = _recover(f.fd)
                f.partial[:] = prefix
            seq, prev = f.seq, f.prev
            out = bytearray(f.partial)
            for kind, wall_ns, ts_ns, data in batch:
                seq += 1
                line = encode_record(seq=seq, kind=kind, wall_ns=wall_ns, ts_ns=ts_ns,
                                     container=f.container, data=data, prev=prev)
                prev = line_hash(line)
                out += line
                out += b"\n"
        except OSError as exc:
            raise AuditError(_write_failure(f, exc)) from exc
        view = memoryview(out)
        done = 0
        try:
            while done < len(out):
                done += os.write(f.fd, view[done : done + _CHUNK])
            if self.fsync:
                os.fsync(f.fd)
                with self._stats_lock:
                    self.stats.fsyncs += 1
        except OSError as exc:
            with self._stats_lock:
                self.stats.write_errors += 1
            # Leave no half line behind for this or any other writer to chain onto; the
            # records stay queued and are chained afresh by the next attempt.
            with contextlib.suppress(OSError):
                os.ftruncate(f.fd, size)
            raise AuditError(_write_failure(f, exc)) from exc
        view.release()
        f.seq, f.prev, f.size = seq, prev, size + len(out)
        f.partial.clear()
        with self._stats_lock:
            self.stats.bytes_written += len(out)

    def _write_out(self, f: _File) -> None:
        """Make everything appended to ``f`` so far durable (blocking)."""
        with f.io:
            self._drain(f)
            if f.dropped:
                with f.state:
                    count, f.dropped = f.dropped, 0
                self.system(f.container, "records_dropped", {
                    "count": count,
                    "reason": "audit buffer full while the file could not be written"})
                self._drain(f)

    async def _sync_file(self, f: _File) -> None:
        target = f.appended
        if f.durable >= target:
            return
        async with f.alock:
            if f.durable >= target:  # an earlier sync carried our bytes (group commit)
                return
            await asyncio.to_thread(self._write_out, f)

    async def sync(self, container: str | None = None) -> None:
        """Write and fsync everything appended so far, for one container or all.

        Raises:
            AuditError: a write or fsync failed (disk full, I/O error); the records are kept
                and a later ``sync`` retries them. With several files, every file is tried
                and the first error raised.
        """
        if container is None:
            files = list(self._files.values())
        else:
            one = self._files.get(container)
            files = [one] if one is not None else []
        first: AuditError | None = None
        for f in files:
            try:
                await self._sync_file(f)
            except AuditError as exc:
                first = first or exc
        if first is not None:
            raise first

    def flush_sync(self) -> None:
        """:meth:`sync` for every file, blocking the caller (shutdown paths, tests).

        Raises:
            AuditError: as :meth:`sync`.
        """
        first: AuditError | None = None
        for f in list(self._files.values()):
            try:
                self._write_out(f)
            except AuditError as exc:
                first = first or exc
        if first is not None:
            raise first

    async def run_flusher(self, interval_s: float = 0.2) -> None:
        """Every ``interval_s``, make pending records durable; runs until cancelled.

        A failure is logged (``coi_watch.audit.log`` at ERROR, which reaches stderr even
        without logging configured) when it starts, every 30 s while it lasts, and when it
        ends; the records stay pending and are retried on the next tick.
        """
        self._interval_s = interval_s
        while True:
            await asyncio.sleep(interval_s)
            await self.flush_round()

    async def flush_round(self) -> None:
        """One round of :meth:`run_flusher`: sync each file with pending records, never
        raising (failures are logged and retried next round)."""
        for f in list(self._files.values()):
            if f.durable >= f.appended and not f.dropped:
                continue
            try:
                await self._sync_file(f)
            except AuditError as exc:
                self._report(f, exc)
            else:
                if f.failing_since:
                    _log.error("audit file %s: writing again after %.1f s of failures",
                               f.path, time.monotonic() - f.failing_since)
                    f.failing_since = 0.0

    def _report(self, f: _File, exc: AuditError) -> None:
        now = time.monotonic()
        if not f.failing_since:
            f.failing_since = f.last_report = now
            _log.error("%s (retrying every %.1f s)", exc, self._interval_s)
        elif now - f.last_report >= _REPORT_EVERY_S:
            f.last_report = now
            _log.error("%s (still failing after %.0f s)", exc, now - f.failing_since)

    # ------------------------------------------------------------------ closing

    def release(self, container: str) -> None:
        """Flush, fsync and close ``container``'s file (the container is gone). Blocking.

        Raises:
            AuditError: the final write failed; the file stays open with its records pending.
        """
        f = self._files.get(container)
        if f is None:
            return
        self._write_out(f)
        self._close_file(f)

    async def close(self) -> None:
        """Sync every file and close it. Appending afterwards reopens files as needed.

        Raises:
            AuditError: a final write failed; files that still hold records stay open, so
                :meth:`flush_sync` can retry them.
        """
        try:
            await self.sync()
        finally:
            for f in list(self._files.values()):
                if f.durable >= f.appended:
                    self._close_file(f)

    def _close_file(self, f: _File) -> None:
        with f.io:
            if f.fd >= 0:
                os.close(f.fd)
                f.fd = -1
        if self._files.get(f.container) is f:
            del self._files[f.container]

    def pending(self, container: str | None = None) -> int:
        """Bytes appended but not yet durable, for one container or all."""
        files = self._files.values() if container is None else (
            [self._files[container]] if container in self._files else [])
        return sum(f.appended - f.durable for f in files)


# --------------------------------------------------------------------------- helpers


def _fallback(obj: Any) -> Any:
    """orjson ``default``: sets as sorted lists, bytes as text, anything else as repr."""
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    if isinstance(obj, bytes | bytearray):
        return bytes(obj).decode("utf-8", "backslashreplace")
    return repr(obj)[:_REPR_CAP]


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _write_failure(f: _File, exc: OSError) -> str:
    what = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
            errno.EIO: "I/O error", errno.EROFS: "file system is read-only"}.get(
                exc.errno or 0, "write failed")
    with f.state:
        kept = len(f.queue)
    return (f"audit file {f.path}: {what} ({_strerror(exc)}); {kept} records kept "
            f"in memory for the next sync")


def _open_file(path: Path) -> tuple[int, bool]:
    """Open (or create, 0600) ``path`` for appending and reading its tail."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600), True
    except FileExistsError:
        return os.open(path, flags), False


def _secure(fd: int, path: Path, created: bool,
            directory: Path) -> list[tuple[str, dict[str, Any]]]:
    """Check the file is a regular file with mode 0600 (tighten it if looser); make a new
    file's directory entry durable. Returns system records to write about it."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise AuditError(f"audit file {path} is not a regular file")
    notes: list[tuple[str, dict[str, Any]]] = []
    mode = stat.S_IMODE(st.st_mode)
    if mode != 0o600:
        os.fchmod(fd, 0o600)
        if not created:
            _log.warning("audit file %s had mode %o; tightening to 0600", path, mode)
            notes.append(("permissions_tightened", {"was": f"{mode:04o}", "now": "0600"}))
    if created:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        except OSError as exc:  # some file systems cannot sync a directory; not fatal
            if exc.errno not in (errno.EINVAL, errno.EROFS):
                raise
        finally:
            os.close(dfd)
    return notes


def _recover(fd: int) -> tuple[int, str, bytes, dict[str, Any] | None]:
    """Where an existing file's chain continues: ``(seq, prev, prefix, recovered)``.

    ``prefix`` is written before the next record (a newline closing a torn tail);
    ``recovered`` is the detail of the ``recovered`` system record to write, or None when
    the file ended cleanly.
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return 0, GENESIS, b"", None
    end = _end_of_last_line(fd, size)
    fragment = os.pread(fd, size - end, end) if end < size else b""
    seq, prev, unreadable = 0, GENESIS, 0
    for line in _lines_backward(fd, end):
        try:
            obj = parse_line(line)
        except ValueError:
            unreadable += 1
            continue
        seq, prev = obj["seq"], line_hash(line)
        break
    if not fragment and not unreadable:
        return seq, prev, b"", None
    detail: dict[str, Any] = {"after_seq": seq, "torn_bytes": len(fragment),
                              "unreadable_lines": unreadable}
    if fragment:
        try:
            last: dict[str, Any] | None = parse_line(fragment)
        except ValueError:
            last = None
        if last is not None and not unreadable and last["seq"] == seq + 1 \
                and last["prev"] == prev:
            # A whole record that only lost its newline: keep it, it chains.
            detail.update(reason="last record had no trailing newline; completed it",
                          after_seq=seq + 1, torn_bytes=0)
            return seq + 1, line_hash(fragment), b"\n", detail
        detail["reason"] = (f"torn record of {len(fragment)} bytes at the end (the writer "
                            f"stopped mid-write); not chained onto")
        return seq, prev, b"\n", detail
    detail["reason"] = f"{unreadable} unreadable line(s) at the end; not chained onto"
    return seq, prev, b"", detail


def _end_of_last_line(fd: int, size: int) -> int:
    """Offset just past the file's last newline (0 if it has none)."""
    pos = size
    while pos > 0:
        start = max(0, pos - _BLOCK)
        i = os.pread(fd, pos - start, start).rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def _lines_backward(fd: int, end: int) -> Iterator[bytes]:
    """The complete lines in the first ``end`` bytes (``end`` just past a newline), last
    line first, without their newlines."""
    pos = end - 1  # skip the final newline
    carry = b""
    while pos > 0:
        start = max(0, pos - _BLOCK)
        parts = (os.pread(fd, pos - start, start) + carry).split(b"\n")
        carry = parts[0]
        yield from reversed(parts[1:])
        pos = start
    if end > 0:
        yield carry
