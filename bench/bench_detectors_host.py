"""Host detectors benchmark (issue 5): events/s per detector and all four together, plus
the host packs through the Sigma engine.

The mix imitates 8 busy agent containers at work: file events (50 %: workspace reads and
writes, a few dotfiles read by their own clients), forks and exits (30 %: build churn),
execs of everyday developer commands (18 %) and a sprinkle of tamper events; about one
event in a thousand is an attack (a credential sweep, another process's environ, an account
database written, a private key read, a fork burst) so the verdict paths run too. Each
detector is fed only the kinds it consumes (as the runner does) and its rate is over those
events; "all four" goes through the real :class:`~coi_watch.runner.Runner` over the whole
mix. The resource detector runs with thresholds set (it is off by default, and free then).

    .venv/bin/python bench/bench_detectors_host.py [--events 400000] [--repeat 3]

Figures vary with the machine's load: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _harness import bench_one, report

from coi_watch.detectors.credentials import CredentialAccess
from coi_watch.detectors.persistence import Persistence
from coi_watch.detectors.resources import ResourceAbuse
from coi_watch.detectors.tamper import Tampering
from coi_watch.events import Ancestor, Event, FileAccess, ProcExec, ProcExit, ProcFork, Tamper
from coi_watch.protocols import Detector
from coi_watch.rules.engine import RuleEngine, RuleSet
from coi_watch.rules.load import load_rules

__all__ = ("CONFIG", "main", "make_mix")

CONFIG: dict[str, dict[str, Any]] = {
    "resources": {"process_count_threshold": 2000, "process_spawn_rate_threshold": 500},
}
_COMMANDS = [
    ("/usr/bin/git", ["git", "status", "--porcelain"]),
    ("/usr/bin/git", ["git", "push", "origin", "HEAD"]),
    ("/usr/bin/python3.11", ["python3", "-m", "pytest", "-q", "tests/"]),
    ("/usr/bin/node", ["node", "/usr/lib/node_modules/npm/bin/npm-cli.js", "install"]),
    ("/usr/bin/bash", ["bash", "-c", "set -euo pipefail; make -j8 all 2>&1 | tail -n 50"]),
    ("/usr/bin/env", ["/usr/bin/env", "python3", "manage.py", "migrate"]),
    ("/usr/bin/grep", ["grep", "-rn", "token", "src/"]),
    ("/usr/bin/cat", ["cat", ".env.example"]),
    ("/usr/bin/ssh", ["ssh", "-i", "~/.ssh/id_ed25519", "git@github.com"]),
    ("/usr/bin/gcc-12", ["gcc", "-O2", "-c", "main.c", "-o", "main.o"]),
    ("/usr/bin/printenv", ["printenv", "PATH"]),
]
_READS = [("/workspace/src/m{}.py", "python3"), ("/workspace/.env", "python3"),
          ("/home/code/.gitconfig", "git"), ("/home/code/.git-credentials", "git"),
          ("/home/code/.npmrc", "npm"), ("/usr/lib/python3.11/os.py", "python3")]


def make_mix(n: int, seed: int = 7) -> list[Event]:
    rng = random.Random(seed)
    containers = [f"coi-{i}" for i in range(8)]
    live: dict[str, list[int]] = {c: [] for c in containers}
    events: list[Event] = []
    t = 0
    pid = 1000
    for i in range(n):
        t += rng.randint(5_000, 15_000) * 1000
        c = rng.choice(containers)
        if i % 1009 == 0:  # an attack, in turn
            step = i // 1009 % 5
            if step == 0:
                events.append(ProcExec(ts_ns=t, wall_ns=t, container=c, pid=pid, comm="cat",
                                       exe="/usr/bin/cat", cwd="/root",
                                       argv=("cat", "/root/.aws/credentials", "/root/.netrc",
                                             "/root/.ssh/id_rsa")))
            elif step == 1:
                events.append(FileAccess(ts_ns=t, wall_ns=t, container=c, pid=pid,
                                         op="open", path="/proc/1/environ", comm="python3"))
            elif step == 2:
                events.append(FileAccess(ts_ns=t, wall_ns=t, container=c, pid=pid,
                                         op="close_write", path="/etc/shadow", comm="sh"))
            elif step == 3:
                events.append(FileAccess(ts_ns=t, wall_ns=t, container=c, pid=pid,
                                         op="open", path="/root/.ssh/id_rsa", comm="cat"))
            else:
                for _ in range(600):
                    pid += 1
                    events.append(ProcFork(ts_ns=t, wall_ns=t, container=c, pid=pid,
                                           ppid=pid - 1))
            continue
        r = rng.random()
        if r < 0.5:
            path, comm = rng.choice(_READS)
            events.append(FileAccess(ts_ns=t, wall_ns=t, container=c, pid=rng.randint(2, 900),
                                     op=rng.choice(("open", "close_nowrite", "close_write")),
                                     path=path.format(rng.randint(0, 400)), comm=comm))
        elif r < 0.8:
            pids = live[c]
            if pids and rng.random() < 0.5:
                events.append(ProcExit(ts_ns=t, wall_ns=t, container=c,
                                       pid=pids.pop(rng.randrange(len(pids)))))
            else:
                pid += 1
                pids.append(pid)
                events.append(ProcFork(ts_ns=t, wall_ns=t, container=c, pid=pid, ppid=2))
        elif r < 0.998:
            exe, argv = rng.choice(_COMMANDS)
            pid += 1
            events.append(ProcExec(ts_ns=t, wall_ns=t, container=c, pid=pid,
                                   comm=argv[0].rpartition("/")[2][:15], exe=exe,
                                   argv=tuple(argv), cwd="/workspace",
                                   ancestry=(Ancestor(pid=2, comm="bash", exe="/usr/bin/bash"),)))
        else:
            events.append(Tamper(ts_ns=t, wall_ns=t, container=c, source="nflog",
                                 what="nft_rules_changed", detail="chain flushed"))
    return events


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    events = make_mix(args.events)
    factories: dict[str, Callable[[], Detector]] = {
        "credentials": lambda: CredentialAccess(CONFIG.get("credentials")),
        "persistence": lambda: Persistence(CONFIG.get("persistence")),
        "tamper": lambda: Tampering(CONFIG.get("tamper")),
        "resources": lambda: ResourceAbuse(CONFIG.get("resources")),
    }
    report(factories, events, args.repeat, "all four")
    packs = Path(__file__).resolve().parents[1] / "rules" / "packs"
    ruleset = RuleSet.from_load(load_rules(
        [packs / "coi-credential-access.yml", packs / "coi-persistence.yml"],
        include_packs=False))
    rate, n, verdicts = bench_one(lambda: RuleEngine(ruleset=ruleset), events, args.repeat)
    print(f"{'host packs':14s} {rate / 1000:8.1f}k events/s  ({n} events, {verdicts} with "
          "verdicts; Sigma engine, these two packs only)")


if __name__ == "__main__":
    main()
