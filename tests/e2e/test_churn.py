"""Churn: a real ``coi-watch watch`` following Incus lifecycle events while containers are
launched and deleted in rounds must give back what it took for each of them.

The supervisor runs the proc and fanotify sources (the per-container one: marks, a held
``mountinfo``, an epoll and a pidfd per container) and attaches/releases containers itself
as Incus reports them started/stopped/deleted. After a warm-up round (imports, caches and
pools reach their steady size) the baseline is taken; after three rounds of five
containers, open fds and fanotify marks must be back at the baseline and RSS within a small
tolerance. Every container is checked to have been marked and seen (a ``cat`` inside shows
up as a ``file.access`` event in its audit file), so the rounds really exercised attach.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from coi_watch import registry

pytestmark = [pytest.mark.incus, pytest.mark.privileged]

IMAGE = os.environ.get("COI_TESTBED_IMAGE", "coi-bb")
ROUNDS, PER_ROUND, WARMUP = 3, 5, 2
# The Incus client's pool may hold a warm connection or two; idle ones close after 5 s, which
# the settle wait below covers.
FD_SLACK = 2
RSS_SLACK_KIB = 3 * 1024  # allocator arenas and interned strings; a leak grows per round


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fanotify_marks(pid: int) -> int:
    """Mount marks held by the process's fanotify group (``fdinfo`` lists one line each)."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[fanotify]":
                text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
                return sum(line.startswith("fanotify mnt_id:") for line in text.splitlines())
        except OSError:
            continue
    raise AssertionError("the supervisor has no fanotify group")


def plugin_site(tmp: Path) -> Path:
    """A directory with a tiny distribution registering the fanotify source, for as long as
    ``pyproject.toml`` does not (same value, so harmless once it does)."""
    site = tmp / "site"
    dist = site / "coi_watch_churn_plugins-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: coi-watch-churn-plugins\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[coi_watch.sources]\nfanotify = coi_watch.sources.fanotify:FanotifySource\n")
    return site


def parallel(*commands: list[str], timeout: float = 120) -> None:
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in commands]
    for c, p in zip(commands, procs, strict=True):
        _out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"{' '.join(c)}: {err}"


def records(path: Path) -> list[dict[str, Any]]:
    import orjson

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in raw.splitlines():
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue  # a line being written right now
    return out


def has(path: Path, pred: Any) -> bool:
    return any(pred(r) for r in records(path))


def marked(r: dict[str, Any]) -> bool:
    return bool(r["kind"] == "system" and r["data"].get("what") == "fanotify_marked")


def released(r: dict[str, Any]) -> bool:
    return bool(r["kind"] == "system" and r["data"].get("what") == "released")


def saw_passwd(r: dict[str, Any]) -> bool:
    d = r["data"]
    return bool(r["kind"] == "event" and d.get("kind") == "file.access"
                and d.get("path") == "/etc/passwd")


def test_resources_return_to_baseline_after_container_churn(e2e: Any, tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    audit = tmp_path / "audit"
    cfg = tmp_path / "coi.toml"
    cfg.write_text('[watch]\nsources = ["proc", "fanotify"]\n[audit]\nfsync = false\n')
    env = {}
    if "fanotify" not in registry.available("coi_watch.sources"):
        env["PYTHONPATH"] = os.pathsep.join(
            [str(plugin_site(tmp_path)), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    watcher = e2e.Watcher("--pattern", f"coi-churn-{tag}-*", "--monitor-only",
                          "--config", str(cfg), audit_dir=audit, env=env)
    pid = watcher.proc.pid
    names: list[str] = []
    t0 = time.monotonic()

    def churn(round_no: int, n: int) -> int:
        batch = [f"coi-churn-{tag}-{round_no}-{i}" for i in range(n)]
        names.extend(batch)
        parallel(*(["incus", "launch", IMAGE, c] for c in batch))
        for c in batch:
            assert e2e.wait_for(lambda c=c: has(audit / f"{c}.jsonl", marked), timeout=20), c
        parallel(*(["incus", "exec", c, "--", "cat", "/etc/passwd"] for c in batch))
        for c in batch:
            assert e2e.wait_for(lambda c=c: has(audit / f"{c}.jsonl", saw_passwd), timeout=10), c
        peak = open_fds(pid)
        # "/" and "/proc" of each, and a third when the test image's init mounted its own
        # procfs over /proc after the first marks (found through the mount table watch).
        assert 2 * n <= fanotify_marks(pid) <= 3 * n
        parallel(*(["incus", "delete", "--force", c] for c in batch))
        for c in batch:
            assert e2e.wait_for(lambda c=c: has(audit / f"{c}.jsonl", released), timeout=20), c
        return peak

    try:
        watcher.wait_ready()
        churn(0, WARMUP)
        assert e2e.wait_for(lambda: fanotify_marks(pid) == 0, timeout=5)
        time.sleep(0.5)  # let released sockets and background tasks finish
        base_fds, base_rss = open_fds(pid), rss_kib(pid)
        rss: list[int] = []
        for r in range(1, ROUNDS + 1):
            peak = churn(r, PER_ROUND)
            # Each attached container costs fds (its audit file, 3 for the mount watch).
            assert peak >= base_fds + PER_ROUND
            rss.append(rss_kib(pid))
        settled = e2e.wait_for(lambda: open_fds(pid) <= base_fds + FD_SLACK
                               and fanotify_marks(pid) == 0, timeout=15)
        after_fds, after_rss = open_fds(pid), rss_kib(pid)
    finally:
        rc, _out, err = watcher.stop()
        # One delete per name: `incus delete a b` stops at the first that is already gone.
        leftovers = [subprocess.Popen(["incus", "delete", "--force", c],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for c in names if e2e.status(c) != "Missing"]
        for p in leftovers:
            p.wait(timeout=120)
    elapsed = time.monotonic() - t0
    detail = (f"fds {base_fds} -> {after_fds}, RSS {base_rss} -> {after_rss} KiB "
              f"(per round {rss}), {len(names)} containers in {elapsed:.1f}s")
    print(detail)
    assert settled, detail
    assert after_rss <= base_rss + RSS_SLACK_KIB, detail
    assert rc == 0, err
    notes = [str(x.get("message", "")) for x in watcher.lines if x.get("kind") == "note"]
    assert sum(m.startswith("watching coi-churn") for m in notes) == len(names), notes
    assert not any("source fanotify cannot watch" in m for m in notes), notes
