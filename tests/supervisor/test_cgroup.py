"""Direct cgroup freezing: the layouts (with a fake root) and a real container."""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path

import pytest

from coi_watch import cgroup


def test_v1_layout(tmp_path: Path) -> None:
    d = tmp_path / "freezer" / "lxc.payload.c1"
    d.mkdir(parents=True)
    (d / "freezer.state").write_text("THAWED\n")
    assert cgroup.frozen("c1", root=tmp_path) is False
    assert cgroup.freeze("c1", root=tmp_path)
    assert (d / "freezer.state").read_text().strip() == "FROZEN"
    assert cgroup.frozen("c1", root=tmp_path) is True


def test_v2_layout(tmp_path: Path) -> None:
    d = tmp_path / "unified" / "lxc.payload.c2"
    d.mkdir(parents=True)
    (d / "cgroup.freeze").write_text("0\n")
    (d / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    assert cgroup.frozen("c2", root=tmp_path) is False
    assert cgroup.freeze("c2", root=tmp_path)
    assert (d / "cgroup.freeze").read_text().strip() == "1"
    (d / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    assert cgroup.frozen("c2", root=tmp_path) is True


def test_missing_container_and_bad_names(tmp_path: Path) -> None:
    assert cgroup.freeze("nope", root=tmp_path) is False
    assert cgroup.frozen("nope", root=tmp_path) is None
    for bad in ("", "..", "a/b"):
        with pytest.raises(ValueError):
            cgroup.freeze(bad, root=tmp_path)


@pytest.mark.incus
@pytest.mark.privileged
def test_real_container_freezes_in_milliseconds(tmp_path: Path) -> None:
    name = f"coi-t-cg-{secrets.token_hex(3)}"
    subprocess.run(["incus", "launch", "coi-bb", name], check=True, capture_output=True)
    try:
        subprocess.Popen(["incus", "exec", name, "--", "sh", "-c",
                          "while true; do echo x >> /tmp/c; done"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        t0 = time.monotonic()
        assert cgroup.freeze(name)
        while not cgroup.frozen(name):
            assert time.monotonic() - t0 < 1.0, "kernel did not freeze within 1 s"
            time.sleep(0.0005)
        froze_ms = (time.monotonic() - t0) * 1000
        root = Path(f"/proc/{_init_pid(name)}/root/tmp/c")
        size = root.stat().st_size
        time.sleep(0.3)
        assert root.stat().st_size == size, "a frozen container kept writing"
        assert froze_ms < 200
    finally:
        subprocess.run(["incus", "delete", "--force", name], capture_output=True)


def _init_pid(name: str) -> int:
    out = subprocess.run(["incus", "query", f"/1.0/instances/{name}/state"], check=True,
                         capture_output=True, text=True).stdout
    import orjson

    return int(orjson.loads(out)["pid"])
