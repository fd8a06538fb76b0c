"""Exfiltration detector: flow deltas, counter resets, windows, file volumes, bounds."""

from __future__ import annotations

import time

import pytest

from coi_watch.detectors._windows import DistinctWindow, SlidingCounts, SlidingSum
from coi_watch.detectors.exfiltration import Exfiltration
from coi_watch.events import FileAccess, NetFlow
from coi_watch.verdicts import Severity, Verdict

S = 1_000_000_000
# Distinct keys fed to the bounded-state tests: well past every cap (10x and more), and
# cheap enough for CI. The state must stay at its cap whatever the count.
N_DISTINCT = 200_000
MIB = 1 << 20


def flow(event: str, bytes_out: int, t_s: float, *, flow_id: int = 7,
         dst: str = "203.0.113.10", dport: int = 443, sport: int = 40000,
         container: str = "coi-1", start_ns: int = 0, wall_ns: int | None = None) -> NetFlow:
    ts = int(t_s * S)
    return NetFlow(ts_ns=ts, wall_ns=ts if wall_ns is None else wall_ns, container=container,
                   event=event, family=4, proto="tcp", src="10.10.0.5", sport=sport, dst=dst,
                   dport=dport, flow_id=flow_id, bytes_out=bytes_out, start_ns=start_ns)


def fa(op: str, path: str, size: int, t_s: float, container: str = "coi-1") -> FileAccess:
    ts = int(t_s * S)
    return FileAccess(ts_ns=ts, wall_ns=ts, container=container, pid=42, op=op, path=path,
                      size=size, comm="tar")


def run(det: Exfiltration, events: list[NetFlow | FileAccess]) -> list[Verdict]:
    out: list[Verdict] = []
    for ev in events:
        out.extend(det.feed(ev, ev.ts_ns))
    return out


# ----------------------------------------------------------------------------- network


def test_bulk_upload_is_high_once() -> None:
    events = [flow("new", 0, 0)]
    events += [flow("counter", i * 10 * MIB, i * 2.0) for i in range(1, 20)]  # 5 MiB/s
    events.append(flow("destroy", 200 * MIB, 40))
    verdicts = run(Exfiltration(), events)
    assert len(verdicts) == 1
    v = verdicts[0]
    assert v.severity is Severity.HIGH
    assert v.evidence["bytes_out"] > 100 * MIB
    assert v.evidence["threshold_bytes"] == 100 * MIB and v.evidence["window_s"] == 60
    assert v.evidence["top_destinations"][0]["dst"] == "203.0.113.10"
    assert v.mitre == ("T1041", "T1048")
    assert v.dedup_key == "exfiltration:coi-1:net"


def test_many_small_flows_add_up() -> None:
    events = []
    for i in range(30):  # 30 parallel uploads of 4 MiB, each a new/destroy pair
        events += [flow("new", 0, i, flow_id=100 + i, sport=41000 + i),
                   flow("destroy", 4 * MIB, i + 0.5, flow_id=100 + i, sport=41000 + i)]
    assert len(run(Exfiltration(), events)) == 1


def test_counter_reset_is_a_new_flow_never_negative() -> None:
    det = Exfiltration()
    events = [flow("new", 0, 0), flow("counter", 90 * MIB, 10),
              flow("counter", 5 * MIB, 20)]  # id reused by a new flow: +5 MiB, not -85
    assert run(det, events) == []
    assert det.stats.resets == 1
    assert det._box("coi-1").net.value(int(20 * S)) == 95 * MIB
    assert len(run(det, [flow("counter", 11 * MIB, 25)])) == 1  # 101 MiB in the window


def test_readings_without_counters_change_nothing() -> None:
    det = Exfiltration()
    events = [flow("new", 0, 0), flow("counter", 60 * MIB, 10), flow("update", 0, 11),
              flow("counter", 70 * MIB, 12)]
    assert run(det, events) == []  # 70 MiB, not 60 + 70
    assert det._box("coi-1").net.value(int(12 * S)) == 70 * MIB
    assert det.stats.resets == 0


def test_no_double_counting_of_cumulative_readings() -> None:
    det = Exfiltration()
    events = [flow("new", 0, 0)] + [flow("update", 60 * MIB, 1 + i * 0.1) for i in range(50)]
    assert run(det, events) == []
    assert det._box("coi-1").net.value(int(6 * S)) == 60 * MIB


def test_unknown_old_flow_is_a_baseline() -> None:
    det = Exfiltration()
    # a flow that predates the detector: 10 GiB already, then grows by 1 MiB
    events = [flow("counter", 10 << 30, 100), flow("counter", (10 << 30) + MIB, 110)]
    assert run(det, events) == []
    assert det.stats.baselined == 1
    assert det._box("coi-1").net.value(int(110 * S)) == MIB


def test_missed_new_with_fresh_start_stamp_counts_from_zero() -> None:
    det = Exfiltration()
    wall = 1_700_000_000 * S
    ev = flow("destroy", 150 * MIB, 5, start_ns=wall - 3 * S, wall_ns=wall)
    assert len(run(det, [ev])) == 1


def test_loopback_and_private_flows_do_not_count_by_default() -> None:
    events = [flow("new", 0, 0, dst="127.0.0.1"), flow("destroy", 500 * MIB, 5, dst="127.0.0.1"),
              flow("new", 0, 0, flow_id=8, dst="10.0.0.9"),
              flow("destroy", 500 * MIB, 5, flow_id=8, dst="10.0.0.9")]
    assert run(Exfiltration(), events) == []
    priv = run(Exfiltration({"include_private": True}), events)
    assert len(priv) == 1 and priv[0].evidence["top_destinations"][0]["dst"] == "10.0.0.9"


def test_window_inside_vs_spread() -> None:
    # 120 MiB within 50 s fires; 120 MiB over 150 s (0.8 MiB/s) does not
    inside = [flow("new", 0, 0)] + [flow("counter", i * 12 * MIB, i * 5.0) for i in range(1, 11)]
    assert len(run(Exfiltration(), inside)) == 1
    spread = [flow("new", 0, 0)] + [flow("counter", i * 8 * MIB, i * 10.0) for i in range(1, 16)]
    assert run(Exfiltration(), spread) == []


def test_slow_exfiltration_hits_the_long_window() -> None:
    det = Exfiltration()
    events = [flow("new", 0, 0)]
    events += [flow("counter", i * 20 * MIB, i * 60.0) for i in range(1, 60)]  # 1.18 GiB/h
    verdicts = run(det, events)
    assert [v.dedup_key for v in verdicts] == ["exfiltration:coi-1:net_long"]
    assert verdicts[0].evidence["window_s"] == 28800


def test_rearms_after_the_window_falls_back() -> None:
    det = Exfiltration()
    burst = [flow("new", 0, 0), flow("counter", 150 * MIB, 10)]
    assert len(run(det, burst)) == 1
    assert run(det, [flow("counter", 160 * MIB, 20)]) == []  # still over: no repeat
    assert run(det, [flow("counter", 161 * MIB, 200)]) == []  # window fell back: re-armed
    assert len(run(det, [flow("counter", 300 * MIB, 210)])) == 1


def test_benign_agent_network_is_quiet() -> None:
    det = Exfiltration()
    events: list[NetFlow | FileAccess] = []
    fid = 1
    for minute in range(120):  # two hours of API calls, git fetches, a pip install
        for k in range(20):
            t = minute * 60 + k * 3
            events += [flow("new", 0, t, flow_id=fid), flow("destroy", 200_000, t + 1, flow_id=fid)]
            fid += 1
    events.append(flow("new", 0, 3000, flow_id=fid))  # git push of 30 MiB
    events.append(flow("destroy", 30 * MIB, 3010, flow_id=fid))
    events.sort(key=lambda e: e.ts_ns)
    assert run(det, events) == []


# ----------------------------------------------------------------------------- files


def test_staging_archive_write_is_high() -> None:
    verdicts = run(Exfiltration(), [fa("close_write", "/workspace/out.tar", 80 * MIB, 1)])
    assert len(verdicts) == 1
    v = verdicts[0]
    assert v.dedup_key == "exfiltration:coi-1:file_write"
    assert v.evidence["trigger"] == "volume" and "T1074.001" in v.mitre
    assert v.pid == 42


def test_bulk_read_burst_and_sustained_rate() -> None:
    burst = [fa("close_nowrite", f"/home/u/data{i}.bin", 6 * MIB, 1 + i * 0.1) for i in range(10)]
    v = run(Exfiltration(), burst)
    assert len(v) == 1 and v[0].evidence["trigger"] == "volume"
    # 12 MiB/s for a minute: each 2 s slice (24 MiB) is under 50 MiB, the rate is not
    sustained = [fa("close_nowrite", f"/root/f{i}", 12 * MIB, i * 1.0) for i in range(60)]
    v = run(Exfiltration(), sustained)
    assert len(v) == 1 and v[0].evidence["trigger"] == "rate"
    assert v[0].dedup_key == "exfiltration:coi-1:file_read"


def test_append_counts_growth_and_rereads_are_not_counted() -> None:
    det = Exfiltration()
    log = [fa("close_write", "/workspace/build.log", (i + 1) * 5 * MIB, i * 0.01)
           for i in range(40)]  # a 200 MiB log appended 5 MiB at a time over 0.4 s
    v = run(det, log)
    assert len(v) == 1 and v[0].evidence["burst_bytes"] == 55 * MIB  # crossed at 55 MiB
    # 200 MiB of growth in all, not the 4 GiB of summed sizes
    assert det._box("coi-1").write.value(int(0.39 * S)) == 200 * MIB
    det = Exfiltration()
    reread = [fa("close_nowrite", "/workspace/db.sqlite", 30 * MIB, i * 0.05) for i in range(30)]
    assert run(det, reread) == []


def test_benign_file_activity_is_quiet() -> None:
    det = Exfiltration()
    events = []
    for i in range(5000):  # npm install into node_modules, a build, a venv
        events.append(fa("close_write", f"/workspace/node_modules/p{i}/index.js", 200_000,
                         i * 0.005))
        events.append(fa("close_nowrite", f"/workspace/.venv/lib/m{i}.py", 100_000, i * 0.005))
    for i in range(300):  # editing and reading sources
        events.append(fa("close_write", f"/workspace/src/f{i % 30}.py", 20_000 + i, 30 + i))
        events.append(fa("close_nowrite", f"/workspace/src/f{i % 30}.py", 20_000 + i, 30 + i))
    events.append(fa("close_write", "/tmp/big.iso", 4 << 30, 400))  # outside paths
    events.append(fa("close_nowrite", "/usr/lib/libx.so", 200 * MIB, 400))
    events.append(fa("open", "/workspace/huge", 1 << 30, 401))
    events.sort(key=lambda e: e.ts_ns)
    assert run(det, events) == []


def test_go_keys_and_write_keys() -> None:
    det = Exfiltration({"file_read_threshold_mb": 5, "file_write_threshold_mb": 500,
                        "file_write_rate_mb_per_sec": 100, "paths": ["/srv"]})
    assert len(run(det, [fa("close_nowrite", "/srv/a", 6 * MIB, 1)])) == 1
    assert run(det, [fa("close_write", "/srv/b", 400 * MIB, 1)]) == []
    assert run(det, [fa("close_nowrite", "/workspace/a", 60 * MIB, 1)]) == []


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(("key", "value"), [
    ("window_s", 0), ("net_bytes_threshold_mb", -1), ("net_bytes_threshold_mb", "100"),
    ("include_private", 1), ("paths", "/workspace"), ("exclude_dirs", [""]),
    ("file_read_threshold_mb", 0), ("file_read_rate_mb_per_sec", float("nan")),
    ("file_write_threshold_mb", True), ("file_severity", "meh"), ("max_flows", 0),
])
def test_bad_config_names_the_key(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"detectors\.exfiltration\.{key}"):
        Exfiltration({key: value})


# ----------------------------------------------------------------------------- bounds


def test_flows_bounded_under_ten_times_the_cap() -> None:
    det = Exfiltration({"max_flows": 20_000})
    feed = det.feed
    for i in range(N_DISTINCT):
        ev = flow("counter" if i & 1 else "new", 1000, i * 0.0001, flow_id=i + 1)
        feed(ev, ev.ts_ns)
    assert len(det._flows) <= 20_000
    assert det.stats.flows_evicted >= N_DISTINCT - 20_000


def test_files_bounded_and_hostile_paths_cheap() -> None:
    det = Exfiltration({"max_files": 1000})
    for i in range(100_000):
        ev = fa("close_write", f"/workspace/f{i}", 10, i * 0.001)
        det.feed(ev, ev.ts_ns)
    assert len(det._written) <= 1000
    long = "/workspace/" + "a/" * 2000
    start = time.perf_counter()
    for i in range(1000):
        ev = fa("close_nowrite", long + str(i), 10, 200 + i * 0.001)
        det.feed(ev, ev.ts_ns)
    assert time.perf_counter() - start < 0.5


# ----------------------------------------------------------------------------- windows


def test_sliding_sum_is_exact_to_one_slice() -> None:
    w = SlidingSum(60 * S, 60)
    w.add(0, 5)
    w.add(30 * S, 7)
    assert w.value(59 * S) == 12
    assert w.value(61 * S) == 7  # the first slice fell out
    assert w.value(500 * S) == 0
    w.add(500 * S, 1)
    w.add(400 * S, 2)  # out of order: into the newest slice
    assert w.value(500 * S) == 3


def test_sliding_counts_and_distinct() -> None:
    c = SlidingCounts(10 * S, 3, 10)
    c.add_many(0, (1, 0, 2))
    c.add(5 * S, 1, 4)
    assert c.value(9 * S) == [1, 4, 2]
    assert c.value(12 * S) == [0, 4, 0]
    d: DistinctWindow[str] = DistinctWindow(10 * S, 3)
    assert d.add(0, "a") == (1, True)
    assert d.add(1, "a") == (1, False)
    d.add(2, "b"), d.add(3, "c"), d.add(4, "d")
    assert len(d) == 3 and d.dropped == 1
    assert d.count(20 * S) == 0
