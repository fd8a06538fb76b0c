"""Throughput of the reverse-shell detector on a mixed event stream, in events per second.

Strategy: build the stream once, then time only ``feed``. Each process is a fork, an exec and
an exit; the exec is an everyday agent command most of the time (the benign corpus plus
typical ``bash -c`` wrappers), sometimes an attack from the attack corpus, sometimes a shell
with a socket on its stdio; busybox applets add their comm event. This is the detector's
share of the proc source's load (``notes/kernel-sources.md`` section 3 measured 3.7k-13.7k
proc events/s from a busy container), so the number to watch is the margin above that.

Run: ``.venv/bin/python bench/bench_reverse_shell.py [--processes N] [--attack-ratio R]``.
"""

from __future__ import annotations

import argparse
import random
import shlex
import time
from pathlib import Path

from coi_watch.detectors.reverse_shell import ReverseShell
from coi_watch.events import Ancestor, Event, Fd, ProcComm, ProcExec, ProcExit, ProcFork

__all__ = ("build_stream", "main")

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "detectors" / "corpus"
CONTAINER = "coi-bench-1"

# What coding agents exec all day: tool runs wrapped the way agent harnesses wrap them.
_EVERYDAY = [
    ["git", "status", "--porcelain"],
    ["bash", "-c", "cd /workspace && git diff --stat && pwd -P >| /tmp/cwd"],
    ["bash", "-c", "-l", "shopt -u extglob 2>/dev/null || true && eval 'pytest -q tests/' "
     "\\< /dev/null && pwd -P >| /tmp/claude-cwd"],
    ["sh", "-c", "npm run build 2>&1 | tail -n 40"],
    ["python3", "-m", "pytest", "-q"],
    ["rg", "--line-number", "TODO", "src/"],
    ["sh", "-c", "for f in *.py; do python3 -m py_compile \"$f\"; done"],
    ["node", "node_modules/.bin/tsc", "--noEmit"],
]


def _lines(name: str) -> list[str]:
    text = (CORPUS / name).read_text(encoding="utf-8")
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def build_stream(
    processes: int, attack_ratio: float, *, unique: bool = False, seed: int = 1
) -> list[Event]:
    """``processes`` fork/exec/exit triples (plus comm events for busybox applets).

    ``unique`` appends a distinct argument to every argv, which defeats the detector's memo
    of recent command lines: the cold, every-command-is-new cost.
    """
    rng = random.Random(seed)
    benign = [shlex.split(ln) for ln in _lines("benign.txt")] + _EVERYDAY * 4
    attacks = [shlex.split(ln.split("\t", 2)[2]) for ln in _lines("attack.txt")]
    parent = Ancestor(pid=100, comm="bash", exe="/usr/bin/bash", cmdline="bash")
    sock = (Fd(fd=0, type="socket", proto="tcp", state="ESTABLISHED",
               local="10.1.2.3:40000", remote="10.0.0.1:4444"),)
    pipes = (Fd(fd=0, type="pipe"), Fd(fd=1, type="pipe"))
    events: list[Event] = []
    ts = 1_000_000
    for i in range(processes):
        pid = 1000 + i
        ts += 10_000
        roll = rng.random()
        argv = rng.choice(attacks) if roll < attack_ratio else rng.choice(benign)
        if unique:
            argv = [*argv, f"bench-{i}"]
        stdio = sock if roll < attack_ratio / 4 else pipes
        busybox = rng.random() < 0.2
        base = argv[0].rpartition("/")[2]
        events.append(ProcFork(ts_ns=ts, wall_ns=ts, container=CONTAINER, pid=pid, ppid=100))
        events.append(ProcExec(
            ts_ns=ts + 1, wall_ns=ts + 1, container=CONTAINER, pid=pid, ppid=100, uid=1000,
            comm="exe" if busybox else base[:15],
            exe="/bin/busybox" if busybox else f"/usr/bin/{base}",
            argv=tuple(argv), cwd="/workspace", stdio=stdio, ancestry=(parent,),
        ))
        if busybox:
            events.append(ProcComm(ts_ns=ts + 2, wall_ns=ts + 2, container=CONTAINER, pid=pid,
                                   comm=base[:15], argv=tuple(argv)))
        events.append(ProcExit(ts_ns=ts + 3, wall_ns=ts + 3, container=CONTAINER, pid=pid))
    return events


def main() -> None:
    """Print events/s, execs/s and the verdict count, with warm and cold command lines."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=20_000)
    ap.add_argument("--attack-ratio", type=float, default=0.05)
    args = ap.parse_args()
    for label, unique in (("repeated argv", False), ("distinct argv", True)):
        events = build_stream(args.processes, args.attack_ratio, unique=unique)
        feed = ReverseShell().feed
        verdicts = 0
        start = time.perf_counter()
        for ev in events:
            verdicts += len(list(feed(ev, ev.ts_ns)))
        elapsed = time.perf_counter() - start
        print(f"reverse_shell, {label}: {len(events)} events ({args.processes} execs) in "
              f"{elapsed:.3f} s: {len(events) / elapsed:,.0f} events/s, "
              f"{args.processes / elapsed:,.0f} execs/s, {verdicts} verdicts")


if __name__ == "__main__":
    main()
