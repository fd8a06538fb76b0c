"""``coi-watch audit``: verify and read audit logs.

Strategy: a typer sub-app over :mod:`coi_watch.audit`, mounted by the main CLI as
``audit``. ``verify`` prints one line per file and sets the exit code (0 all intact, 1 a
chain is broken, 2 a file is missing or unreadable); ``show`` prints a timeline merged from
every file given (a directory stands for its ``*.jsonl`` files), filtered like ausearch(8),
as human lines or, with ``--json``, the raw record lines for piping to ``jq``. Lines that
are not records are skipped with a warning on stderr, so a damaged file still reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coi_watch.audit.chain import KINDS
from coi_watch.audit.read import (
    RecordFilter,
    expand_paths,
    format_record,
    merge_records,
    parse_time,
)
from coi_watch.audit.verify import verify_file
from coi_watch.errors import AuditError
from coi_watch.verdicts import Severity

__all__ = ("audit_app",)

audit_app = typer.Typer(
    help="Verify and read hash-chained audit logs (~/.coi/audit/<container>.jsonl).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Files = Annotated[list[Path], typer.Argument(
    metavar="FILE", show_default=False,
    help="Audit files, or directories standing for every *.jsonl inside.")]


def _files(paths: list[Path]) -> tuple[list[Path], int]:
    """The files to read, and 2 if a directory held none (else 0)."""
    code = 0
    for p in paths:
        if p.is_dir() and not any(p.glob("*.jsonl")):
            typer.echo(f"ERROR {p}: no *.jsonl files in this directory", err=True)
            code = 2
    return expand_paths(paths), code


@audit_app.command()
def verify(files: Files) -> None:
    """Check each file's hash chain, sequence numbers and record format.

    Prints "OK FILE (N records)" or "BROKEN FILE:LINE: reason" for the first broken record.
    Exit code 1 if any file is broken, 2 if a file is missing or unreadable.

    Example: coi-watch audit verify ~/.coi/audit
    """
    paths, code = _files(files)
    for p in paths:
        try:
            res = verify_file(p)
        except AuditError as exc:
            typer.echo(f"ERROR {exc}", err=True)
            code = 2
            continue
        if res.error is None:
            typer.echo(f"OK {p} ({res.records} records)")
        else:
            typer.echo(f"BROKEN {p}:{res.error.line}: {res.error.reason}")
            code = max(code, 1)
    raise typer.Exit(code)


@audit_app.command()
def show(
    files: Files,
    container: Annotated[list[str] | None, typer.Option(
        "--container", "-C", help="Only this container (repeatable).")] = None,
    kind: Annotated[list[str] | None, typer.Option(
        "--kind", "-k", help="Only this record kind: event, verdict, action, system "
        "(repeatable).")] = None,
    level: Annotated[str | None, typer.Option(
        "--level", "-l", help="Only verdicts of at least this severity: info, warning, high, "
        "critical (other kinds only if named with --kind).")] = None,
    since: Annotated[str | None, typer.Option(
        help="From this time: ISO 8601 (2026-02-18T10:23:45Z) or a span ago (10m, 2h, 1d).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Up to this time (same forms).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the raw record lines.")] = False,
) -> None:
    """Print records from one or more audit files as one timeline.

    Example: coi-watch audit show ~/.coi/audit --level high --since 2h
    """
    filt = RecordFilter(
        containers=frozenset(container or ()),
        kinds=frozenset(_kind(k) for k in kind or ()),
        level=_level(level),
        since_ns=_time(since, "--since"),
        until_ns=_time(until, "--until"),
    )
    paths, code = _files(files)
    for p in paths:
        if not p.is_file():
            typer.echo(f"ERROR cannot read {p}: no such file", err=True)
            code = 2
    paths = [p for p in paths if p.is_file()]

    def bad_line(path: str, line: int, reason: str) -> None:
        typer.echo(f"warning: {path}:{line}: skipped, not a record ({reason})", err=True)

    try:
        for rec in merge_records(paths, filt, on_bad_line=bad_line):
            typer.echo(rec.raw.decode("utf-8", "backslashreplace") if json_out
                       else format_record(rec))
    except AuditError as exc:
        typer.echo(f"ERROR {exc}", err=True)
        code = 2
    raise typer.Exit(code)


def _kind(value: str) -> str:
    if value not in KINDS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(sorted(KINDS))}",
                                 param_hint="--kind")
    return value


def _level(value: str | None) -> Severity | None:
    if value is None:
        return None
    try:
        return Severity(value.lower())
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not one of "
                                 f"{', '.join(s.value for s in Severity)}",
                                 param_hint="--level") from None


def _time(value: str | None, hint: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from None
