"""Tests for coi_watch.sources.fanotify: mount selection, event handling, and a real container.

The unit tests feed :class:`FanotifyTracker` records whose fds are files the test opened
itself (the tracker resolves and closes them just like kernel-made event fds). The
``incus`` tests attach the source to a real busybox container.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from coi_watch.containers import ContainerInfo
from coi_watch.errors import SourceError
from coi_watch.events import Event, FileAccess
from coi_watch.protocols import ContainerAware, Source, SourceContext
from coi_watch.sources.attribution import MISSING, Attribution
from coi_watch.sources.fanotify import (
    FAN_REPORT_FD_ERROR,
    FanotifySource,
    FanotifyTracker,
    MountEntry,
    fanotify_init,
    fd_mount_id,
    open_group,
    parse_mountinfo,
    wanted,
)
from coi_watch.wire.fanotify import (
    FAN_CLOSE_NOWRITE,
    FAN_CLOSE_WRITE,
    FAN_OPEN,
    FAN_OPEN_EXEC,
    FAN_Q_OVERFLOW,
    FanEvent,
)

IMAGE = os.environ.get("COI_TESTBED_IMAGE", "coi-bb")

# /proc/PID/mountinfo of a coi-bb container (Incus 6, dir pool), plus a hot-plugged disk
# device, a tmpfs the container mounted itself and a mount point with a space.
MOUNTINFO = r"""
70 45 254:0 /var/lib/incus/storage-pools/default/containers/c1/rootfs / rw - ext4 /dev/vda rw
71 70 0:42 / /dev rw,relatime shared:4 - tmpfs none rw,size=492k,mode=755,uid=1000000,gid=1000000
72 70 0:43 / /proc rw,nosuid,nodev,noexec,relatime shared:18 - proc proc rw
73 70 0:44 / /sys rw,relatime shared:19 - sysfs sysfs rw
74 71 0:6 /fuse /dev/fuse rw,relatime shared:5 - devtmpfs devtmpfs rw,size=12334524k
76 73 0:22 /fs/fuse/connections /sys/fs/fuse/connections rw,relatime shared:20 - sysfs sysfs rw
81 71 0:40 / /dev/incus rw,relatime shared:7 - tmpfs tmpfs rw,size=100k,mode=755
82 71 0:39 /c1 /dev/.incus-mounts rw,relatime master:1 - tmpfs tmpfs rw,size=100k,mode=711
89 71 0:45 / /dev/pts rw,nosuid,noexec,relatime shared:15 - devpts devpts rw,gid=1000005
92 72 0:42 /.lxc-boot-id /proc/sys/kernel/random/boot_id ro,nosuid,relatime shared:4 - tmpfs none rw
46 72 0:46 / /proc rw,relatime shared:8 - proc proc rw
49 70 254:0 /tmp/ws /workspace rw,relatime shared:26 - ext4 /dev/vda rw,discard
47 70 0:47 / /mnt/t rw,relatime shared:25 - tmpfs none rw,uid=1000000
50 70 0:48 / /mnt/with\040space rw,relatime - ext4 /dev/vdb rw
garbage line
"""


def test_parse_mountinfo() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    assert len(entries) == 14  # the garbage line is skipped
    root = entries[0]
    assert root == MountEntry(
        mount_id=70, parent_id=45,
        root="/var/lib/incus/storage-pools/default/containers/c1/rootfs", mount_point="/",
        fstype="ext4", source="/dev/vda")
    assert entries[-1].mount_point == "/mnt/with space"
    assert {e.mount_id for e in entries if e.fstype == "proc"} == {72, 46}


def test_which_mounts_are_marked() -> None:
    picked = sorted({e.mount_point for e in parse_mountinfo(MOUNTINFO) if wanted(e)})
    assert picked == ["/", "/mnt/t", "/mnt/with space", "/proc", "/workspace"]
    assert wanted(MountEntry(mount_id=1, parent_id=0, root="/", mount_point="/run",
                             fstype="tmpfs"))
    assert wanted(MountEntry(mount_id=1, parent_id=0, root="/", mount_point="/mnt/p",
                             fstype="proc"))
    assert not wanted(MountEntry(mount_id=1, parent_id=0, root="/", mount_point="/proc/cpuinfo",
                                 fstype="fuse.lxcfs"))


def test_the_source_satisfies_the_protocols() -> None:
    src = FanotifySource()
    assert isinstance(src, Source) and isinstance(src, ContainerAware)
    assert FanotifySource.name == "fanotify"
    with pytest.raises(ValueError, match="unknown fanotify op"):
        FanotifySource({"events": ["open", "create"]})
    with pytest.raises(ValueError, match="list of op names"):
        FanotifySource({"events": "open"})


# --------------------------------------------------------------------------- tracker


@dataclass
class Sink:
    events: list[Event] = field(default_factory=list)
    systems: list[tuple[str, str, Mapping[str, Any]]] = field(default_factory=list)
    drops: list[tuple[str, str, str, int]] = field(default_factory=list)
    watched: set[str] = field(default_factory=lambda: {"c1"})

    def ctx(self) -> SourceContext:
        return SourceContext(
            publish=self.events.append,
            watched=lambda name: name in self.watched,
            system=lambda c, k, d: self.systems.append((c, k, d)),
            count_drop=lambda c, s, k, n: self.drops.append((c, s, k, n)),
        )

    @property
    def files(self) -> list[FileAccess]:
        return [e for e in self.events if isinstance(e, FileAccess)]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as exc:
        return exc.errno == errno.EBADF
    return False


@pytest.fixture
def data(tmp_path: Path) -> Path:
    p = tmp_path / "secret.env"
    p.write_bytes(b"K=" + b"v" * 98)
    return p


def tracker(sink: Sink, who: dict[int, Attribution], clock: Clock | None = None,
            comms: dict[int, str] | None = None) -> FanotifyTracker:
    comms = comms if comms is not None else {}
    return FanotifyTracker(sink.ctx(), self_pid=1, attribute=lambda pid: who.get(pid, MISSING),
                           read_comm=lambda pid: comms.get(pid, f"comm{pid}"),
                           clock=clock or Clock())


def test_open_and_close_become_one_event_each_with_path_and_size(data: Path) -> None:
    sink = Sink()
    t = tracker(sink, {100: "c1"})
    fd = os.open(data, os.O_RDONLY)
    t.handle(FanEvent(mask=FAN_OPEN | FAN_CLOSE_NOWRITE, fd=fd, pid=100), 5)
    assert _closed(fd)
    opened, closed = sink.files
    assert (opened.op, opened.path, opened.size) == ("open", str(data), -1)
    assert (closed.op, closed.path, closed.size) == ("close_nowrite", str(data), 100)
    assert opened.container == closed.container == "c1"
    assert opened.pid == 100 and opened.comm == "comm100" and opened.ts_ns == 5
    wfd = os.open(data, os.O_WRONLY | os.O_APPEND)
    os.write(wfd, b"x" * 20)
    t.handle(FanEvent(mask=FAN_CLOSE_WRITE, fd=wfd, pid=100), 6)
    assert sink.files[-1].op == "close_write" and sink.files[-1].size == 120
    assert t.stats["published"] == 3


def test_a_file_deleted_before_the_event_is_read_keeps_its_name(tmp_path: Path) -> None:
    sink = Sink()
    t = tracker(sink, {100: "c1"})
    gone, odd = tmp_path / "staged.tar", tmp_path / "x (deleted)"
    gone.write_bytes(b"z" * 10)
    odd.write_bytes(b"")
    fd = os.open(gone, os.O_RDONLY)
    gone.unlink()
    t.handle(FanEvent(mask=FAN_CLOSE_NOWRITE, fd=fd, pid=100), 1)
    t.handle(FanEvent(mask=FAN_OPEN, fd=os.open(odd, os.O_RDONLY), pid=100), 1)
    assert [(e.path, e.size) for e in sink.files] == [(str(gone), 10), (str(odd), -1)]


def test_exec_open_is_one_op_and_refreshes_comm(data: Path) -> None:
    sink = Sink()
    comms = {100: "sh"}
    t = tracker(sink, {100: "c1"}, comms=comms)
    t.handle(FanEvent(mask=FAN_OPEN | FAN_OPEN_EXEC, fd=os.open(data, os.O_RDONLY), pid=100), 1)
    comms[100] = "cat"  # what the exec did to the process
    t.handle(FanEvent(mask=FAN_OPEN, fd=os.open(data, os.O_RDONLY), pid=100), 2)
    assert [(e.op, e.comm) for e in sink.files] == [("open_exec", "sh"), ("open", "cat")]


def test_a_failed_event_open_keeps_the_pid() -> None:
    sink = Sink()
    t = tracker(sink, {100: "c1"})
    t.handle(FanEvent(mask=FAN_OPEN, fd=-errno.ESRCH, pid=100), 1)
    (ev,) = sink.files
    assert (ev.path, ev.pid, ev.size, ev.container) == ("", 100, -1, "c1")
    assert t.stats["fd_errors"] == 1


def test_own_host_and_unwatched_events_are_not_published_but_closed(data: Path) -> None:
    sink = Sink()
    t = tracker(sink, {100: None, 200: "other"})
    fds = [os.open(data, os.O_RDONLY) for _ in range(3)]
    for fd, pid in zip(fds, (1, 100, 200), strict=True):
        t.handle(FanEvent(mask=FAN_OPEN, fd=fd, pid=pid), 1)
    assert sink.files == []
    assert all(_closed(fd) for fd in fds)
    assert (t.stats["own"], t.stats["host"], t.stats["unwatched"]) == (1, 1, 1)


def test_a_gone_process_is_attributed_by_mount(data: Path) -> None:
    sink = Sink()
    t = tracker(sink, {})  # every pid: MISSING
    fd = os.open(data, os.O_RDONLY)
    t.mounts[fd_mount_id(fd)] = "c1"
    t.handle(FanEvent(mask=FAN_OPEN, fd=fd, pid=300), 1)
    assert [(e.container, e.pid, e.comm) for e in sink.files] == [("c1", 300, "")]
    t.mounts.clear()
    t.handle(FanEvent(mask=FAN_OPEN, fd=os.open(data, os.O_RDONLY), pid=301), 1)
    t.handle(FanEvent(mask=FAN_OPEN, fd=-errno.ESRCH, pid=302), 1)
    assert len(sink.files) == 1
    assert sink.drops == [("", "fanotify", "unattributed", 1)] * 2
    assert (t.stats["by_mount"], t.stats["unattributed"]) == (1, 2)


def test_attribution_is_cached_for_a_while(data: Path) -> None:
    sink = Sink()
    who: dict[int, Attribution] = {100: "c1"}
    clock = Clock()
    calls: list[int] = []

    def attribute(pid: int) -> Attribution:
        calls.append(pid)
        return who.get(pid, MISSING)

    t = FanotifyTracker(sink.ctx(), self_pid=1, attribute=attribute, read_comm=lambda p: "x",
                        clock=clock, cache_ttl_ns=1000)
    for _ in range(3):
        t.handle(FanEvent(mask=FAN_OPEN, fd=-1, pid=100), 1)
    assert calls == [100]
    clock.now += 1001
    who[100] = None  # the pid was recycled by a host process
    t.handle(FanEvent(mask=FAN_OPEN, fd=-1, pid=100), 1)
    assert calls == [100, 100] and len(sink.files) == 3
    who[100] = "c1"
    t.handle(FanEvent(mask=FAN_OPEN, fd=-1, pid=100), 1)
    t.forget("c1")
    t.handle(FanEvent(mask=FAN_OPEN, fd=-1, pid=100), 1)
    assert calls == [100, 100, 100, 100]


def test_overflow_is_a_counted_drop_and_a_rate_limited_system_record() -> None:
    sink = Sink()
    clock = Clock()
    t = tracker(sink, {}, clock)
    for _ in range(3):
        t.handle(FanEvent(mask=FAN_Q_OVERFLOW, fd=-errno.EBADF, pid=0), 1)
    clock.now += 2_000_000_000
    t.handle(FanEvent(mask=FAN_Q_OVERFLOW, fd=-1, pid=0), 1)
    assert sink.drops == [("", "fanotify", "overflow", 1)] * 4
    assert [(c, k, d["suppressed"]) for c, k, d in sink.systems] == [
        ("", "overflow", 0), ("", "overflow", 2)]
    assert sink.files == []


def test_feed_survives_a_malformed_buffer(data: Path) -> None:
    sink = Sink()
    t = tracker(sink, {100: "c1"})
    fd = os.open(data, os.O_RDONLY)
    good = (24).to_bytes(4, "little") + bytes([3, 0]) + (24).to_bytes(2, "little")
    good += FAN_OPEN.to_bytes(8, "little") + fd.to_bytes(4, "little", signed=True)
    good += (100).to_bytes(4, "little")
    t.feed(good + b"\x05\x00")
    assert _closed(fd)
    assert len(sink.files) == 1
    assert sink.drops == [("", "fanotify", "wire_error", 1)]
    assert sink.systems[0][1] == "wire_error"


# --------------------------------------------------------------------------- group


def test_fd_error_fallback() -> None:
    asked: list[int] = []

    def old_kernel(flags: int, event_f_flags: int) -> int:
        asked.append(flags)
        if flags & FAN_REPORT_FD_ERROR:
            raise OSError(errno.EINVAL, "Invalid argument")
        return os.open("/dev/null", os.O_RDONLY)

    fd, has = open_group(init=old_kernel)
    os.close(fd)
    assert not has
    assert asked[0] & FAN_REPORT_FD_ERROR and not asked[1] & FAN_REPORT_FD_ERROR

    def no_root(flags: int, event_f_flags: int) -> int:
        raise OSError(errno.EPERM, "Operation not permitted")

    with pytest.raises(SourceError, match="CAP_SYS_ADMIN"):
        open_group(init=no_root)


# --------------------------------------------------------------------------- real container


@pytest.fixture(scope="module")
def container() -> Iterator[str]:
    name = f"coi-t-fan-{secrets.token_hex(3)}"
    try:
        subprocess.run(["incus", "launch", IMAGE, name], check=True, capture_output=True,
                       timeout=120)
        yield name
    finally:
        subprocess.run(["incus", "delete", "--force", name], capture_output=True, timeout=120)


def init_pid(name: str) -> int:
    out = subprocess.run(["incus", "query", f"/1.0/instances/{name}/state"], check=True,
                         capture_output=True, timeout=30).stdout
    return int(orjson.loads(out)["pid"])


async def sh(name: str, script: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        "incus", "exec", name, "--", "sh", "-c", script,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    return out


async def until(pred: object, timeout: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if pred():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.02)
    return False


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.asynccontextmanager
async def running(src: FanotifySource, sink: Sink) -> AsyncIterator[None]:
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(src.run(sink.ctx(), ready))
    try:
        await asyncio.wait_for(asyncio.shield(ready), 10)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def seen(sink: Sink, op: str, path: str) -> list[FileAccess]:
    return [e for e in sink.files if e.op == op and e.path == path]


@pytest.mark.incus
@pytest.mark.privileged
async def test_container_file_access_is_seen_and_attributed(container: str) -> None:
    sink = Sink(watched={container})
    src = FanotifySource()
    before = open_fds()
    async with running(src, sink):
        await src.attach(ContainerInfo(name=container, init_pid=init_pid(container)))
        assert sorted(src.watches[container].values()) == ["/", "/proc"]
        tag = secrets.token_hex(4)
        await sh(container, f"cat /etc/passwd >/dev/null; echo x > /tmp/f{tag}; "
                            "cat /proc/1/environ >/dev/null")
        assert await until(lambda: seen(sink, "close_nowrite", "/proc/1/environ"))
        passwd = seen(sink, "open", "/etc/passwd")
        # comm is read when the event is handled: "" if cat had already exited by then
        # (the event is then attributed by its mount, not its pid).
        assert passwd and passwd[0].comm in ("cat", "")
        assert seen(sink, "close_nowrite", "/etc/passwd")[0].size > 0
        written = seen(sink, "close_write", f"/tmp/f{tag}")
        assert written and written[0].size == 2
        assert seen(sink, "open_exec", "/bin/busybox")
        assert seen(sink, "open", "/proc/1/environ")
        assert all(e.container == container and e.pid > 1 for e in sink.files)
        assert not sink.drops
        assert [k for _c, k, _d in sink.systems] == ["fanotify_marked"]
        assert await until(lambda: open_fds() <= before + 3 + 3)  # group + watch, no event fds
        assert src.tracker is not None and src.tracker.stats["own"] == 0
    assert src.tracker is None
    assert open_fds() == before


@pytest.mark.incus
@pytest.mark.privileged
async def test_workspace_device_added_later_and_big_file_sizes(container: str) -> None:
    ws = Path(tempfile.mkdtemp(prefix="coi-t-ws-"))
    os.chmod(ws, 0o777)
    (ws / ".env").write_text("OPENAI_API_KEY=sk-test\n")
    sink = Sink(watched={container})
    src = FanotifySource()
    try:
        async with running(src, sink):
            await src.attach(ContainerInfo(name=container, init_pid=init_pid(container)))
            subprocess.run(["incus", "config", "device", "add", container, "ws", "disk",
                            f"source={ws}", "path=/workspace"], check=True, capture_output=True,
                           timeout=60)
            # The hot-plugged mount is found through the mount table watch, not a poll.
            assert await until(lambda: "/workspace" in src.watches[container].values())
            await sh(container, "cat /workspace/.env >/dev/null; "
                                "dd if=/dev/zero of=/tmp/big bs=1M count=10 2>/dev/null; "
                                "cat /tmp/big >/dev/null; rm /tmp/big")
            assert await until(lambda: seen(sink, "close_nowrite", "/tmp/big"))
            assert seen(sink, "open", "/workspace/.env")
            assert seen(sink, "close_nowrite", "/workspace/.env")[0].size == 23
            assert seen(sink, "close_write", "/tmp/big")[0].size == 10 * 1024 * 1024
            assert seen(sink, "close_nowrite", "/tmp/big")[0].size == 10 * 1024 * 1024
            marked = [d for _c, k, d in sink.systems if k == "fanotify_marked"]
            assert marked[-1]["reason"] == "mount_change" and marked[-1]["added"] == ["/workspace"]
    finally:
        subprocess.run(["incus", "config", "device", "remove", container, "ws"],
                       capture_output=True, timeout=60)
        shutil.rmtree(ws, ignore_errors=True)


@pytest.mark.incus
@pytest.mark.privileged
async def test_restart_re_marks_and_release_forgets(container: str) -> None:
    sink = Sink(watched={container})
    src = FanotifySource()
    async with running(src, sink):
        first = ContainerInfo(name=container, init_pid=init_pid(container))
        await src.attach(first)
        await src.attach(first)  # idempotent
        assert len([k for _c, k, _d in sink.systems if k == "fanotify_marked"]) == 1
        with_watch = open_fds()
        subprocess.run(["incus", "restart", "--force", container], check=True,
                       capture_output=True, timeout=120)
        # The old init exited: the watch let go of the old mount namespace by itself.
        assert await until(lambda: src.watches[container] == {})
        assert open_fds() == with_watch - 3
        second = ContainerInfo(name=container, init_pid=init_pid(container))
        assert second.init_pid != first.init_pid
        await src.attach(second)
        assert sorted(src.watches[container].values()) == ["/", "/proc"]
        await sh(container, "cat /etc/hostname >/dev/null")
        assert await until(lambda: seen(sink, "open", "/etc/hostname"))
        await src.release(container)
        await src.release(container)
        assert container not in src.watches
        assert open_fds() == with_watch - 3
        n = len(sink.files)
        await sh(container, "cat /etc/hostname >/dev/null")
        await asyncio.sleep(0.3)
        assert len(sink.files) == n  # marks removed: nothing more from it


@pytest.mark.incus
@pytest.mark.privileged
async def test_degraded_without_fd_error(container: str) -> None:
    def old_kernel(flags: int, event_f_flags: int) -> int:
        if flags & FAN_REPORT_FD_ERROR:
            raise OSError(errno.EINVAL, "Invalid argument")
        return fanotify_init(flags, event_f_flags)

    sink = Sink(watched={container})
    src = FanotifySource(init=old_kernel)
    async with running(src, sink):
        assert src.degraded
        await src.attach(ContainerInfo(name=container, init_pid=init_pid(container)))
        await sh(container, "cat /etc/passwd >/dev/null")
        assert await until(lambda: seen(sink, "open", "/etc/passwd"))
    (degraded,) = [d for _c, k, d in sink.systems if k == "source_degraded"]
    assert degraded["missing"] == "FAN_REPORT_FD_ERROR"


@pytest.mark.incus
@pytest.mark.privileged
async def test_attach_to_a_gone_container_does_not_raise() -> None:
    sink = Sink(watched={"ghost"})
    src = FanotifySource()
    async with running(src, sink):
        proc = await asyncio.create_subprocess_exec("true")
        await proc.wait()
        await src.attach(ContainerInfo(name="ghost", init_pid=proc.pid))
        assert src.watches["ghost"] == {}
    assert [k for _c, k, _d in sink.systems] == ["source_attach_failed"]


@pytest.mark.incus
@pytest.mark.privileged
async def test_attach_before_run_marks_when_the_group_opens(container: str) -> None:
    sink = Sink(watched={container})
    src = FanotifySource()
    await src.attach(ContainerInfo(name=container, init_pid=init_pid(container)))
    assert src.watches[container] == {}  # no group yet
    async with running(src, sink):
        assert sorted(src.watches[container].values()) == ["/", "/proc"]
        await sh(container, "cat /etc/hostname >/dev/null")
        assert await until(lambda: seen(sink, "open", "/etc/hostname"))
    assert src.watches[container] == {}  # the group (and its marks) closed with run()
