"""AuditLog: records, chain, seq across reopen, modes, durability, failures and recovery."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import time
import types
from pathlib import Path
from typing import Any

import orjson
import pytest

from coi_watch.audit import (
    GENESIS,
    SUPERVISOR_FILE,
    AuditLog,
    Redactor,
    iter_records,
    line_hash,
    verify_file,
)
from coi_watch.audit import log as log_mod
from coi_watch.errors import AuditError
from coi_watch.events import ProcExec
from coi_watch.verdicts import Action, ActionRecord, Severity, Verdict

T0 = 1_771_410_225_000_000_000  # 2026-02-18T10:23:45Z


def make_exec(container: str = "c1", pid: int = 100, argv: tuple[str, ...] = ("id",)) -> ProcExec:
    return ProcExec(ts_ns=time.monotonic_ns(), wall_ns=T0 + pid, container=container, pid=pid,
                    ppid=1, exe="/bin/sh", argv=argv)


def make_verdict(container: str = "c1") -> Verdict:
    return Verdict(ts_ns=time.monotonic_ns(), wall_ns=T0, container=container,
                   detector="reverse_shell", title="Reverse shell", severity=Severity.HIGH,
                   evidence={"cmdline": "bash -i"}, mitre=("T1059",), pid=100)


def make_action(container: str = "c1") -> ActionRecord:
    return ActionRecord(ts_ns=time.monotonic_ns(), wall_ns=T0, container=container,
                        action=Action.PAUSE, status="done", detector="reverse_shell")


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in lines(path)]


class FlakyOs(types.SimpleNamespace):
    """The os module, except that write(2) can be told to fail like a full disk: after
    writing ``short`` bytes of the first failing call (a short write), then with ``err``."""

    def __init__(self) -> None:
        super().__init__(**{k: getattr(os, k) for k in dir(os)
                            if not k.startswith("__") and k != "write"})
        self.fail: int | None = None
        self.short = 0

    def write(self, fd: int, data: bytes) -> int:
        if self.fail is None:
            return os.write(fd, data)
        if self.short:
            n, self.short = os.write(fd, data[: self.short]), 0
            return n
        raise OSError(self.fail, os.strerror(self.fail))


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> FlakyOs:
    fake = FlakyOs()
    monkeypatch.setattr(log_mod, "os", fake)
    return fake


# --------------------------------------------------------------------------- records


async def test_records_chain_and_carry_payloads(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    ev, v, a = make_exec(), make_verdict(), make_action()
    log.event(ev)
    log.verdict(v)
    log.action(a)
    log.system("c1", "attached", {"pattern": "coi-*"})
    await log.close()

    path = log.path_for("c1")
    recs = records(path)
    assert [r["seq"] for r in recs] == [1, 2, 3, 4]
    assert [r["kind"] for r in recs] == ["event", "verdict", "action", "system"]
    assert recs[0]["prev"] == GENESIS
    for prev_line, rec in zip(lines(path), recs[1:], strict=False):
        assert rec["prev"] == line_hash(prev_line)
    assert all(r["v"] == 1 and r["container"] == "c1" for r in recs)
    assert recs[0]["data"] == orjson.loads(orjson.dumps(ev))
    assert (recs[1]["wall_ns"], recs[1]["ts_ns"]) == (v.wall_ns, v.ts_ns)
    assert recs[3]["data"] == {"what": "attached", "pattern": "coi-*"}
    payloads = [r.payload() for r in iter_records(path)]
    assert payloads[:3] == [ev, v, a]
    assert verify_file(path).records == 4
    assert log.stats.records == {"event": 1, "verdict": 1, "action": 1, "system": 1}
    assert log.stats.bytes_written == path.stat().st_size


async def test_system_records_without_container_go_to_the_supervisor_file(
        tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.system("", "started", {"what": "ignored", "version": "0.1"})
    await log.close()
    path = tmp_path / SUPERVISOR_FILE
    assert log.path_for("") == path
    assert records(path)[0]["data"] == {"what": "started", "version": "0.1"}


async def test_seq_and_chain_continue_after_reopen(tmp_path: Path) -> None:
    first = AuditLog(tmp_path)
    for pid in range(3):
        first.event(make_exec(pid=pid))
    await first.close()
    second = AuditLog(tmp_path)
    second.verdict(make_verdict())
    second.event(make_exec(pid=9))
    await second.close()
    path = tmp_path / "c1.jsonl"
    assert [r["seq"] for r in records(path)] == [1, 2, 3, 4, 5]
    assert verify_file(path).ok


async def test_release_closes_the_file_and_a_later_record_reopens_it(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.event(make_exec())
    log.release("c1")
    assert log.pending() == 0
    assert len(lines(tmp_path / "c1.jsonl")) == 1
    log.release("never-seen")  # no file: nothing to do
    log.event(make_exec(pid=2))
    log.flush_sync()
    assert [r["seq"] for r in records(tmp_path / "c1.jsonl")] == [1, 2]


def test_unserialisable_payloads_still_leave_a_record(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, fsync=False)
    log.system("c1", "odd", {"obj": object(), "tags": {"b", "a"}, "blob": b"\xff"})
    log.system("c1", "huge", {"n": 2**70})  # orjson cannot encode it at all
    log.flush_sync()
    odd, huge = (r["data"] for r in records(tmp_path / "c1.jsonl"))
    assert odd["obj"].startswith("<object object")
    assert odd["tags"] == ["a", "b"]
    assert odd["blob"] == "\\xff"
    assert "unserialisable" in huge and "1180591620717411303424" in huge["repr"]


async def test_payloads_are_redacted_but_chain_fields_never(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.event(make_exec(argv=("git", "push", "--token", "ghp_" + "a" * 36)))
    log.system("c1", "note", {"env": "GITHUB_TOKEN=abc", "password": "hunter2"})
    await log.close()
    text = (tmp_path / "c1.jsonl").read_text()
    assert "ghp_aaaa" not in text and "hunter2" not in text and "=abc" not in text
    recs = records(tmp_path / "c1.jsonl")
    assert recs[0]["data"]["argv"] == ["git", "push", "--token", "[REDACTED]"]
    assert recs[1]["data"]["env"] == "GITHUB_TOKEN=[REDACTED]"
    assert verify_file(tmp_path / "c1.jsonl").ok

    plain = AuditLog(tmp_path / "plain", redactor=Redactor.disabled(), fsync=False)
    plain.system("c1", "note", {"password": "hunter2"})
    plain.flush_sync()
    assert records(plain.path_for("c1"))[0]["data"]["password"] == "hunter2"


# --------------------------------------------------------------------------- paths, modes


@pytest.mark.parametrize("name", ["../etc", "a/b", "..", ".hidden", "_supervisor", "a\0b",
                                  "x" * 300, "a\\b"])
def test_container_names_that_could_escape_are_refused(tmp_path: Path, name: str) -> None:
    log = AuditLog(tmp_path)
    with pytest.raises(AuditError, match="refusing container name"):
        log.path_for(name)
    with pytest.raises(AuditError):
        log.system(name, "x", {})
    assert list(tmp_path.iterdir()) == []


def test_check_creates_directories_0700_and_files_are_0600(tmp_path: Path) -> None:
    d = tmp_path / "home" / ".coi" / "audit"
    log = AuditLog(d)
    log.check()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert list(d.iterdir()) == []  # the probe file is gone
    log.event(make_exec())
    log.flush_sync()
    assert stat.S_IMODE((d / "c1.jsonl").stat().st_mode) == 0o600


def test_loose_directory_and_file_modes_are_tightened(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    first = AuditLog(d, fsync=False)
    first.event(make_exec())
    first.flush_sync()
    os.chmod(d, 0o777)
    os.chmod(d / "c1.jsonl", 0o644)

    log = AuditLog(d, fsync=False)
    log.check()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    log.event(make_exec(pid=2))
    log.flush_sync()
    assert stat.S_IMODE((d / "c1.jsonl").stat().st_mode) == 0o600
    recs = records(d / "c1.jsonl")
    assert recs[1]["data"] == {"what": "permissions_tightened", "was": "0644", "now": "0600"}
    assert verify_file(d / "c1.jsonl").ok


def test_check_fails_clearly_when_the_directory_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(AuditError, match="cannot be created or used: Not a directory"):
        AuditLog(blocker / "audit").check()
    with pytest.raises(AuditError, match="is not a directory"):
        AuditLog(blocker).check()


def test_a_symlink_in_place_of_an_audit_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "c1.jsonl").symlink_to(target)
    with pytest.raises(AuditError, match="cannot open audit file"):
        AuditLog(tmp_path / "audit").event(make_exec())
    assert target.read_text() == ""


# --------------------------------------------------------------------------- durability


async def test_sync_makes_a_verdict_durable_after_the_events_before_it(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.event(make_exec(pid=1))
    log.event(make_exec(pid=2))
    log.verdict(make_verdict())
    log.event(make_exec(pid=3))  # appended after: carried along by this sync, not before
    assert not (tmp_path / "c1.jsonl").read_bytes()  # appends never touch the disk
    await log.sync("c1")
    kinds = [r["kind"] for r in records(tmp_path / "c1.jsonl")]
    assert kinds == ["event", "event", "verdict", "event"]
    assert log.pending("c1") == 0
    assert log.stats.fsyncs == 1


async def test_concurrent_syncs_share_one_write_and_fsync(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.verdict(make_verdict())
    log.action(make_action())
    await asyncio.gather(log.sync("c1"), log.sync("c1"), log.sync())
    assert log.stats.fsyncs == 1
    await log.sync("c1")  # nothing new: no thread, no fsync
    assert log.stats.fsyncs == 1


async def test_sync_of_one_container_leaves_the_others_pending(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.event(make_exec("a"))
    log.event(make_exec("b"))
    await log.sync("a")
    assert log.pending("a") == 0 and log.pending("b") > 0
    await log.sync()
    assert log.pending() == 0


async def test_flusher_writes_batched_events(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    task = asyncio.create_task(log.run_flusher(interval_s=0.01))
    log.event(make_exec())
    try:
        async with asyncio.timeout(5):
            while log.pending():
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert len(lines(tmp_path / "c1.jsonl")) == 1
    assert log.stats.fsyncs >= 1


# --------------------------------------------------------------------------- failures


async def test_a_failed_write_raises_and_keeps_every_record(tmp_path: Path,
                                                            flaky: FlakyOs) -> None:
    log = AuditLog(tmp_path)
    log.event(make_exec(pid=1))
    await log.sync()
    log.event(make_exec(pid=2))
    log.verdict(make_verdict())
    flaky.fail, flaky.short = errno.ENOSPC, 40  # a short write, then a full disk
    with pytest.raises(AuditError, match=r"disk full \(No space left on device\).*kept"):
        await log.sync("c1")
    assert log.stats.write_errors == 1
    assert log.pending("c1") > 0
    # The short write was cut back: what is on disk still verifies, nothing is half-written.
    on_disk = verify_file(tmp_path / "c1.jsonl")
    assert on_disk.ok and on_disk.records == 1

    flaky.fail = None
    await log.sync("c1")
    assert log.pending() == 0
    result = verify_file(tmp_path / "c1.jsonl")
    assert result.ok and result.records == 3


async def test_close_keeps_files_that_could_not_be_written(tmp_path: Path,
                                                           flaky: FlakyOs) -> None:
    log = AuditLog(tmp_path)
    log.action(make_action())
    flaky.fail = errno.EIO
    with pytest.raises(AuditError, match="I/O error"):
        await log.close()
    with pytest.raises(AuditError, match="I/O error"):
        log.flush_sync()
    flaky.fail = None
    log.flush_sync()
    await log.close()
    assert verify_file(tmp_path / "c1.jsonl").records == 1


async def test_flusher_logs_failures_and_recovery(tmp_path: Path, flaky: FlakyOs,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    log = AuditLog(tmp_path)
    log.event(make_exec())
    flaky.fail = errno.EIO
    with caplog.at_level(logging.ERROR, logger="coi_watch.audit.log"):
        await log.flush_round()
        await log.flush_round()  # still failing: not logged again within 30 s
        flaky.fail = None
        await log.flush_round()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "I/O error" in messages[0] and "retrying" in messages[0]
    assert "writing again" in messages[1]
    assert verify_file(tmp_path / "c1.jsonl").records == 1


async def test_a_full_buffer_drops_events_but_never_verdicts_and_says_so(
        tmp_path: Path, flaky: FlakyOs) -> None:
    log = AuditLog(tmp_path, max_pending=1)
    flaky.fail = errno.ENOSPC
    log.event(make_exec(pid=1))  # buffer empty: accepted
    log.event(make_exec(pid=2))  # buffer full: dropped before it gets a seq
    log.event(make_exec(pid=3))
    log.verdict(make_verdict())  # never dropped
    assert log.stats.dropped == 2
    with pytest.raises(AuditError):
        await log.sync()
    flaky.fail = None
    await log.sync()
    recs = records(tmp_path / "c1.jsonl")
    assert [r["kind"] for r in recs] == ["event", "verdict", "system"]
    assert recs[2]["data"]["what"] == "records_dropped" and recs[2]["data"]["count"] == 2
    assert verify_file(tmp_path / "c1.jsonl").ok


# --------------------------------------------------------------------------- recovery


def _write(path: Path, n: int) -> list[bytes]:
    log = AuditLog(path.parent, fsync=False)
    for pid in range(n):
        log.event(make_exec(pid=pid))
    log.flush_sync()
    return lines(path)


def test_a_torn_last_line_is_never_chained_onto(tmp_path: Path) -> None:
    path = tmp_path / "c1.jsonl"
    good = _write(path, 3)
    with open(path, "ab") as fh:
        fh.write(b'{"v":1,"seq":4,"kind":"ev')  # the writer died mid-line
    broken = verify_file(path)
    assert broken.error is not None and broken.error.line == 4
    assert "torn record at the end of the file" in broken.error.reason

    log = AuditLog(tmp_path, fsync=False)
    log.event(make_exec(pid=9))
    log.flush_sync()
    all_lines = lines(path)
    assert all_lines[:3] == good and all_lines[3] == b'{"v":1,"seq":4,"kind":"ev'
    recovered, event = orjson.loads(all_lines[4]), orjson.loads(all_lines[5])
    assert recovered["kind"] == "system" and recovered["data"]["what"] == "recovered"
    assert recovered["data"]["torn_bytes"] == 25 and recovered["data"]["after_seq"] == 3
    assert recovered["seq"] == 4 and recovered["prev"] == line_hash(good[2])
    assert event["seq"] == 5 and event["prev"] == line_hash(all_lines[4])

    result = verify_file(path)
    assert result.error is not None and result.error.line == 4
    assert "torn record" in result.error.reason and "line 5 records the recovery" in \
        result.error.reason
    bad: list[int] = []
    assert len(list(iter_records(path, on_bad_line=lambda p, n, why: bad.append(n)))) == 5
    assert bad == [4]


def test_a_whole_record_missing_only_its_newline_is_completed(tmp_path: Path) -> None:
    path = tmp_path / "c1.jsonl"
    _write(path, 2)
    path.write_bytes(path.read_bytes()[:-1])
    log = AuditLog(tmp_path, fsync=False)
    log.event(make_exec(pid=7))
    log.flush_sync()
    recs = records(path)
    assert [r["seq"] for r in recs] == [1, 2, 3, 4]
    assert recs[2]["data"]["what"] == "recovered" and "completed" in recs[2]["data"]["reason"]
    assert verify_file(path).ok


def test_unreadable_complete_last_lines_are_skipped_when_reopening(tmp_path: Path) -> None:
    path = tmp_path / "c1.jsonl"
    good = _write(path, 2)
    with open(path, "ab") as fh:
        fh.write(b"garbage\n")
    log = AuditLog(tmp_path, fsync=False)
    log.event(make_exec(pid=5))
    log.flush_sync()
    recs = [orjson.loads(x) for x in lines(path)[3:]]
    assert recs[0]["data"]["unreadable_lines"] == 1
    assert recs[0]["seq"] == 3 and recs[0]["prev"] == line_hash(good[1])
    assert recs[1]["seq"] == 4
    result = verify_file(path)
    assert result.error is not None and result.error.line == 3


async def test_two_writers_on_one_file_keep_one_chain(tmp_path: Path) -> None:
    """A supervisor and ``coi-watch resume`` (another process) append to the same file."""
    first, second = AuditLog(tmp_path), AuditLog(tmp_path)
    first.event(make_exec(pid=1))
    await first.sync()
    second.action(make_action())  # the other process chains onto what is on disk
    await second.sync()
    first.event(make_exec(pid=2))
    first.verdict(make_verdict())
    await first.sync()  # ...and so does this one, after the other's record
    second.action(make_action())
    await second.close()
    await first.close()
    result = verify_file(tmp_path / "c1.jsonl")
    assert result.ok, result.error
    assert [r["seq"] for r in records(tmp_path / "c1.jsonl")] == [1, 2, 3, 4, 5]
