"""Network detectors benchmark (issue 5): events/s per detector and all four together.

The mix imitates a recorded hour of 8 busy agent containers: conntrack counter readings
and flow ends (45 %), new connections (20 %), DNS queries (15 %) and answers (10 %), and
workspace file closes (10 %), with a sprinkle of attacks (a DNS tunnel, a beacon, a bulk
upload) so the verdict paths run too. Each detector is fed only the kinds it consumes (as
the runner does) and its rate is over those events; "all four" goes through the real
:class:`~coi_watch.runner.Runner` over the whole mix.

    .venv/bin/python bench/bench_detectors_net.py [--events 400000] [--repeat 3]

Target for the whole pipeline later: >= 150k events/s on one core. Figures vary with the
machine's load: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence
from typing import Any

from _harness import report

from coi_watch.detectors.allowlist import Allowlist
from coi_watch.detectors.destinations import Destinations
from coi_watch.detectors.dns_tunnel import DnsTunnel
from coi_watch.detectors.exfiltration import Exfiltration
from coi_watch.events import DnsAnswer, DnsQuery, Event, FileAccess, NetConnect, NetFlow
from coi_watch.protocols import Detector

S = 1_000_000_000
NAMES = (
    "pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "github.com", "api.github.com",
    "objects.githubusercontent.com", "deb.debian.org", "api.anthropic.com", "sentry.io",
    "o1234.ingest.sentry.io", "storage.googleapis.com", "proxy.golang.org", "crates.io",
)
CONFIG: dict[str, dict[str, Any]] = {
    "allowlist": {"network_mode": "allowlist",
                  "allow": ["*.pythonhosted.org", "pypi.org", "*.github.com", "github.com",
                            "*.githubusercontent.com", "registry.npmjs.org", "deb.debian.org",
                            "api.anthropic.com", "sentry.io", "*.sentry.io",
                            "storage.googleapis.com", "proxy.golang.org", "crates.io"]},
}


def make_mix(n: int, seed: int = 5) -> list[Event]:
    rng = random.Random(seed)
    containers = [f"coi-{i}" for i in range(8)]
    ips = {name: f"151.101.{i}.{rng.randint(1, 254)}" for i, name in enumerate(NAMES)}
    events: list[Event] = []
    flows: dict[tuple[str, int], int] = {}
    t = 0
    fid = 0
    for i in range(n):
        t += rng.randint(5_000, 15_000) * 1000  # ~100k events/s of event time... per hour
        c = rng.choice(containers)
        r = rng.random()
        name = rng.choice(NAMES)
        dst = ips[name]
        if i % 997 == 0:  # attacks, in turn: a tunnel query, a beacon, an upload reading
            step = i // 997
            if step % 3 == 0:
                data = f"{rng.getrandbits(160):040x}"
                events.append(DnsQuery(ts_ns=t, wall_ns=t, container="coi-7", family=4,
                                       proto="udp", src="10.0.0.8", dst="10.0.0.1",
                                       qname=f"{data}.t.evil.example", qtype=16))
            elif step % 3 == 1:
                events.append(NetConnect(ts_ns=t, wall_ns=t, container="coi-6", family=4,
                                         proto="tcp", src="10.0.0.7", sport=50000 + step,
                                         dst="203.0.113.9", dport=8443))
            else:
                events.append(NetFlow(ts_ns=t, wall_ns=t, container="coi-5", event="counter",
                                      family=4, proto="tcp", src="10.0.0.6", sport=40001,
                                      dst="203.0.113.10", dport=443, flow_id=10**9,
                                      bytes_out=step * (30 << 20), start_ns=t))
            continue
        if r < 0.45:
            live = [k for k in flows if k[0] == c][:50]
            if live and rng.random() < 0.9:
                key = rng.choice(live)
                flows[key] += rng.randint(100, 20_000)
                end = rng.random() < 0.1
                events.append(NetFlow(ts_ns=t, wall_ns=t, container=c,
                                      event="destroy" if end else "counter", family=4,
                                      proto="tcp", src="10.0.0.5", sport=40000, dst=dst,
                                      dport=443, flow_id=key[1], bytes_out=flows[key]))
                if end:
                    del flows[key]
            else:
                fid += 1
                flows[(c, fid)] = 0
                events.append(NetFlow(ts_ns=t, wall_ns=t, container=c, event="new", family=4,
                                      proto="tcp", src="10.0.0.5", sport=40000, dst=dst,
                                      dport=443, flow_id=fid))
        elif r < 0.65:
            port = 53 if rng.random() < 0.2 else rng.choice((443, 443, 80, 22))
            target = "10.0.0.1" if port == 53 else dst
            events.append(NetConnect(ts_ns=t, wall_ns=t, container=c, family=4,
                                     proto="udp" if port == 53 else "tcp", src="10.0.0.5",
                                     sport=rng.randint(30000, 60000), dst=target, dport=port))
        elif r < 0.80:
            events.append(DnsQuery(ts_ns=t, wall_ns=t, container=c, family=4, proto="udp",
                                   src="10.0.0.5", dst="10.0.0.1", qname=name,
                                   qtype=rng.choice((1, 28))))
        elif r < 0.90:
            events.append(DnsAnswer(ts_ns=t, wall_ns=t, container=c, family=4, proto="udp",
                                    src="10.0.0.1", dst="10.0.0.5", qname=name,
                                    addresses=(dst,), ttl=rng.choice((30, 60, 300))))
        else:
            op = rng.choice(("close_write", "close_nowrite", "close_nowrite", "open"))
            events.append(FileAccess(ts_ns=t, wall_ns=t, container=c, pid=rng.randint(2, 900),
                                     op=op, path=f"/workspace/src/m{rng.randint(0, 400)}.py",
                                     size=rng.randint(100, 50_000)))
    return events


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    events = make_mix(args.events)
    factories: dict[str, Callable[[], Detector]] = {
        "destinations": lambda: Destinations(CONFIG.get("destinations")),
        "allowlist": lambda: Allowlist(CONFIG.get("allowlist")),
        "exfiltration": lambda: Exfiltration(CONFIG.get("exfiltration")),
        "dns_tunnel": lambda: DnsTunnel(CONFIG.get("dns_tunnel")),
    }
    report(factories, events, args.repeat, "all four")


if __name__ == "__main__":
    main()
