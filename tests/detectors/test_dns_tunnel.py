"""DNS tunnelling detector: attack and benign corpora, windows, config, bounds, hostile input."""

from __future__ import annotations

import base64
import random
import time

import pytest

from coi_watch.detectors._net import registered_domain
from coi_watch.detectors.dns_tunnel import DnsTunnel
from coi_watch.errors import ConfigError
from coi_watch.events import DnsQuery
from coi_watch.verdicts import Severity, Verdict

S = 1_000_000_000
# Distinct keys fed to the bounded-state tests: well past every cap (10x and more), and
# cheap enough for CI. The state must stay at its cap whatever the count.
N_DISTINCT = 200_000
A, AAAA, PTR, TXT, NULL, CNAME, MX, ANY = 1, 28, 12, 16, 10, 5, 15, 255


def q(name: str, t_s: float, qtype: int = A, container: str = "coi-1") -> DnsQuery:
    ts = int(t_s * S)
    return DnsQuery(ts_ns=ts, wall_ns=ts, container=container, family=4, proto="udp",
                    src="10.10.0.5", sport=40000, dst="10.10.0.1", qname=name, qtype=qtype)


def run(det: DnsTunnel, events: list[DnsQuery]) -> list[Verdict]:
    out: list[Verdict] = []
    for ev in events:
        out.extend(det.feed(ev, ev.ts_ns))
    return out


def b32(rng: random.Random, nbytes: int) -> str:
    return base64.b32encode(rng.randbytes(nbytes)).decode().rstrip("=").lower()


def labels(data: str, size: int = 63) -> str:
    return ".".join(data[i:i + size] for i in range(0, len(data), size))


# ----------------------------------------------------------------------------- attacks


def test_iodine_null_queries_are_high_at_once() -> None:
    rng = random.Random(1)
    events = [q(f"{labels(b32(rng, 100))}.t.evil.example", 1 + i * 0.2, NULL)
              for i in range(5)]
    verdicts = run(DnsTunnel(), events)
    assert verdicts, "NULL + long names must fire"
    first = verdicts[0]
    assert first.severity is Severity.HIGH  # qtype + long_query on the first query
    assert set(first.evidence["signals"]) >= {"qtype", "long_query"}
    assert first.dedup_key == "dns_tunnel:coi-1:evil.example"
    assert "T1071.004" in first.mitre and "T1572" in first.mitre
    assert first.evidence["domain"] == "evil.example"
    assert first.evidence["thresholds"]["max_query_len"] == 90


def test_dnscat2_hex_txt_is_high_with_data_tag() -> None:
    rng = random.Random(2)
    events = []
    for i in range(40):
        data = rng.randbytes(30).hex()  # 60 hex chars: below 90 octets with the domain
        events.append(q(f"{data}.c2.example.com", 10 + i, TXT))
    verdicts = run(DnsTunnel(), events)
    assert verdicts
    top = verdicts[-1]
    assert top.severity is Severity.HIGH
    assert {"random_names", "qtype"} <= set(top.evidence["signals"])
    assert "T1048.003" in top.mitre
    assert top.evidence["domain"] == "example.com"


def test_slow_unique_subdomain_exfil_warns_then_persists_to_high() -> None:
    rng = random.Random(3)
    # short labels (no entropy, no length signal): only the unique count can see it
    events = [q(f"{b32(rng, 8)}.x.exfil.example.net", 100 + i * 10.0) for i in range(200)]
    verdicts = run(DnsTunnel(), events)
    assert [v.severity for v in verdicts] == [Severity.WARNING, Severity.HIGH]
    warn, high = verdicts
    assert warn.evidence["signals"] == ["unique_subdomains"]
    assert warn.evidence["unique_subdomains"] == 100
    assert high.evidence["persistent_s"] >= 300
    assert "T1048.003" in high.mitre


def test_binary_labels_count_as_random() -> None:
    det = DnsTunnel()
    rng = random.Random(4)
    events = []
    for i in range(12):
        raw = "".join(f"\\{b:03d}" for b in rng.randbytes(12))
        events.append(q(f"{raw}.bin.example.org", 5 + i, A))
    verdicts = run(det, events)
    assert verdicts and "random_names" in verdicts[0].evidence["signals"]


def test_single_long_query_is_only_a_warning() -> None:
    det = DnsTunnel()
    name = "a" * 60 + "." + "b" * 40 + ".example.com"
    verdicts = run(det, [q(name, 1)])
    assert [v.severity for v in verdicts] == [Severity.WARNING]
    assert verdicts[0].evidence["signals"] == ["long_query"]
    # the same domain's normal traffic afterwards adds nothing
    assert run(det, [q("www.example.com", 2 + i) for i in range(50)]) == []


def test_rate_only_corroborates() -> None:
    det = DnsTunnel()
    # 300 repeats of one name in 5 minutes: a package manager with no resolver cache
    assert run(det, [q("registry.npmjs.org", 1 + i, A) for i in range(300)]) == []
    # ... but with another signal tripping, the rate makes it high
    rng = random.Random(5)
    det = DnsTunnel()
    events = [q(f"{b32(rng, 8)}.poll.evil.example", 1 + i * 0.5) for i in range(120)]
    verdicts = run(det, events)
    assert verdicts[0].severity is Severity.HIGH
    assert set(verdicts[0].evidence["signals"]) == {"unique_subdomains", "rate"}


# ----------------------------------------------------------------------------- benign

BENIGN_NAMES = (
    "pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "github.com",
    "api.github.com", "codeload.github.com", "objects.githubusercontent.com",
    "raw.githubusercontent.com", "deb.debian.org", "security.debian.org",
    "dl-cdn.alpinelinux.org", "proxy.golang.org", "sum.golang.org", "crates.io",
    "static.crates.io", "index.crates.io", "api.anthropic.com", "api.openai.com",
    "copilot-proxy.githubusercontent.com", "production.cloudflare.docker.com",
    "registry-1.docker.io", "auth.docker.io", "storage.googleapis.com",
    "www.googleapis.com", "oauth2.googleapis.com", "sentry.io", "o123456.ingest.sentry.io",
)


def benign_session(rng: random.Random) -> list[DnsQuery]:
    """An hour of an agent's DNS: installs, a 50-name npm burst, CDN hashes, PTRs."""
    events: list[DnsQuery] = []
    t = 0.0
    for _ in range(400):
        t += rng.uniform(1, 8)
        name = rng.choice(BENIGN_NAMES)
        events += [q(name, t, A), q(name, t + 0.001, AAAA)]
    t = 900.0  # npm install burst: ~50 distinct lookups in a few seconds
    npm = [f"{p}.npmjs.org" for p in ("registry", "www", "docs", "api")] + [
        f"{w}.githubusercontent.com" for w in ("raw", "objects", "codeload", "avatars")
    ] + [f"pkg{i}.example-cdn.net" for i in range(20)] + [
        f"mirror{i}.jsdelivr.net" for i in range(10)
    ] + [f"s{i}.unpkg.com" for i in range(12)]
    for name in npm:
        t += 0.05
        events += [q(name, t, A), q(name, t, AAAA)]
    for i in range(6):  # CDN names with hashes, now and then
        h = f"{rng.getrandbits(56):014x}"
        events.append(q(f"d{h}.cloudfront.net", 1200 + i * 300, A))
        events.append(q(f"{rng.getrandbits(128):032x}.cdn.example-assets.com", 1300 + i * 400))
    for i in range(150):  # reverse look-ups of peers
        ip = [rng.randint(1, 254) for _ in range(4)]
        events.append(q(".".join(map(str, reversed(ip))) + ".in-addr.arpa", 2000 + i, PTR))
    nib = ".".join(f"{rng.getrandbits(128):032x}") + ".ip6.arpa"
    events.append(q(nib, 2500, PTR))
    events.append(q("_dmarc.example.com", 2600, TXT))
    events.append(q("_acme-challenge.example.com", 2601, TXT))
    events.append(q("_http._tcp.deb.debian.org", 2602, 33))
    events.sort(key=lambda e: e.ts_ns)
    return events


def test_benign_corpus_is_quiet() -> None:
    det = DnsTunnel()
    verdicts = run(det, benign_session(random.Random(7)))
    assert verdicts == [], [v.title for v in verdicts]
    assert det.stats.skipped >= 151  # the PTR look-ups


def test_reverse_names_with_data_are_analysed() -> None:
    rng = random.Random(8)
    events = [q(f"{b32(rng, 40)}.1.168.192.in-addr.arpa", 1 + i) for i in range(20)]
    assert run(DnsTunnel(), events)


# ----------------------------------------------------------------------------- windows


def test_unique_threshold_inside_vs_spread_beyond_the_window() -> None:
    rng = random.Random(9)
    inside = [q(f"{b32(rng, 6)}.w.example.org", i * 30.0) for i in range(100)]  # 50 min
    assert [v.evidence["signals"] for v in run(DnsTunnel(), inside)] == [["unique_subdomains"]]
    spread = [q(f"{b32(rng, 6)}.w.example.org", i * 40.0) for i in range(100)]  # 66 min
    assert run(DnsTunnel(), spread) == []


def test_episode_ends_and_a_new_burst_fires_again() -> None:
    det = DnsTunnel({"window_s": 60})
    name = "x" * 50 + "." + "y" * 50 + ".example.com"
    assert len(run(det, [q(name, 0)])) == 1
    assert run(det, [q(name, 10)]) == []  # same episode
    assert run(det, [q("www.example.com", 200)]) == []  # window empty: episode over
    assert len(run(det, [q(name, 300)])) == 1


def test_containers_are_separate() -> None:
    rng = random.Random(10)
    det = DnsTunnel()
    events = [q(f"{b32(rng, 6)}.s.example.org", i, container=f"coi-{i % 2}")
              for i in range(198)]
    assert run(det, events) == []  # 99 distinct names each


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(("key", "value"), [
    ("window_s", 0), ("window_s", "60"), ("unique_subdomains", 0), ("unique_subdomains", 1.5),
    ("entropy_bits", True), ("random_share", 1.5), ("odd_qtypes", [16, 70000]),
    ("blocked_qtypes", "10"), ("ignore_domains", [""]), ("max_domains", -1),
    ("max_name_len", 10), ("persist_s", -1),
])
def test_bad_config_names_the_key(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"detectors\.dns_tunnel\.{key}"):
        DnsTunnel({key: value})


def test_unknown_key_and_config_error_type() -> None:
    with pytest.raises(ConfigError, match="unknown keys"):
        DnsTunnel({"unique": 5})
    assert DnsTunnel({"mode": "monitor", "unique_subdomains": 5})._unique == 5


def test_ignore_domains() -> None:
    rng = random.Random(11)
    det = DnsTunnel({"ignore_domains": ["corp.internal"]})
    events = [q(f"{b32(rng, 40)}.svc.corp.internal", i, TXT) for i in range(50)]
    assert run(det, events) == []


# ----------------------------------------------------------------------------- bounds


def test_state_stays_bounded_under_ten_times_the_cap_distinct_domains() -> None:
    det = DnsTunnel({"max_domains": 1000})
    feed = det.feed
    for i in range(N_DISTINCT):
        ev = q(f"h{i}.d{i}.com", i * 0.001)
        feed(ev, ev.ts_ns)
    assert len(det._domains) <= 1000
    assert det.stats.evicted == N_DISTINCT - 1000


def test_unique_sets_are_capped() -> None:
    det = DnsTunnel({"unique_subdomains": 50})
    for i in range(100_000):
        ev = q(f"n{i}.one.example", i * 0.01)
        det.feed(ev, ev.ts_ns)
    st = next(iter(det._domains.values()))
    assert len(st.unique) <= 51


# ----------------------------------------------------------------------------- hostile


def test_hostile_names_stay_linear() -> None:
    rng = random.Random(12)
    names = []
    for i in range(1000):
        kind = i % 4
        if kind == 0:  # 4 x 63-byte labels: a 255-byte name
            name = ".".join(b32(rng, 40)[:63] for _ in range(3)) + "." + "z" * 61
        elif kind == 1:  # 127 one-byte labels
            name = ".".join(rng.choice("abcdef") for _ in range(127))
        elif kind == 2:  # all binary, escaped
            name = ".".join("".join(f"\\{b:03d}" for b in rng.randbytes(63)) for _ in range(4))
        else:  # maximal alphabet, many distinct characters
            name = "".join(chr(rng.randint(33, 126)) for _ in range(250)).replace(".", "a")
        names.append(name)
    det = DnsTunnel()
    start = time.perf_counter()
    for i, name in enumerate(names):
        ev = q(name, i * 0.01, NULL)
        det.feed(ev, ev.ts_ns)
    assert time.perf_counter() - start < 0.5


def test_registered_domain_fallback_without_psl() -> None:
    assert registered_domain("a.b.example.co.uk", use_psl=False) == "example.co.uk"
    assert registered_domain("x.y.example.com", use_psl=False) == "example.com"
    assert registered_domain("d123.cloudfront.net", use_psl=False) == "d123.cloudfront.net"
    assert registered_domain("files.pythonhosted.org") == "pythonhosted.org"
