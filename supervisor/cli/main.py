"""``coi-watch``: the command line.

Strategy: a thin typer layer. Each command parses flags into the layered config
(:func:`coi_watch.config.load_config`: flags are the top layer), builds the pieces and runs
them; every :class:`~coi_watch.errors.CoiWatchError` becomes one clear line on stderr and a
non-zero exit code, never a traceback:

=====  ==========================================================
code   meaning
=====  ==========================================================
0      success (``watch``: stopped by SIGINT/SIGTERM)
1      the command's check failed (``audit verify``, ``rules lint``, ``replay --check``)
2      bad usage or configuration
3      Incus unreachable or refusing (socket missing, permission, API error)
4      the audit log cannot be written
5      an event source cannot start (privilege, kernel feature)
=====  ==========================================================
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from coi_watch import __version__
from coi_watch.config import Config, load_config
from coi_watch.errors import (
    AuditError,
    CoiWatchError,
    ConfigError,
    IncusError,
    RegistryError,
    SourceError,
)

if TYPE_CHECKING:
    from coi_watch.app import SupervisorOptions

__all__ = ("app", "fail", "main")

app = typer.Typer(
    name="coi-watch",
    help="Host-side security supervisor for AI coding agents in Incus containers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_CODES: list[tuple[type[CoiWatchError], int]] = [
    (ConfigError, 2), (RegistryError, 2), (IncusError, 3), (AuditError, 4), (SourceError, 5),
]


def fail(exc: CoiWatchError) -> NoReturn:
    """Print ``exc`` as one line and exit with its code."""
    code = next((c for t, c in EXIT_CODES if isinstance(exc, t)), 1)
    typer.echo(f"coi-watch: error: {exc}", err=True)
    raise typer.Exit(code)


def _config(config: Path | None, overrides: dict[str, Any]) -> Config:
    try:
        cfg = load_config(None if config is None else [config], overrides=overrides)
    except ConfigError as exc:
        fail(exc)
    for w in cfg.warnings:
        typer.echo(f"coi-watch: warning: {w}", err=True)
    return cfg


ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Read only this TOML file "
                      "(instead of /etc/coi, ~/.config/coi, ./.coi.toml, $COI_CONFIG).")]
AuditDirOpt = Annotated[Path | None, typer.Option("--audit-dir", help="Audit log directory "
                        "(default ~/.coi/audit).")]
SocketOpt = Annotated[str | None, typer.Option("--incus-socket", help="Incus unix socket "
                      "(default /var/lib/incus/unix.socket).")]


@app.command()
def version() -> None:
    """Print the coi-watch version."""
    typer.echo(f"coi-watch {__version__}")


@app.command()
def watch(
    names: Annotated[list[str] | None, typer.Argument(help="Containers to supervise "
                     "(default: every running container matching --pattern).")] = None,
    pattern: Annotated[str | None, typer.Option(help="Glob of container names to supervise "
                       "when no NAME is given (default coi-*).")] = None,
    monitor_only: Annotated[bool, typer.Option("--monitor-only",
                            help="Detect, audit and alert, but never pause or kill.")] = False,
    rules: Annotated[list[Path] | None, typer.Option("--rules", help="Extra Sigma rule file "
                     "or folder (repeatable).")] = None,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Follow Incus lifecycle "
                      "events: supervise matching containers as they start.")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    config: ConfigOpt = None,
    audit_dir: AuditDirOpt = None,
    incus_socket: SocketOpt = None,
) -> None:
    """Supervise running containers; print verdicts and actions as they happen.

    Example: coi-watch watch coi-agent-1 --audit-dir /var/log/coi
    """
    from coi_watch.app import SupervisorOptions

    cfg = _config(config, {
        "watch.pattern": pattern,
        "audit.dir": str(audit_dir) if audit_dir else None,
        "watch.incus_socket": incus_socket,
        "watch.follow": follow if not follow else None,
        "rules.paths": [str(p) for p in rules] if rules else None,
    })
    _supervise(cfg, SupervisorOptions(names=tuple(names or ()), monitor_only=monitor_only,
                                      follow=cfg.get("watch.follow")), json_out)


@app.command()
def attach(
    name: Annotated[str, typer.Argument(help="The container (session) to supervise.")],
    monitor_only: Annotated[bool, typer.Option("--monitor-only",
                            help="Detect, audit and alert, but never pause or kill.")] = False,
    rules: Annotated[list[Path] | None, typer.Option("--rules", help="Extra Sigma rule file "
                     "or folder (repeatable).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    config: ConfigOpt = None,
    audit_dir: AuditDirOpt = None,
    incus_socket: SocketOpt = None,
) -> None:
    """Supervise one session for its lifetime: exits when the container stops.

    One supervisor per container, enforced by a lock (~/.coi/run/NAME.lock); a second
    attach (or a watch that would take the same container) is refused.

    Example: coi-watch attach coi-agent-1
    """
    from coi_watch.app import SupervisorOptions

    cfg = _config(config, {
        "audit.dir": str(audit_dir) if audit_dir else None,
        "watch.incus_socket": incus_socket,
        "rules.paths": [str(p) for p in rules] if rules else None,
    })
    _supervise(cfg, SupervisorOptions(names=(name,), monitor_only=monitor_only, follow=True,
                                      exit_when_released=True), json_out)


def _supervise(cfg: Config, options: SupervisorOptions, json_out: bool) -> None:
    from coi_watch.app import Supervisor
    from coi_watch.cli.output import Printer
    from coi_watch.incus import IncusClient

    printer = Printer(json=json_out)

    async def run() -> None:
        client = IncusClient.connect(cfg.get("watch.incus_socket"))
        try:
            await Supervisor(cfg, options, client=client, printer=printer).run()
        finally:
            await client.close()

    try:
        asyncio.run(run())
    except CoiWatchError as exc:
        fail(exc)
    except KeyboardInterrupt:
        pass


@app.command()
def resume(
    name: Annotated[str, typer.Argument(help="The paused container.")],
    config: ConfigOpt = None,
    audit_dir: AuditDirOpt = None,
    incus_socket: SocketOpt = None,
) -> None:
    """Unfreeze a container paused by coi-watch, lift its quarantine, and record it.

    With a supervisor watching the container, the supervisor does it (it owns the
    quarantine rules); otherwise the container is unfrozen through Incus directly.

    Example: coi-watch resume coi-agent-1
    """
    from coi_watch.audit import AuditLog
    from coi_watch.control import request_resume
    from coi_watch.incus import IncusClient
    from coi_watch.responders.incus import resume as do_resume

    cfg = _config(config, {"audit.dir": str(audit_dir) if audit_dir else None,
                           "watch.incus_socket": incus_socket})

    async def run() -> int:
        run_dir = Path(os.path.expanduser(cfg.get("watch.run_dir")))
        # A running supervisor owns the container's state (its quarantine rules): ask it.
        rec = await request_resume(run_dir, name)
        if rec is None:
            audit = AuditLog(cfg.audit_dir)
            audit.check()
            client = IncusClient.connect(cfg.get("watch.incus_socket"))
            try:
                rec = await do_resume(client, name)
            finally:
                await client.close()
            audit.action(rec)
            await audit.close()
        msg = "; ".join(m for m in (rec.detail, rec.error) if m)
        typer.echo(f"{name}: {rec.action.value} {rec.status}" + (f" ({msg})" if msg else ""),
                   err=rec.status != "done")
        return 0 if rec.status == "done" else 3

    try:
        code = asyncio.run(run())
    except CoiWatchError as exc:
        fail(exc)
    raise typer.Exit(code)


def _mount_subcommands() -> None:
    """Mount the command groups that live in their own modules."""
    from coi_watch.cli.audit import audit_app

    app.add_typer(audit_app, name="audit", help="Verify and read audit logs.")
    try:
        from coi_watch.cli.rules import rules_app
    except ImportError as exc:  # pragma: no cover - only while the rules engine is absent
        print(f"coi-watch: rules commands unavailable: {exc}", file=sys.stderr)
    else:
        app.add_typer(rules_app, name="rules", help="Lint, test, list and explain Sigma rules.")
    from coi_watch.cli.replay import replay

    app.command()(replay)
    from coi_watch.cli.health import health

    app.command()(health)


_mount_subcommands()


def main() -> None:
    """Console-script entry point."""
    app()
