"""NIC hot-plug: a NIC added to a watched container is watched at once, driven by the
kernel's net-device events (no polling), and its traffic is attributed to the container."""

from __future__ import annotations

import random
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.incus, pytest.mark.privileged]


def test_a_hot_plugged_nic_is_watched_and_its_packets_attributed(e2e: Any,
                                                                 tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    bridge = f"coi-tb{tag}"
    x = random.randrange(0, 256)
    made = e2e.incus("network", "create", bridge, f"ipv4.address=198.18.{x}.1/24",
                     "ipv4.nat=false", "ipv6.address=none", "ipv4.dhcp=false",
                     "ipv4.routing=false", "dns.mode=none", "ipv4.firewall=false",
                     check=False, timeout=120)
    assert made.returncode == 0, made.stderr
    audit = tmp_path / "audit"
    try:
        with e2e.container("coi-e2e-hp") as name:  # no NIC yet
            watcher = e2e.LiveWatcher("--pattern", "coi-e2e-hp-*", audit_dir=audit)
            try:
                watcher.wait_note(f"sources attached to {name}")
                t0 = time.monotonic()
                e2e.incus("config", "device", "add", name, "eth0", "nic", f"network={bridge}",
                          "name=eth0")
                # The kernel's veth uevent makes the supervisor attach again with the NIC:
                # wait for the second "sources attached" note.
                def attached_notes() -> list[dict[str, object]]:
                    return [r for r in list(watcher.lines) if r.get("kind") == "note" and str(
                        r.get("message", "")).startswith(f"sources attached to {name}")]

                rec = watcher.wait_line(lambda r: len(attached_notes()) >= 2, timeout=15)
                elapsed = time.monotonic() - t0
                assert rec is not None, watcher.lines[-10:]
                e2e.incus("exec", name, "--", "sh", "-c",
                          f"ip addr add 198.18.{x}.40/24 dev eth0; ip link set eth0 up; "
                          f"nc -w 1 198.18.{x}.1 9 </dev/null; true", timeout=60)
                time.sleep(0.5)
            finally:
                watcher.stop()
            records = e2e.audit_records(audit / f"{name}.jsonl")
            attached = [r["data"] for r in records if r["kind"] == "system"
                        and r["data"].get("what") == "sources_attached"]
            assert len(attached) >= 2 and attached[0]["veths"] == [], attached
            assert attached[-1]["veths"], attached  # the host end of the new NIC
            connects = [r["data"] for r in records if r["kind"] == "event"
                        and r["data"]["kind"] == "net.connect"
                        and r["data"]["dst"] == f"198.18.{x}.1" and r["data"]["dport"] == 9]
            assert connects, [(r["kind"], r["data"].get("kind") or r["data"].get("what"))
                              for r in records]
            assert elapsed < 10
    finally:
        e2e.incus("network", "delete", bridge, check=False)
