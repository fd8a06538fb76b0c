"""Can coi-watch see what it needs to see here? Probes for ``coi-watch health``.

Strategy: every check is an async function registered under a name in :data:`CHECKS`
(:func:`register`); it *tries* the real thing (open the socket, bind the group, dry-run the
nftables table, call ``fanotify_init``) rather than reading version numbers, then undoes it,
and returns a :class:`CheckResult` whose status is ``ok``, ``degraded`` (a source cannot
work: coi-watch runs, but blind in that respect) or ``unhealthy`` (nothing can work: Incus
unreachable, audit log unwritable). The reason names what is missing and, where
``/proc/config.gz`` tells, the kernel option (:func:`kernel_config`). A check that raises or
overruns its timeout is reported as such, never crashes the report.

Sources written later register their own probe::

    from coi_watch.health import CheckResult, HealthContext, register

    @register("mysource")
    async def _check(ctx: HealthContext) -> CheckResult: ...

Exit status of :func:`exit_code`: 0 all ok, 1 something degraded, 2 something unhealthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal

from coi_watch.errors import AuditError, CoiWatchError, IncusError

__all__ = (
    "CHECKS",
    "CRITICAL",
    "Check",
    "CheckResult",
    "HealthContext",
    "Status",
    "capabilities",
    "exit_code",
    "kernel_config",
    "register",
    "run_checks",
)

Status = Literal["ok", "degraded", "unhealthy"]
_RANK: Final[Mapping[str, int]] = {"ok": 0, "degraded": 1, "unhealthy": 2}


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of the report: ``name``, ``status``, the ``reason`` in words, ``detail``."""

    name: str
    status: Status
    reason: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "status": self.status, "reason": self.reason,
                "detail": dict(self.detail)}


@dataclass(frozen=True, slots=True)
class HealthContext:
    """What checks may look at: the Incus socket, the audit directory, the sources the
    config enables, and each source's config table."""

    incus_socket: str = "/var/lib/incus/unix.socket"
    audit_dir: Path = field(default_factory=lambda: Path("~/.coi/audit").expanduser())
    enabled_sources: tuple[str, ...] = ()
    source_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


Check = Callable[[HealthContext], Awaitable[CheckResult]]
CHECKS: dict[str, Check] = {}
"""name -> check, in registration order (the report's order)."""
CRITICAL: set[str] = set()
"""Checks whose failure is ``unhealthy`` (coi-watch cannot work at all)."""


def register(name: str, *, critical: bool = False) -> Callable[[Check], Check]:
    """Decorator: add ``check`` under ``name`` (replacing an earlier one of that name)."""

    def add(check: Check) -> Check:
        CHECKS[name] = check
        if critical:
            CRITICAL.add(name)
        else:
            CRITICAL.discard(name)
        return check

    return add


async def run_checks(
    ctx: HealthContext, names: Iterable[str] | None = None, *, timeout: float = 5.0
) -> list[CheckResult]:
    """Run the checks (all, or ``names``) concurrently; each is bounded by ``timeout``."""
    chosen = list(CHECKS) if names is None else [n for n in names if n in CHECKS]

    async def one(name: str) -> CheckResult:
        bad: Status = "unhealthy" if name in CRITICAL else "degraded"
        try:
            res = await asyncio.wait_for(CHECKS[name](ctx), timeout)
        except TimeoutError:
            return CheckResult(name, bad, f"check did not finish within {timeout:g} s")
        except Exception as exc:  # a broken probe is a finding, not a crash
            return CheckResult(name, bad, f"check failed: {type(exc).__name__}: {exc}")
        if res.status != "ok" and name in CRITICAL and res.status != "unhealthy":
            res = CheckResult(res.name, "unhealthy", res.reason, res.detail)
        return res

    return list(await asyncio.gather(*(one(n) for n in chosen)))


def exit_code(results: Iterable[CheckResult]) -> int:
    """0 all ok, 1 degraded, 2 unhealthy."""
    return max((_RANK[r.status] for r in results), default=0)


# --------------------------------------------------------------------------- facts


@cache
def kernel_config(path: str = "/proc/config.gz") -> Mapping[str, str]:
    """``CONFIG_X -> y|m|value`` from the running kernel's config; empty when not exposed."""
    try:
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            k, v = line.split("=", 1)
            out[k] = v.strip('"')
    return out


def _config_hint(*options: str) -> str:
    cfg = kernel_config()
    if not cfg:
        return ""
    missing = [o for o in options if cfg.get(o) not in ("y", "m")]
    return f" (kernel config lacks {', '.join(missing)})" if missing else ""


CAP_NET_ADMIN: Final = 12  # linux/capability.h
CAP_SYS_ADMIN: Final = 21


def capabilities(pid: int | str = "self") -> int:
    """The effective capability mask (``CapEff`` in ``/proc/PID/status``); 0 if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def _has_cap(cap: int) -> bool:
    return bool(capabilities() >> cap & 1)


def _need(cap: int, name: str, what: str) -> CheckResult | None:
    if _has_cap(cap):
        return None
    return CheckResult(what, "degraded", f"needs {name} (run coi-watch as root)")


async def _in_thread(fn: Callable[[], CheckResult]) -> CheckResult:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


# --------------------------------------------------------------------------- sources


@register("proc")
async def check_proc(ctx: HealthContext) -> CheckResult:
    """Subscribe to the proc connector and wait for the kernel's ack, then unsubscribe."""
    from coi_watch.sources.proc import open_connector
    from coi_watch.wire.proc_connector import (
        PROC_CN_MCAST_IGNORE,
        PROC_CN_MCAST_LISTEN,
        parse,
        subscribe_message,
    )

    def probe() -> CheckResult:
        try:
            sock = open_connector(1 << 16)
        except CoiWatchError as exc:
            return CheckResult("proc", "degraded", str(exc) + _config_hint(
                "CONFIG_CONNECTOR", "CONFIG_PROC_EVENTS"))
        nonce = secrets.randbelow(1 << 30)
        try:
            sock.setblocking(True)
            sock.settimeout(0.2)
            sock.send(subscribe_message(PROC_CN_MCAST_LISTEN, ack=nonce))
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                with contextlib.suppress(CoiWatchError):
                    for rec in parse(data):
                        if rec.what == "ack" and rec.ack == nonce + 1:
                            if rec.err:
                                return CheckResult("proc", "degraded", "kernel refused the "
                                                   f"subscription: {os.strerror(rec.err)}")
                            return CheckResult("proc", "ok", "proc connector subscribed")
            return CheckResult("proc", "degraded", "no answer from the proc connector: coi-watch "
                               "must run as root in the initial user and pid namespace")
        finally:
            with contextlib.suppress(OSError):
                sock.send(subscribe_message(PROC_CN_MCAST_IGNORE))
            sock.close()

    return await _in_thread(probe)


@register("nflog")
async def check_nflog(ctx: HealthContext) -> CheckResult:
    """Bind a free NFLOG group, and dry-run coi-watch's nftables table (nothing is kept)."""
    from coi_watch.nft import check_table
    from coi_watch.sources.nflog import DEFAULT_GROUP, bind_group, open_nflog_socket

    missing = _need(CAP_NET_ADMIN, "CAP_NET_ADMIN", "nflog")
    if missing:
        return missing
    cfg = ctx.source_config.get("nflog", {})
    first = int(cfg.get("group", DEFAULT_GROUP))

    def probe() -> CheckResult:
        try:
            sock = open_nflog_socket(rcvbuf=1 << 16)
            try:
                group = bind_group(sock, first, tries=int(cfg.get("group_tries", 64)))
            finally:
                sock.close()
        except CoiWatchError as exc:
            return CheckResult("nflog", "degraded", str(exc) + _config_hint(
                "CONFIG_NETFILTER_NETLINK_LOG", "CONFIG_NFT_LOG"))
        try:
            backend = check_table(group, backend=str(cfg.get("nft_backend", "auto")))
        except CoiWatchError as exc:
            return CheckResult("nflog", "degraded", f"nftables refused coi-watch's table: {exc}"
                               + _config_hint("CONFIG_NF_TABLES_BRIDGE", "CONFIG_NFT_LOG"))
        taken = f"group {first} is taken (a running coi-watch?), " if group != first else ""
        return CheckResult("nflog", "ok", f"NFLOG {taken}group {group} free; nftables bridge "
                           f"table accepted (dry run, {backend})", {"group": group, "nft": backend})

    return await _in_thread(probe)


@register("conntrack")
async def check_conntrack(ctx: HealthContext) -> CheckResult:
    """Join the ctnetlink event groups (new, destroy)."""
    from coi_watch.wire.nfnetlink import (
        NETLINK_NETFILTER,
        NFNLGRP_CONNTRACK_DESTROY,
        NFNLGRP_CONNTRACK_NEW,
        group_mask,
    )

    missing = _need(CAP_NET_ADMIN, "CAP_NET_ADMIN", "conntrack")
    if missing:
        return missing
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    except OSError as exc:
        return CheckResult("conntrack", "degraded", f"no nfnetlink socket: {exc}")
    try:
        sock.bind((0, group_mask(NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY)))
    except OSError as exc:
        return CheckResult("conntrack", "degraded", f"cannot join conntrack events: {exc}"
                           + _config_hint("CONFIG_NF_CONNTRACK_EVENTS", "CONFIG_NF_CT_NETLINK"))
    finally:
        sock.close()
    hint = _config_hint("CONFIG_NF_CONNTRACK_EVENTS", "CONFIG_NF_CT_NETLINK")
    if hint:
        return CheckResult("conntrack", "degraded", "conntrack events unavailable" + hint)
    return CheckResult("conntrack", "ok", "conntrack event groups joined")


@register("fanotify")
async def check_fanotify(ctx: HealthContext) -> CheckResult:
    """``fanotify_init`` with ``FAN_REPORT_FD_ERROR`` (kernel 6.13+), else without."""
    from coi_watch.sources.fanotify import open_group

    try:
        fd, fd_error = open_group(fd_error=True)
    except CoiWatchError as exc:
        return CheckResult("fanotify", "degraded", str(exc) + _config_hint("CONFIG_FANOTIFY"))
    os.close(fd)
    if not fd_error:
        return CheckResult("fanotify", "degraded", "kernel lacks FAN_REPORT_FD_ERROR (6.13+): "
                           "files that cannot be opened are reported without a path",
                           {"fd_error": False})
    return CheckResult("fanotify", "ok", "fanotify group with FAN_REPORT_FD_ERROR",
                       {"fd_error": True})


# --------------------------------------------------------------------------- core


@register("incus", critical=True)
async def check_incus(ctx: HealthContext) -> CheckResult:
    """The Incus socket exists, we may use it, and ``GET /1.0`` answers."""
    from coi_watch.incus import IncusClient, check_socket

    try:
        check_socket(ctx.incus_socket)
        client = IncusClient.connect(ctx.incus_socket)
        try:
            info = await client.server_info()
        finally:
            await client.close()
    except IncusError as exc:
        return CheckResult("incus", "unhealthy", str(exc))
    env = info.get("environment") or {}
    version = str(env.get("server_version", "?"))
    return CheckResult("incus", "ok", f"Incus {version} at {ctx.incus_socket}",
                       {"version": version, "auth": info.get("auth", "")})


@register("audit", critical=True)
async def check_audit(ctx: HealthContext) -> CheckResult:
    """The audit directory can be created and a file in it written and synced."""
    from coi_watch.audit import AuditLog

    try:
        AuditLog(ctx.audit_dir).check()
    except AuditError as exc:
        return CheckResult("audit", "unhealthy", str(exc))
    except OSError as exc:
        return CheckResult("audit", "unhealthy", f"{ctx.audit_dir}: {exc.strerror or exc}")
    return CheckResult("audit", "ok", f"{ctx.audit_dir} writable")

