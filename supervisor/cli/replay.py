"""``coi-watch replay``: feed audit logs back through the detectors (forensics)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import orjson
import typer

from coi_watch.errors import CoiWatchError

__all__ = ("replay",)


def replay(
    files: Annotated[list[Path], typer.Argument(help="Audit files or folders of them.")],
    check: Annotated[bool, typer.Option("--check", help="Exit 1 unless the replay reaches "
                     "exactly the verdicts recorded live.")] = False,
    detector: Annotated[list[str] | None, typer.Option("--detector", "-d", help="Replay only "
                        "this detector (repeatable; default: all enabled).")] = None,
    rules: Annotated[list[Path] | None, typer.Option("--rules", help="Extra Sigma rule file "
                     "or folder for the sigma detector (repeatable).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print verdicts as JSON lines.")] = False,
    config: Annotated[Path | None, typer.Option("--config", "-c")] = None,
) -> None:
    """Replay audit logs through the detectors and print the verdicts they reach.

    Example: coi-watch replay ~/.coi/audit/coi-agent-1.jsonl --check
    """
    from coi_watch import registry
    from coi_watch.audit.read import expand_paths
    from coi_watch.cli.main import _config, fail
    from coi_watch.cli.output import Printer
    from coi_watch.replay import replay_file

    cfg = _config(config, {"rules.paths": [str(p) for p in rules] if rules else None})
    try:
        classes = registry.load_all("coi_watch.detectors",
                                    detector or cfg.get("detectors.enabled") or None)
        factories = {}
        for name, cls in classes.items():
            dcfg = cfg.detector(name)
            if name == "sigma":
                dcfg.setdefault("rules", cfg.get("rules.paths", []))
                dcfg.setdefault("packs", cfg.get("rules.packs", True))
            factories[name] = functools.partial(cls, dcfg)
        printer = Printer(json=json_out)
        differs = False
        for path in expand_paths(files):
            res = replay_file(path, factories)
            for v in res.verdicts:
                printer(v)
            for line in res.bad_lines:
                typer.echo(f"bad record: {line}", err=True)
            for err in res.detector_errors:
                typer.echo(f"detector error: {err}", err=True)
            summary = {"file": str(path), "events": res.events, "verdicts": len(res.verdicts),
                       "recorded": len(res.recorded), "missing": len(res.missing),
                       "extra": len(res.extra), "dropped_live": res.dropped,
                       "same": res.same}
            if json_out:
                typer.echo(orjson.dumps({"kind": "replay", **summary}).decode())
            else:
                typer.echo(f"{path}: {res.events} events -> {len(res.verdicts)} verdicts "
                           f"({len(res.recorded)} recorded live; {len(res.missing)} missing, "
                           f"{len(res.extra)} new" + (f"; {res.dropped} events were lost live"
                                                      if res.dropped else "") + ")")
            differs |= not res.same
    except CoiWatchError as exc:
        fail(exc)
    if check and differs:
        raise typer.Exit(1)
