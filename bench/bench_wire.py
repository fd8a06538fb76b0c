"""Pure-parse throughput of the NFLOG, packet, DNS and conntrack parsers on real datagrams.

    .venv/bin/python bench/bench_wire.py [--seconds 2]

Inputs are the golden captures in ``tests/fixtures/wire/{nflog,conntrack}`` (kernel bytes,
replayed from memory: no sockets, no kernel in the loop). Prints:

* NFLOG packets/s for ``nflog.parse`` alone, with ``packet.parse_ip``, and with the DNS
  question parsed too (the full path a DNS detector needs), over the captured DNS
  datagrams (one packet each, as with ``qthresh=1``) and over the 4-packet batch; then the
  same for the fast path the NFLOG source uses (``nflog.peek``, ``packet.peek_ip``,
  ``dns.peek_query``: the same fields as tuples, see those modules). The captures come
  from seven rules and hooks, i.e. seven attribute layouts taken in turn, where a source
  sees one or two; ``bench_nflog_source.py`` measures the source over kernel-shaped
  bridge datagrams;
* conntrack events/s for ``conntrack.parse`` over the captured event stream (new, update,
  destroy in the proportions of real TCP/UDP/ICMP flows) and over the dump datagram, with
  pyroute2's ``nfct_msg`` decoder pulling the same fields out of the same bytes for
  comparison (its decoding is lazy: the work happens in ``get_attr``).

Each figure is the best of 10 rounds of ``--seconds / 10`` of *CPU time of this
process* (``time.process_time``), so other load on the machine slows the run down but
does not distort the rate: the figures are per core.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coi_watch.wire import conntrack, dns, nflog, packet

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "wire"


def _frame(path: Path) -> bytes:
    lines = path.read_text().splitlines()
    return bytes.fromhex("".join(ln for ln in lines if not ln.startswith("#")))


def rate(label: str, unit: str, fn: Callable[[], int], seconds: float, rounds: int = 10) -> float:
    """Run ``fn`` (which returns how many items it handled) and print items per second."""
    best = 0.0
    for _ in range(rounds):
        items, t0 = 0, time.process_time()
        while (elapsed := time.process_time() - t0) < seconds / rounds:
            items += fn()
        best = max(best, items / elapsed)
    print(f"{label:<58} {best:>12,.0f} {unit}/s")
    return best


def nflog_only(datagrams: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        return sum(len(nflog.parse(d)) for d in datagrams)

    return run


def nflog_ip(datagrams: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        n = 0
        for d in datagrams:
            for p in nflog.parse(d):
                packet.parse_ip(p.payload)
                n += 1
        return n

    return run


def nflog_dns(datagrams: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        n = 0
        for d in datagrams:
            for p in nflog.parse(d):
                ip = packet.parse_ip(p.payload)
                if ip.proto == 17:
                    dns.parse_query(ip.l4_payload)
                else:
                    dns.parse_tcp_query(ip.l4_payload)
                n += 1
        return n

    return run


def fast_only(datagrams: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        return sum(len(nflog.peek(d)) for d in datagrams)

    return run


def fast_dns(datagrams: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        n = 0
        for d in datagrams:
            for p in nflog.peek(d):
                l4 = packet.peek_ip(p[1])
                if l4[1] == 17:
                    dns.peek_query(l4[6])
                else:
                    dns.peek_tcp_query(l4[6])
                n += 1
        return n

    return run


def ct_ours(datagrams: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        return sum(len(conntrack.parse(d)) for d in datagrams)

    return run


def ct_pyroute2(datagrams: list[bytes]) -> Callable[[], int] | None:
    try:
        from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg
    except ImportError:  # pragma: no cover - pyroute2 is a dependency, but be polite
        return None

    def tuple_fields(t: Any) -> tuple[Any, ...]:
        ip, pr = t.get_attr("CTA_TUPLE_IP"), t.get_attr("CTA_TUPLE_PROTO")
        return (
            ip.get_attr("CTA_IP_V4_SRC") or ip.get_attr("CTA_IP_V6_SRC"),
            ip.get_attr("CTA_IP_V4_DST") or ip.get_attr("CTA_IP_V6_DST"),
            pr.get_attr("CTA_PROTO_NUM"),
            pr.get_attr("CTA_PROTO_SRC_PORT"),
            pr.get_attr("CTA_PROTO_DST_PORT"),
        )

    def run() -> int:
        # Decode and pull out what a CtEvent holds: pyroute2 decodes lazily, on get_attr.
        n = 0
        for d in datagrams:  # event datagrams hold one message each
            m = nfct_msg(d)
            m.decode()
            fields = [tuple_fields(m.get_attr("CTA_TUPLE_ORIG"))]
            fields += [m.get_attr(a) for a in ("CTA_ID", "CTA_STATUS", "CTA_MARK", "CTA_TIMEOUT")]
            if (r := m.get_attr("CTA_TUPLE_REPLY")) is not None:
                fields.append(tuple_fields(r))
            for nest in ("CTA_COUNTERS_ORIG", "CTA_COUNTERS_REPLY"):
                if (c := m.get_attr(nest)) is not None:
                    fields += [c.get_attr("CTA_COUNTERS_PACKETS"), c.get_attr("CTA_COUNTERS_BYTES")]
            if (ts := m.get_attr("CTA_TIMESTAMP")) is not None:
                fields += [ts.get_attr("CTA_TIMESTAMP_START"), ts.get_attr("CTA_TIMESTAMP_STOP")]
            if (pi := m.get_attr("CTA_PROTOINFO")) is not None and (
                tcp := pi.get_attr("CTA_PROTOINFO_TCP")
            ) is not None:
                fields.append(tcp.get_attr("CTA_PROTOINFO_TCP_STATE"))
            n += 1
        return n

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = ap.parse_args()
    s = args.seconds

    nfdir, ctdir = FIXTURES / "nflog", FIXTURES / "conntrack"
    dns_names = ["dns_a_v4", "dns_in_v4", "dns_aaaa_mixedcase", "dns_txt_binary", "dns_aaaa_v6",
                 "dns_qdcount2", "dns_tcp"]  # fmt: skip
    singles = [_frame(nfdir / f"{n}.hex") for n in dns_names]
    batch = [_frame(nfdir / "batch_qthresh4.hex")]
    stream = [bytes.fromhex(ln) for ln in (ctdir / "stream.hexl").read_text().split()]
    dump = [_frame(ctdir / "dump_all.hex")]
    kinds = sorted({e.event for d in stream for e in conntrack.parse(d)})

    print(f"NFLOG: {len(singles)} captured DNS datagrams, 1 batch of 4")
    rate("  nflog.parse, single-packet datagrams", "pkt", nflog_only(singles), s)
    rate("  nflog.parse + parse_ip, single-packet datagrams", "pkt", nflog_ip(singles), s)
    rate("  nflog.parse + parse_ip + DNS question, single", "pkt", nflog_dns(singles), s)
    rate("  nflog.parse + parse_ip + DNS question, batch of 4", "pkt", nflog_dns(batch), s)
    rate("  fast: nflog.peek, single-packet datagrams", "pkt", fast_only(singles), s)
    rate("  fast: peek + peek_ip + peek_query, single", "pkt", fast_dns(singles), s)
    rate("  fast: peek + peek_ip + peek_query, batch of 4", "pkt", fast_dns(batch), s)
    print(f"conntrack: {len(stream)} captured event datagrams ({', '.join(kinds)}), 1 dump")
    rate("  conntrack.parse, event stream", "ev", ct_ours(stream), s)
    n_dump = len(conntrack.parse(dump[0]))
    rate(f"  conntrack.parse, dump datagram ({n_dump} entries)", "ev", ct_ours(dump), s)
    theirs = ct_pyroute2(stream)
    if theirs is not None:
        rate("  pyroute2 nfct_msg decode + get_attr of the same fields", "ev", theirs, s)


if __name__ == "__main__":
    main()
