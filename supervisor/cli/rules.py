"""``coi-watch rules``: lint, list, explain and test Sigma rules.

Strategy: a typer sub-app over :mod:`coi_watch.rules`, mounted by the main CLI as
``rules``. Every command loads rules exactly as the supervisor does (same loader, same
diagnostics), so what ``lint`` accepts is what ``watch`` runs.

- ``lint PATH...`` prints ``file:line: CODE severity message`` per finding (codes in
  :mod:`coi_watch.rules.lint`) and a summary on stderr; exit 1 when any is an error,
  0 when there are only warnings.
- ``list`` prints id, title, level, action, mode and file of every loaded rule.
- ``explain RULE EVENT.json`` shows, item by item, why a rule matches an event or not;
  exit 0 on a match, 1 on none.
- ``test PATH...`` runs declarative rule tests (``*.test.yml``, see
  :mod:`coi_watch.rules.testing`); exit 1 when one fails.

Exit code 2 means bad usage: a missing rule or event file, an event that does not decode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coi_watch.errors import CoiWatchError, WireError
from coi_watch.events import Event, event_from_json

__all__ = ("rules_app",)

rules_app = typer.Typer(
    help="Lint, list, explain and test Sigma rules.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RulesOpt = Annotated[list[Path] | None, typer.Option(
    "--rules", "-r", help="Rule file or folder to load (repeatable).")]
PacksOpt = Annotated[bool, typer.Option(
    "--packs/--no-packs", help="Also load coi-watch's built-in rule packs.")]
PlaceholdersOpt = Annotated[Path | None, typer.Option(
    "--placeholders", help="YAML file of placeholder lists for |expand (name: [values]).")]


def _placeholders(path: Path | None) -> dict[str, list[str]] | None:
    if path is None:
        return None
    from coi_watch.rules.tuning import load_placeholders

    try:
        return load_placeholders(path)
    except CoiWatchError as exc:
        typer.echo(f"coi-watch: error: {exc}", err=True)
        raise typer.Exit(2) from None


@rules_app.command()
def lint(
    paths: Annotated[list[Path], typer.Argument(help="Rule files or folders.",
                                                 show_default=False)],
    packs: Annotated[bool, typer.Option(
        "--packs/--no-packs", help="Lint the built-in packs too.")] = False,
    placeholders: PlaceholdersOpt = None,
) -> None:
    """Check rules and print every finding as "file:line: CODE severity message".

    Exit code 1 if any finding is an error (the rule would not load), 0 otherwise.

    Example: coi-watch rules lint ./my-rules sigma/rules/linux
    """
    from coi_watch.rules.lint import format_diagnostics
    from coi_watch.rules.load import load_rules

    result = load_rules(paths, include_packs=packs, placeholders=_placeholders(placeholders))
    for line in format_diagnostics(result.diagnostics):
        typer.echo(line)
    errors = len(result.errors)
    warnings = len(result.diagnostics) - errors
    typer.echo(f"{len(result.rules)} rules and {len(result.correlations)} correlations loaded "
               f"from {len(result.files)} files; {errors} errors, {warnings} warnings", err=True)
    raise typer.Exit(1 if errors else 0)


@rules_app.command("list")
def list_rules(
    rules: RulesOpt = None,
    packs: PacksOpt = True,
    placeholders: PlaceholdersOpt = None,
) -> None:
    """List the rules that load: id, title, level, action, mode and file.

    Example: coi-watch rules list --rules ./my-rules
    """
    from coi_watch.rules.load import load_rules

    result = load_rules(rules or [], include_packs=packs,
                        placeholders=_placeholders(placeholders))
    rows = [(r.id, r.title, r.level, r.action or "-", r.mode, str(r.source))
            for r in result.rules]
    rows += [(c.id, c.title, c.level, getattr(c, "action", "") or "-",
              getattr(c, "mode", "enforce"), str(getattr(c, "source", "")))
             for c in result.correlations]
    header = ("ID", "TITLE", "LEVEL", "ACTION", "MODE", "FILE")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    widths[1] = min(widths[1], 60)
    for row in (header, *rows):
        cells = [str(c) if i != 1 else _clip(str(c), widths[1]) for i, c in enumerate(row)]
        typer.echo("  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths, strict=False))
                   + "  " + cells[-1])
    if result.errors:
        typer.echo(f"{len(result.errors)} rule problems: run 'coi-watch rules lint' on the "
                   "same files", err=True)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _read_event(path: Path) -> Event:
    try:
        data = typer.get_binary_stream("stdin").read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        typer.echo(f"coi-watch: error: cannot read {path}: {exc.strerror}", err=True)
        raise typer.Exit(2) from None
    try:
        return event_from_json(data)
    except WireError as first:
        for line in data.splitlines():  # JSON lines: take the first event
            if line.strip():
                try:
                    return event_from_json(line)
                except WireError:
                    break
        typer.echo(f"coi-watch: error: {path}: {first}", err=True)
        raise typer.Exit(2) from None


@rules_app.command()
def explain(
    rule: Annotated[str, typer.Argument(help="Rule id, name or title, or a rule file.",
                                        show_default=False)],
    event: Annotated[Path, typer.Argument(help="Event as JSON (as in the audit log; '-' for "
                                          "stdin).", show_default=False)],
    rules: RulesOpt = None,
    packs: PacksOpt = True,
    placeholders: PlaceholdersOpt = None,
) -> None:
    """Show which selections and items of RULE match EVENT, and why.

    Exit code 0 when the rule matches, 1 when it does not, 2 on bad input.

    Example: coi-watch rules explain 7f734ed0-4f47-46c0-837f-6ee62505abd9 ev.json -r sigma/
    """
    from coi_watch.rules.explain import explain as do_explain
    from coi_watch.rules.explain import format_explanation
    from coi_watch.rules.load import load_rules

    ev = _read_event(event)
    as_file = Path(rule)
    if as_file.is_file():
        result = load_rules([as_file], include_packs=False,
                            placeholders=_placeholders(placeholders))
        candidates = list(result.rules)
    else:
        result = load_rules(rules or [], include_packs=packs,
                            placeholders=_placeholders(placeholders))
        candidates = [r for r in result.rules if rule in (r.id, r.name, r.title)]
        if not candidates:
            low = rule.lower()
            candidates = [r for r in result.rules if low in r.title.lower()]
    if not candidates:
        for d in result.errors:
            typer.echo(str(d), err=True)
        typer.echo(f"coi-watch: error: no loaded rule is {rule!r} (give --rules PATH, or a "
                   "rule file)", err=True)
        raise typer.Exit(2)
    matched = False
    for i, r in enumerate(candidates):
        if i:
            typer.echo("")
        x = do_explain(r, ev)
        matched = matched or x.matched
        for line in format_explanation(x):
            typer.echo(line)
    raise typer.Exit(0 if matched else 1)


@rules_app.command()
def test(
    paths: Annotated[list[Path], typer.Argument(help="Rule test files (*.test.yml) or folders.",
                                                 show_default=False)],
) -> None:
    """Run declarative rule tests: events in, expected verdicts out.

    Exit code 1 if a test fails or none is found.

    Example: coi-watch rules test tests/rules/
    """
    from coi_watch.rules.testing import run_tests

    report = run_tests(paths)
    typer.echo(report.render())
    raise typer.Exit(0 if report.ok else 1)
