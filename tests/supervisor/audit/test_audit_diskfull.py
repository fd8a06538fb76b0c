"""A real full disk: a tiny tmpfs, filled up; sync fails loudly and loses nothing."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coi_watch.audit import AuditLog, verify_file
from coi_watch.errors import AuditError
from coi_watch.events import ProcExec
from coi_watch.verdicts import Severity, Verdict

pytestmark = pytest.mark.privileged


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        # Lazy, so a file a failed test left open cannot leave the mount behind.
        subprocess.run(["umount", "--lazy", str(mnt)], check=True)


def fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def exec_event(pid: int) -> ProcExec:
    return ProcExec(ts_ns=time.monotonic_ns(), wall_ns=time.time_ns(), container="c1",
                    pid=pid, argv=("python3", "-c", "x" * 200))


async def test_disk_full_raises_keeps_records_and_recovers(tiny_fs: Path) -> None:
    log = AuditLog(tiny_fs / "audit")
    log.check()
    log.event(exec_event(1))
    await log.sync()
    fill(tiny_fs / "filler")

    for pid in range(2, 60):
        log.event(exec_event(pid))
    log.verdict(Verdict(ts_ns=1, wall_ns=time.time_ns(), container="c1", detector="d",
                        title="t", severity=Severity.HIGH))
    with pytest.raises(AuditError, match=r"disk full \(No space left on device\)"):
        await log.sync("c1")
    assert log.pending("c1") > 0 and log.stats.write_errors == 1
    # The file's last page had room for part of the batch; that short write was cut back,
    # so the file on disk still verifies and holds only the first record.
    on_disk = verify_file(tiny_fs / "audit" / "c1.jsonl")
    assert on_disk.ok and on_disk.records == 1
    with pytest.raises(AuditError, match="disk full"):
        await log.sync("c1")  # still full: still loud, still kept

    (tiny_fs / "filler").unlink()
    await log.sync("c1")
    await log.close()
    result = verify_file(tiny_fs / "audit" / "c1.jsonl")
    assert result.ok and result.records == 60


def test_a_read_only_directory_fails_check(tiny_fs: Path) -> None:
    (tiny_fs / "audit").mkdir(mode=0o700)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    with pytest.raises(AuditError, match="not writable: Read-only file system"):
        AuditLog(tiny_fs / "audit").check()
    with pytest.raises(AuditError, match="cannot be created"):
        AuditLog(tiny_fs / "other").check()
