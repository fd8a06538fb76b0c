"""``coi-watch health``: can coi-watch see and act on this machine?

Strategy: a thin typer command over :mod:`coi_watch.health`. It resolves the Incus socket,
audit directory and source settings from the layered config (flags on top), runs every
registered check concurrently, prints one line per check (or, with ``--json``, one object)
and exits 0 when all are ok, 1 when a source is degraded, 2 when coi-watch cannot work
(Incus unreachable or the audit log unwritable). The lead mounts it with
``app.command()(health)``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

__all__ = ("format_line", "health")

_MARK = {"ok": "ok", "degraded": "DEGRADED", "unhealthy": "UNHEALTHY"}


def format_line(name: str, status: str, reason: str, enabled: bool) -> str:
    """``ok        nflog      (on)  reason``."""
    return f"{_MARK.get(status, status):<10}{name:<11}{'(on) ' if enabled else '     '}{reason}"


def health(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    check: Annotated[list[str] | None, typer.Option("--check", help="Run only this check "
                     "(repeatable).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds each check may take.")] = 5.0,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Read only this TOML "
                      "file.")] = None,
    audit_dir: Annotated[Path | None, typer.Option("--audit-dir", help="Audit log directory "
                         "(default ~/.coi/audit).")] = None,
    incus_socket: Annotated[str | None, typer.Option("--incus-socket", help="Incus unix "
                            "socket.")] = None,
) -> None:
    """Check each event source, the Incus socket and the audit directory.

    Exit code 0 when all are ok, 1 when a source is degraded (coi-watch would run partly
    blind), 2 when Incus or the audit log is unusable.

    Example: coi-watch health --json
    """
    from coi_watch.cli.main import _config
    from coi_watch.health import CHECKS, HealthContext, exit_code, run_checks

    cfg = _config(config, {"audit.dir": str(audit_dir) if audit_dir else None,
                           "watch.incus_socket": incus_socket})
    enabled = tuple(cfg.get("watch.sources") or ())
    source_cfg: dict[str, Any] = {n: dict(cfg.get(f"sources.{n}", {}) or {}) for n in CHECKS}
    ctx = HealthContext(incus_socket=cfg.get("watch.incus_socket"), audit_dir=cfg.audit_dir,
                        enabled_sources=enabled, source_config=source_cfg)
    unknown = [c for c in check or () if c not in CHECKS]
    if unknown:
        typer.echo(f"coi-watch: error: unknown check(s) {', '.join(unknown)}; known: "
                   + ", ".join(CHECKS), err=True)
        raise typer.Exit(2)
    results = asyncio.run(run_checks(ctx, check or None, timeout=timeout))
    code = exit_code(results)
    if json_out:
        status = ("ok", "degraded", "unhealthy")[code]
        typer.echo(orjson.dumps({
            "status": status, "exit_code": code, "enabled_sources": list(enabled),
            "checks": [dict(r.as_dict(), enabled=r.name in enabled) for r in results],
        }).decode())
    else:
        for r in results:
            typer.echo(format_line(r.name, r.status, r.reason, r.name in enabled))
    raise typer.Exit(code)
