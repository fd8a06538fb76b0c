"""Throughput and latency of the conntrack source, kernel to :class:`NetFlow` (needs root).

    .venv/bin/python bench/bench_conntrack_source.py [--flows 40000] [--rcvbuf-mib 64]

Everything runs in the throwaway two-namespace lab of ``tests/fixtures/wire/netlab.py``
(veth pair, 198.18.x.0/24 only, deleted at the end): namespace ``a`` plays the container
(a ``sleep`` in it stands in for the container's init), ``b`` the outside. The real
:class:`~coi_watch.sources.conntrack.ConntrackSource` is attached to ``a``. Printed:

* ``pipeline``: :class:`~coi_watch.sources.conntrack.FlowReader` over captured datagrams
  from memory (decode + NetFlow), events per CPU-second of this process, best of 5;
* ``new burst``: a separate sender process in ``a`` opens ``--flows`` UDP flows (one
  datagram to each of as many ports) as fast as it can; NEW events received through the
  socket, their rate over the burst (wall) and per CPU-second of this process, ENOBUFS;
* ``destroy burst``: ``conntrack -F`` in ``a`` destroys all of them at once, which the
  kernel reports far faster than anyone reads: DESTROY events received and their rate;
* ``latency``: 300 new UDP flows 5 ms apart, sent from the event loop; NEW event parsed
  (``NetFlow.ts_ns``, taken at ``recv``) minus the ``sendto`` time: p50/p90/p99/max.

Two cores are shared by the sender, the kernel and the reader, so wall rates are lower
than CPU rates; the target for the source is >= 30k events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from coi_watch.containers import ContainerInfo
from coi_watch.events import Event, NetFlow
from coi_watch.protocols import SourceContext
from coi_watch.sources.conntrack import ConntrackSource, FlowReader

__all__ = ("main",)

ROOT = Path(__file__).resolve().parents[1]
WIRE = ROOT / "tests" / "fixtures" / "wire"
TARGET = 30_000
NAME = "bench"
SENDER = """
import socket, sys
dst, n = sys.argv[1], int(sys.argv[2])
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range((n + 39999) // 40000)]
for i in range(n):
    socks[i // 40000].sendto(b"x", (dst, 10000 + i % 40000))
"""


def _netlab() -> ModuleType:
    spec = importlib.util.spec_from_file_location("coi_fixture_netlab", WIRE / "netlab.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _frame(name: str) -> bytes:
    lines = (WIRE / "conntrack" / f"{name}.hex").read_text().splitlines()
    return bytes.fromhex("".join(ln for ln in lines if not ln.startswith("#")))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench_pipeline(seconds: float = 2.0) -> float:
    """Events per CPU-second through FlowReader (decode + NetFlow), best of 5 rounds."""
    frames = [_frame(n) for n in ("udp_new_v4", "tcp_new_v4", "destroy_tcp_v4",
                                  "destroy_udp_v4", "tcp_new_v6", "destroy_tcp_v6")]
    reader = FlowReader(NAME, lambda ev: None)
    best = 0.0
    for _ in range(5):
        n, t0 = 0, time.process_time()
        while (spent := time.process_time() - t0) < seconds / 5:
            for f in frames:
                reader.feed(f)
            n += len(frames)
        best = max(best, n / spent)
    return best


class Meter:
    """Counts published NetFlow events of one kind and when the first and last came."""

    def __init__(self) -> None:
        self.events: dict[str, list[int]] = {}
        self.drops = 0
        self.hook: Callable[[NetFlow], None] | None = None

    def publish(self, ev: Event) -> None:
        if isinstance(ev, NetFlow):
            self.events.setdefault(ev.event, []).append(ev.ts_ns)
            if self.hook is not None:
                self.hook(ev)

    def ctx(self) -> SourceContext:
        def drop(c: str, s: str, k: str, n: int) -> None:
            self.drops += n

        return SourceContext(publish=self.publish, watched=lambda n: True,
                             system=lambda c, k, d: None, count_drop=drop)

    def count(self, kind: str) -> int:
        return len(self.events.get(kind, ()))


async def _settle(count: Callable[[], int], timeout: float, quiet: float = 0.5) -> None:
    """Wait until ``count()`` stops growing for ``quiet`` seconds (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    last, still = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = count()
        if now != last:
            last, still = now, time.monotonic()
        elif time.monotonic() - still > quiet:
            return
        await asyncio.sleep(0.05)


def _rate(stamps: list[int]) -> float:
    if len(stamps) < 2:
        return 0.0
    return (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1e9)


async def bench_live(flows: int, rcvbuf: int) -> dict[str, Any]:
    """The burst and latency runs against the kernel (see the module docstring)."""
    netlab = _netlab()
    out: dict[str, Any] = {}
    with netlab.NetLab() as lab:
        init = subprocess.Popen(["ip", "netns", "exec", lab.ns_a, "sleep", "600"])
        meter = Meter()
        src = ConntrackSource({"interval": 3600.0, "rcvbuf": rcvbuf})  # no counter dumps
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        task = asyncio.create_task(src.run(meter.ctx(), ready))
        try:
            await asyncio.wait_for(asyncio.shield(ready), 10)
            await asyncio.sleep(0.2)  # `ip netns exec` has become `sleep` inside the netns
            await src.attach(ContainerInfo(name=NAME, init_pid=init.pid))
            lab.sysctl(lab.ns_a, nf_conntrack_udp_timeout=120)

            # latency first, on a quiet system
            lat: list[int] = []
            sent: dict[int, int] = {}

            def timed(ev: NetFlow) -> None:
                if ev.event == "new" and ev.dport in sent:
                    lat.append(ev.ts_ns - sent[ev.dport])

            meter.hook = timed
            udp = lab.socket(lab.ns_a, socket.AF_INET, socket.SOCK_DGRAM)
            with udp:
                for i in range(300):
                    port = 60000 + i
                    sent[port] = time.monotonic_ns()
                    udp.sendto(b"t", (lab.b4, port))
                    await asyncio.sleep(0.005)
            await _settle(lambda: len(lat), 5)
            meter.hook = None
            lat.sort()
            out["latency_ms"] = {
                "n": len(lat),
                **{f"p{q}": lat[min(len(lat) - 1, len(lat) * q // 100)] / 1e6
                   for q in (50, 90, 99)},
                "max": lat[-1] / 1e6,
            } if lat else {"n": 0}
            lab.exec(lab.ns_a, "conntrack", "-F")
            await _settle(lambda: meter.count("destroy"), 5)
            meter.events.clear()
            meter.drops = 0

            # NEW burst from a separate process
            cpu0 = _cpu()
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", lab.ns_a, sys.executable, "-c", SENDER, lab.b4,
                str(flows))
            await asyncio.wait_for(proc.wait(), 120)
            await _settle(lambda: meter.count("new"), 60)
            new = meter.events.get("new", [])
            out["new"] = {"sent": flows, "received": len(new), "rate_wall": _rate(new),
                          "rate_cpu": len(new) / max(_cpu() - cpu0, 1e-9),
                          "enobufs_drops": meter.drops}

            # DESTROY burst: the kernel reports all of them at once
            meter.drops = 0
            live = int(lab.exec(lab.ns_a, "conntrack", "-C").strip() or 0)
            cpu0 = _cpu()
            lab.exec(lab.ns_a, "conntrack", "-F")
            await _settle(lambda: meter.count("destroy"), 60)
            gone = meter.events.get("destroy", [])
            out["destroy"] = {"live": live, "received": len(gone), "rate_wall": _rate(gone),
                              "rate_cpu": len(gone) / max(_cpu() - cpu0, 1e-9),
                              "enobufs_drops": meter.drops}
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            init.kill()
            init.wait()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flows", type=int, default=40_000, help="flows in the burst (<= 200k)")
    ap.add_argument("--rcvbuf-mib", type=int, default=64, help="event socket buffer")
    ap.add_argument("--seconds", type=float, default=2.0, help="pipeline run time")
    args = ap.parse_args()
    flows = max(1, min(args.flows, 200_000))

    pipe = bench_pipeline(args.seconds)
    print(f"pipeline  FlowReader decode + NetFlow, from memory {pipe:>12,.0f} ev/s (CPU)")
    live = asyncio.run(bench_live(flows, args.rcvbuf_mib << 20))
    for kind in ("new", "destroy"):
        r = live[kind]
        print(f"{kind:<8}  received {r['received']:>7,} of {r.get('sent', r.get('live'))!s:>7}"
              f"  {r['rate_wall']:>9,.0f} ev/s (wall)  {r['rate_cpu']:>9,.0f} ev/s (CPU)"
              f"  enobufs drops {r['enobufs_drops']}")
    lat = live["latency_ms"]
    if lat["n"]:
        print(f"latency   {lat['n']} NEW events: p50 {lat['p50']:.3f} ms  p90 {lat['p90']:.3f} ms"
              f"  p99 {lat['p99']:.3f} ms  max {lat['max']:.3f} ms")
    wall = max(live["new"]["rate_wall"], live["destroy"]["rate_wall"])
    cpu = max(live["new"]["rate_cpu"], live["destroy"]["rate_cpu"])
    print(f"target    >= {TARGET:,} ev/s through socket + decode: best {wall:,.0f} ev/s wall "
          f"({'met' if wall >= TARGET else 'not met'}), {cpu:,.0f} ev/s per CPU-second "
          f"({'met' if cpu >= TARGET else 'not met'})")

if __name__ == "__main__":
    main()
