"""Tests for coi_watch.health and ``coi-watch health``: the registry, exit codes, the CLI, and
the real probes on this machine (privileged)."""

from __future__ import annotations

import asyncio
import gzip
import os
from pathlib import Path

import orjson
import pytest
import typer
from typer.testing import CliRunner

from coi_watch import health as H
from coi_watch.cli.health import health
from coi_watch.health import CheckResult, HealthContext, exit_code, run_checks


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, H.Check]:
    """An empty registry for the test (the real one is restored afterwards)."""
    monkeypatch.setattr(H, "CHECKS", {})
    monkeypatch.setattr(H, "CRITICAL", set())
    return H.CHECKS


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(health)

    @app.command()
    def _other() -> None:  # a second command keeps "health" a sub-command, as mounted
        pass

    return app


async def test_statuses_timeouts_and_crashes_are_reported(registry: dict) -> None:
    @H.register("good")
    async def good(ctx: HealthContext) -> CheckResult:
        return CheckResult("good", "ok", "fine")

    @H.register("blind")
    async def blind(ctx: HealthContext) -> CheckResult:
        return CheckResult("blind", "degraded", "no kernel feature")

    @H.register("slow")
    async def slow(ctx: HealthContext) -> CheckResult:
        await asyncio.sleep(10)
        raise AssertionError("not reached")

    @H.register("broken")
    async def broken(ctx: HealthContext) -> CheckResult:
        raise RuntimeError("bug in probe")

    res = {r.name: r for r in await run_checks(HealthContext(), timeout=0.1)}
    assert [r for r in res] == ["good", "blind", "slow", "broken"]
    assert res["good"].status == "ok"
    assert (res["blind"].status, res["blind"].reason) == ("degraded", "no kernel feature")
    assert res["slow"].status == "degraded" and "within 0.1 s" in res["slow"].reason
    assert res["broken"].status == "degraded" and "RuntimeError: bug in probe" in (
        res["broken"].reason)
    assert exit_code(res.values()) == 1
    assert exit_code([res["good"]]) == 0
    assert exit_code([]) == 0


async def test_critical_checks_make_the_report_unhealthy(registry: dict) -> None:
    @H.register("core", critical=True)
    async def core(ctx: HealthContext) -> CheckResult:
        return CheckResult("core", "degraded", "cannot write")

    @H.register("crash", critical=True)
    async def crash(ctx: HealthContext) -> CheckResult:
        raise OSError("gone")

    res = await run_checks(HealthContext())
    assert [r.status for r in res] == ["unhealthy", "unhealthy"]
    assert exit_code(res) == 2
    only = await run_checks(HealthContext(), ["crash", "unknown"])
    assert [r.name for r in only] == ["crash"]


def test_register_replaces_and_can_drop_criticality(registry: dict) -> None:
    async def a(ctx: HealthContext) -> CheckResult:
        return CheckResult("x", "ok")

    H.register("x", critical=True)(a)
    H.register("x")(a)
    assert list(H.CHECKS) == ["x"] and "x" not in H.CRITICAL


def test_kernel_config_is_read_from_config_gz(tmp_path: Path) -> None:
    p = tmp_path / "config.gz"
    with gzip.open(p, "wt") as f:
        f.write("# comment\nCONFIG_NFT_LOG=y\nCONFIG_FOO=m\nCONFIG_NAME=\"x y\"\n"
                "# CONFIG_NF_CONNTRACK_BRIDGE is not set\n")
    cfg = H.kernel_config(str(p))
    assert cfg == {"CONFIG_NFT_LOG": "y", "CONFIG_FOO": "m", "CONFIG_NAME": "x y"}
    assert H.kernel_config(str(tmp_path / "missing.gz")) == {}


def test_capabilities_of_this_process() -> None:
    caps = H.capabilities()
    assert (os.geteuid() != 0) or caps >> H.CAP_NET_ADMIN & 1
    assert H.capabilities(2**22 + 12345) == 0  # no such pid


async def test_without_cap_net_admin_nflog_is_degraded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(H, "capabilities", lambda pid="self": 0)
    res = await run_checks(HealthContext(), ["nflog", "conntrack"])
    assert [(r.status, "CAP_NET_ADMIN" in r.reason) for r in res] == [("degraded", True)] * 2


async def test_unusable_audit_dir_and_incus_socket_are_unhealthy(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    ctx = HealthContext(incus_socket=str(tmp_path / "no.socket"), audit_dir=blocker / "audit")
    res = {r.name: r for r in await run_checks(ctx, ["incus", "audit"])}
    assert res["incus"].status == "unhealthy" and "no.socket" in res["incus"].reason
    assert res["audit"].status == "unhealthy"
    assert exit_code(res.values()) == 2
    ok = await run_checks(HealthContext(audit_dir=tmp_path / "audit"), ["audit"])
    assert ok[0].status == "ok"


def test_cli_prints_lines_and_json_and_sets_the_exit_code(registry: dict,
                                                          tmp_path: Path) -> None:
    @H.register("proc")
    async def proc(ctx: HealthContext) -> CheckResult:
        return CheckResult("proc", "ok", "subscribed")

    @H.register("fanotify")
    async def fan(ctx: HealthContext) -> CheckResult:
        return CheckResult("fanotify", "degraded", "no FAN_REPORT_FD_ERROR", {"fd_error": False})

    args = ["health", "--audit-dir", str(tmp_path), "--config", str(tmp_path / "none.toml")]
    (tmp_path / "none.toml").write_text('[watch]\nsources = ["proc", "fanotify"]\n')
    r = CliRunner().invoke(_app(), args)
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    assert lines[0].split()[:3] == ["ok", "proc", "(on)"]
    assert lines[1].startswith("DEGRADED") and "no FAN_REPORT_FD_ERROR" in lines[1]
    r = CliRunner().invoke(_app(), [*args, "--json"])
    doc = orjson.loads(r.output)
    assert r.exit_code == 1 and doc["status"] == "degraded"
    assert doc["enabled_sources"] == ["proc", "fanotify"]
    assert doc["checks"][1] == {"name": "fanotify", "status": "degraded", "enabled": True,
                                "reason": "no FAN_REPORT_FD_ERROR", "detail": {"fd_error": False}}
    r = CliRunner().invoke(_app(), [*args, "--check", "proc"])
    assert r.exit_code == 0 and len(r.output.splitlines()) == 1
    r = CliRunner().invoke(_app(), [*args, "--check", "nope"])
    assert r.exit_code == 2


@pytest.mark.privileged
async def test_the_real_source_probes_pass_here_and_leave_nothing_behind(tmp_path: Path) -> None:
    from coi_watch.sources.nflog import DEFAULT_GROUP, bind_group, open_nflog_socket

    res = {r.name: r for r in await run_checks(
        HealthContext(audit_dir=tmp_path / "a"), ["proc", "nflog", "conntrack", "audit"])}
    assert {n: r.status for n, r in res.items()} == dict.fromkeys(res, "ok"), res
    group = res["nflog"].detail["group"]
    assert group >= DEFAULT_GROUP
    # The probe released its group and created no table (dry run).
    sock = open_nflog_socket(rcvbuf=1 << 16)
    try:
        assert bind_group(sock, group, tries=1) == group
    finally:
        sock.close()
    out = os.popen("nft -j list tables").read()
    assert not [o for o in orjson.loads(out)["nftables"]
                if "table" in o and o["table"]["name"].startswith("coi_watch_")
                and o["table"]["name"].endswith("_99")]
    fan = (await run_checks(HealthContext(), ["fanotify"]))[0]
    assert fan.status in ("ok", "degraded") and "fd_error" in fan.detail


@pytest.mark.incus
async def test_incus_probe_answers_with_the_server_version() -> None:
    sock = os.environ.get("COI_INCUS_SOCKET", "/var/lib/incus/unix.socket")
    res = (await run_checks(HealthContext(incus_socket=sock), ["incus"]))[0]
    assert res.status == "ok", res
    assert res.detail["version"] != "?"
