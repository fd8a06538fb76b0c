"""fanotify event buffers: ``struct fanotify_event_metadata`` plus its info records.

Strategy: sans-I/O. :func:`iter_events` walks the bytes one ``read()`` on a fanotify group
returned and yields one :class:`FanEvent` per record; :func:`parse` is the list form.
Nothing here touches a file descriptor: the event's ``fd`` (an open file the kernel created
in the reader's fd table) is only reported, and closing it is the caller's job. Because
that matters, :func:`iter_events` is lazy: every event before a malformed one has been
yielded (and can be handled and closed) before :class:`~coi_watch.errors.WireError` is
raised.

Layout (``linux/fanotify.h``; the kernel never splits a record across reads)::

    struct fanotify_event_metadata {   24 bytes, FAN_EVENT_METADATA_LEN
        __u32 event_len;               whole record, metadata + info records
        __u8  vers;                    FANOTIFY_METADATA_VERSION = 3
        __u8  reserved;
        __u16 metadata_len;            24
        __aligned_u64 mask;            FAN_* bits (several when the kernel merged events)
        __s32 fd;                      event file; FAN_NOFD (-1), or -errno with FAN_REPORT_FD_ERROR
        __s32 pid;                     tgid of the process that caused it (tid with FAN_REPORT_TID)
    };
    struct fanotify_event_info_header { __u8 info_type; __u8 pad; __u16 len; }   then the body

The info records present depend on ``fanotify_init`` flags (``FAN_REPORT_FID``,
``FAN_REPORT_PIDFD``, ...); their bodies are described by the table :data:`INFO_TYPES`
(data, not an if-chain). An info type this module does not know is kept as a number in
:attr:`FanEvent.unknown_info`, so a newer kernel's records are counted, not dropped.

Invariant (fuzzed with hypothesis): whatever bytes come in, :func:`parse` either returns
events or raises :class:`~coi_watch.errors.WireError`, never anything else.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from coi_watch.errors import WireError

__all__ = (
    "EVENT_OPS",
    "FANOTIFY_METADATA_VERSION",
    "FAN_ACCESS",
    "FAN_CLOSE_NOWRITE",
    "FAN_CLOSE_WRITE",
    "FAN_EPIDFD",
    "FAN_EVENT_METADATA_LEN",
    "FAN_MODIFY",
    "FAN_NOFD",
    "FAN_ONDIR",
    "FAN_OPEN",
    "FAN_OPEN_EXEC",
    "FAN_Q_OVERFLOW",
    "INFO_TYPES",
    "FanEvent",
    "Fid",
    "iter_events",
    "mask_of",
    "ops_of",
    "parse",
)

# linux/fanotify.h: event bits of fanotify_event_metadata.mask (and of fanotify_mark masks).
FAN_ACCESS: Final = 0x00000001
FAN_MODIFY: Final = 0x00000002
FAN_CLOSE_WRITE: Final = 0x00000008
FAN_CLOSE_NOWRITE: Final = 0x00000010
FAN_OPEN: Final = 0x00000020
FAN_OPEN_EXEC: Final = 0x00001000
FAN_Q_OVERFLOW: Final = 0x00004000
FAN_ONDIR: Final = 0x40000000
# linux/fanotify.h: "No fd set in event", and a pidfd for a process that already ended.
FAN_NOFD: Final = -1
FAN_EPIDFD: Final = -2
FANOTIFY_METADATA_VERSION: Final = 3
FAN_EVENT_METADATA_LEN: Final = 24

_META = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_INFO_HDR = struct.Struct("=BBH")  # info_type, pad, len
assert _META.size == FAN_EVENT_METADATA_LEN

EVENT_OPS: Mapping[int, str] = MappingProxyType({
    # Order is the order a reader should report merged bits in: what happened first first.
    FAN_OPEN_EXEC: "open_exec",
    FAN_OPEN: "open",
    FAN_ACCESS: "access",
    FAN_MODIFY: "modify",
    FAN_CLOSE_WRITE: "close_write",
    FAN_CLOSE_NOWRITE: "close_nowrite",
})
"""Event bit -> the ``op`` name of :class:`coi_watch.events.FileAccess`."""


def ops_of(mask: int) -> tuple[str, ...]:
    """The ``op`` names of a (possibly merged) event mask, in :data:`EVENT_OPS` order.

    The kernel merges queued events of one file by one process into a single record
    (``fanotify_merge``), so ``FAN_OPEN | FAN_CLOSE_NOWRITE`` is two operations. An exec's
    open carries both ``FAN_OPEN`` and ``FAN_OPEN_EXEC``; that is one operation,
    ``open_exec``.
    """
    if mask & FAN_OPEN_EXEC:
        mask &= ~FAN_OPEN
    return tuple(op for bit, op in EVENT_OPS.items() if mask & bit)


def mask_of(ops: Iterable[str]) -> int:
    """The event mask for ``op`` names (the inverse of :func:`ops_of`).

    Raises:
        ValueError: an unknown op name.
    """
    by_name = {op: bit for bit, op in EVENT_OPS.items()}
    mask = 0
    for op in ops:
        if op not in by_name:
            raise ValueError(f"unknown fanotify op {op!r} (known: {', '.join(by_name)})")
        mask |= by_name[op]
    return mask


@dataclass(frozen=True, slots=True, kw_only=True)
class Fid:
    """A file identifier info record (``FAN_REPORT_FID`` family).

    ``kind`` is the :data:`INFO_TYPES` name (``fid``, ``dfid``, ``dfid_name``,
    ``old_dfid_name``, ``new_dfid_name``); ``fsid`` the ``__kernel_fsid_t`` pair;
    ``handle_type``/``handle`` the opaque ``struct file_handle`` (for
    ``open_by_handle_at``); ``name`` the entry name of the ``*_name`` kinds, decoded with
    backslash escapes for bytes that are not UTF-8.
    """

    kind: str
    fsid: tuple[int, int]
    handle_type: int
    handle: bytes
    name: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class FanEvent:
    """One decoded fanotify record, named after the kernel's fields.

    ``fd`` is the event file opened for the reader (``FAN_NOFD`` when there is none, or
    ``-errno`` when a ``FAN_REPORT_FD_ERROR`` group's open failed); ``pid`` the process that
    caused the event. Info record fields keep their defaults when the record is absent:
    ``pidfd`` (``FAN_REPORT_PIDFD``; ``FAN_NOFD`` none, ``FAN_EPIDFD`` process gone),
    ``error``/``error_count`` (``FAN_FS_ERROR``), ``range`` (offset, count of a pre-content
    event), ``mnt_id`` (mount events), ``fids``.
    """

    mask: int
    fd: int
    pid: int
    pidfd: int = FAN_NOFD
    error: int = 0
    error_count: int = 0
    range: tuple[int, int] | None = None
    mnt_id: int = 0
    fids: tuple[Fid, ...] = ()
    unknown_info: tuple[int, ...] = ()

    @property
    def overflow(self) -> bool:
        """The kernel's queue overflowed: events were lost (``FAN_Q_OVERFLOW``)."""
        return bool(self.mask & FAN_Q_OVERFLOW)

    @property
    def ops(self) -> tuple[str, ...]:
        """The operations in :attr:`mask` (see :func:`ops_of`)."""
        return ops_of(self.mask)

    @property
    def fd_errno(self) -> int:
        """Why there is no event file: ``-fd`` for a negative ``fd``, else 0.

        With ``FAN_REPORT_FD_ERROR`` this is the errno of the kernel's failed open (e.g.
        ``ESRCH`` for ``/proc/PID/environ`` of a process that already exited); 1 is also
        ``FAN_NOFD`` (an event that never has a file, like an overflow).
        """
        return -self.fd if self.fd < 0 else 0


# ------------------------------------------------------------------------ info records

Decoder = Callable[[memoryview, int], dict[str, Any]]

_PIDFD = struct.Struct("=i")
_ERROR = struct.Struct("=iI")
_RANGE = struct.Struct("=IQQ")  # pad, offset, count
_MNT = struct.Struct("=IQ")  # hdr is 4 bytes, __u64 mnt_id is 8-aligned: 4 bytes of padding
_FSID = struct.Struct("=ii")
_HANDLE = struct.Struct("=Ii")  # struct file_handle: handle_bytes, handle_type


def _need(body: memoryview, st: struct.Struct, what: str) -> tuple[Any, ...]:
    if len(body) < st.size:
        raise WireError(f"fanotify {what} info record: {len(body)} bytes, need {st.size}")
    return st.unpack_from(body, 0)


def _pidfd(body: memoryview, _type: int) -> dict[str, Any]:
    (pidfd,) = _need(body, _PIDFD, "pidfd")
    return {"pidfd": pidfd}


def _error(body: memoryview, _type: int) -> dict[str, Any]:
    error, count = _need(body, _ERROR, "error")
    return {"error": error, "error_count": count}


def _range(body: memoryview, _type: int) -> dict[str, Any]:
    _pad, offset, count = _need(body, _RANGE, "range")
    return {"range": (offset, count)}


def _mnt(body: memoryview, _type: int) -> dict[str, Any]:
    _pad, mnt_id = _need(body, _MNT, "mnt")
    return {"mnt_id": mnt_id}


def _fid(body: memoryview, info_type: int) -> dict[str, Any]:
    kind = INFO_TYPES[info_type][0]
    fsid = _need(body, _FSID, kind)
    if len(body) < _FSID.size + _HANDLE.size:
        raise WireError(f"fanotify {kind} info record: no room for a file_handle")
    nbytes, handle_type = _HANDLE.unpack_from(body, _FSID.size)
    start = _FSID.size + _HANDLE.size
    end = start + nbytes
    if end > len(body):
        raise WireError(f"fanotify {kind}: handle_bytes {nbytes} exceeds the record")
    name = ""
    if kind.endswith("_name"):
        # A NUL-terminated entry name follows the handle (then padding to 4 bytes).
        rest = bytes(body[end:])
        nul = rest.find(b"\0")
        if nul < 0:
            raise WireError(f"fanotify {kind}: name is not NUL-terminated")
        name = rest[:nul].decode("utf-8", "backslashreplace")
    fid = Fid(kind=kind, fsid=(fsid[0], fsid[1]), handle_type=handle_type,
              handle=bytes(body[start:end]), name=name)
    return {"fid": fid}


INFO_TYPES: Mapping[int, tuple[str, Decoder]] = MappingProxyType({
    # linux/fanotify.h: FAN_EVENT_INFO_TYPE_*
    1: ("fid", _fid),
    2: ("dfid_name", _fid),
    3: ("dfid", _fid),
    4: ("pidfd", _pidfd),
    5: ("error", _error),
    6: ("range", _range),  # 6.14+
    7: ("mnt", _mnt),  # 6.15+
    10: ("old_dfid_name", _fid),  # FAN_RENAME
    12: ("new_dfid_name", _fid),
})
"""``info_type`` -> (name, body decoder)."""


def _info(rec: memoryview) -> dict[str, Any]:
    """Decode the info records of one event (``rec`` is what follows the metadata)."""
    out: dict[str, Any] = {}
    fids: list[Fid] = []
    unknown: list[int] = []
    off = 0
    while off < len(rec):
        if len(rec) - off < _INFO_HDR.size:
            raise WireError(f"fanotify: {len(rec) - off} stray bytes after the info records")
        info_type, _pad, ln = _INFO_HDR.unpack_from(rec, off)
        if ln < _INFO_HDR.size or off + ln > len(rec):
            raise WireError(f"fanotify info record of type {info_type}: bad len {ln}")
        body = rec[off + _INFO_HDR.size : off + ln]
        entry = INFO_TYPES.get(info_type)
        if entry is None:
            unknown.append(info_type)
        else:
            got = entry[1](body, info_type)
            fid = got.pop("fid", None)
            if fid is not None:
                fids.append(fid)
            out.update(got)
        off += ln
    if fids:
        out["fids"] = tuple(fids)
    if unknown:
        out["unknown_info"] = tuple(unknown)
    return out


# ------------------------------------------------------------------------ events


def iter_events(buf: bytes | bytearray | memoryview) -> Iterator[FanEvent]:
    """Yield the events of one ``read()`` buffer, in order, lazily.

    Raises:
        WireError: a truncated record, impossible lengths or an unknown metadata version
            (raised only after every earlier event has been yielded).
    """
    view = memoryview(buf)
    off = 0
    total = len(view)
    while off < total:
        left = total - off
        if left < FAN_EVENT_METADATA_LEN:
            raise WireError(f"fanotify: truncated event metadata ({left} bytes)")
        event_len, vers, _res, meta_len, mask, fd, pid = _META.unpack_from(view, off)
        if vers != FANOTIFY_METADATA_VERSION:
            raise WireError(f"fanotify metadata version {vers}, expected "
                            f"{FANOTIFY_METADATA_VERSION}")
        if event_len < FAN_EVENT_METADATA_LEN or event_len > left:
            raise WireError(f"fanotify event_len {event_len} (have {left} bytes)")
        if meta_len < FAN_EVENT_METADATA_LEN or meta_len > event_len:
            raise WireError(f"fanotify metadata_len {meta_len} (event_len {event_len})")
        extra = _info(view[off + meta_len : off + event_len]) if event_len > meta_len else {}
        yield FanEvent(mask=mask, fd=fd, pid=pid, **extra)
        off += event_len


def parse(buf: bytes | bytearray | memoryview) -> list[FanEvent]:
    """Decode a whole ``read()`` buffer (see :func:`iter_events`).

    Raises:
        WireError: as :func:`iter_events`; events before the bad record are lost with it,
            so a reader that owns the event fds should use :func:`iter_events`.
    """
    return list(iter_events(buf))
