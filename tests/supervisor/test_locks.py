"""Container locks: one holder at a time, named in the refusal, freed by process exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from coi_watch.locks import ContainerLock, LockHeld


def test_second_holder_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    code = ("import sys, time; from pathlib import Path; from coi_watch.locks import "
            "ContainerLock; ContainerLock(Path(sys.argv[1]), 'c1').acquire(); "
            "print('held', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld) as info:
            ContainerLock(tmp_path, "c1").acquire()
        assert info.value.holder == holder.pid
        assert f"pid {holder.pid}" in str(info.value)
        other = ContainerLock(tmp_path, "c2")  # another container is independent
        other.acquire()
        other.release()
    finally:
        holder.kill()
        holder.wait()
    lock = ContainerLock(tmp_path, "c1")  # the kernel dropped the dead holder's lock
    lock.acquire()
    assert lock.held and (tmp_path / "c1.lock").read_text().strip() == str(os.getpid())
    lock.release()
    lock.release()
    assert not lock.held


def test_bad_names(tmp_path: Path) -> None:
    for bad in ("", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            ContainerLock(tmp_path, bad)
