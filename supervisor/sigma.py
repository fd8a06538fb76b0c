"""Running the Sigma engine inside the supervisor: start-up load, reports, hot reload.

Strategy: the rule set is loaded once at start, *not* strictly: every rule that cannot be
loaded (an unsupported log source, a field coi-watch cannot observe, a broken file) is
reported with its file, line and reason, on the terminal and as a ``rule_not_loaded``
audit system record, and the rest runs. Nothing is skipped silently.

Hot reload (:class:`~coi_watch.rules.reload.RuleReloader`: SIGHUP or a changed rule file)
compiles the new set in a scratch engine and swaps it in between two events. A new set is
refused, and the running set kept, when it has an error the running set did not have (a
half-written file, a broken rule): errors already reported at start (rules that never
loaded) do not block every later reload. A refused reload is an audit ``system`` record
and an alert on the terminal.

The runner may restart the engine after an exception; :class:`SigmaHandle` keeps the
current rule set so a restarted engine starts from it, not from the start-up set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from coi_watch.rules.engine import RuleEngine, RuleSet
from coi_watch.rules.lint import Diagnostic
from coi_watch.rules.load import load_rules
from coi_watch.rules.reload import Built, RuleReloader
from coi_watch.rules.tuning import load_placeholders

__all__ = ("SigmaHandle",)

System = Callable[[str, str, Mapping[str, Any]], None]
Say = Callable[[str], None]


def _key(d: Diagnostic) -> tuple[str, str, str]:
    return (d.code, str(d.source), d.message)


class SigmaHandle:
    """The supervisor's grip on the ``sigma`` detector: its factory, reports and reloads."""

    def __init__(self, config: Mapping[str, Any], *, system: System, say: Say) -> None:
        self.config = dict(config)
        self.config["strict"] = False
        placeholders = self.config.get("placeholders") or None
        if isinstance(placeholders, str | Path):
            placeholders = load_placeholders(placeholders)
        self.placeholders: Mapping[str, Sequence[str]] | None = placeholders
        self.paths = [str(p) for p in self.config.get("rules") or ()]
        self.packs = bool(self.config.get("packs", True))
        self.current = RuleSet.load(self.paths, include_packs=self.packs,
                                    placeholders=self.placeholders)
        self.known_errors = {_key(d) for d in self.current.errors}
        self._system = system
        self._say = say
        self._engine: Callable[[], RuleEngine | None] = lambda: None
        for d in self.current.errors:
            system("", "rule_not_loaded", {"code": d.code, "where": str(d.source),
                                           "rule": d.rule, "reason": d.message})
            say(f"rule not loaded: {d}")

    def factory(self) -> RuleEngine:
        """A fresh engine on the current rule set (the runner's detector factory)."""
        return RuleEngine(self.config, ruleset=self.current)

    def bind(self, engine: Callable[[], RuleEngine | None]) -> None:
        """Tell the handle how to find the live engine (it can be restarted)."""
        self._engine = engine

    def swap(self, ruleset: RuleSet) -> None:
        """Swap ``ruleset`` into the live engine (the reloader's ``Swappable``)."""
        self.current = ruleset
        live = self._engine()
        if live is not None:
            live.swap(ruleset)

    def _build(self, paths: Sequence[str], include_packs: bool,
               placeholders: Mapping[str, Sequence[str]] | None) -> Built:
        result = load_rules(paths, include_packs=include_packs, placeholders=placeholders)
        diags = tuple(result.diagnostics)
        if any(d.severity == "error" and _key(d) not in self.known_errors for d in diags):
            return None, diags
        # Only the errors already reported at start: load the rest, as at start.
        relaxed = tuple(dataclasses.replace(d, severity="warning")
                        if d.severity == "error" else d for d in diags)
        return RuleSet.from_load(result), relaxed

    def reloader(self) -> RuleReloader:
        """A reloader wired to the audit log and the terminal."""
        return RuleReloader(self.paths, self, on_success=self._reloaded,
                            on_failure=self._refused, include_packs=self.packs,
                            placeholders=self.placeholders, build=self._build)

    def _reloaded(self, ruleset: RuleSet, diags: tuple[Diagnostic, ...]) -> None:
        self._system("", "rules_reloaded", {"rules": len(ruleset.rules),
                                            "warnings": len(diags)})
        self._say(f"rules reloaded: {len(ruleset.rules)} rules")

    def _refused(self, diags: tuple[Diagnostic, ...]) -> None:
        errors = [str(d) for d in diags if d.severity == "error"][:20]
        self._system("", "rules_reload_failed", {"errors": errors,
                                                 "kept": len(self.current.rules)})
        self._say("ALERT rule reload failed; keeping the running rules: "
                  + ("; ".join(errors[:3]) or "unknown error"))
