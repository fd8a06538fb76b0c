"""Tampering: something switched off or removed part of coi-watch's view of a container.

Strategy: sources publish a :class:`~coi_watch.events.Tamper` event when they lose sight of a
container in a way an attacker could cause (an nftables LOG rule deleted, a fanotify mark
gone, a cgroup moved); this detector turns each into a verdict, ``high`` by default. Blinding
the supervisor comes before the real attack, so it is worth a pause, but the same events
also come from honest breakage (a kernel without a feature, an administrator flushing
nftables), which is why it is not ``critical``. Falco has no equivalent; MITRE calls it
Impair Defenses (T1562.001).

No state: one verdict per event. The dedup key is ``tamper:<container>:<source>:<what>``,
so the response policy's window folds a source that reports the same loss repeatedly into
one response, while a different loss (another source, another ``what``) is a new threat.
``detail`` is evidence only, never part of the key (it carries counters and errnos).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from coi_watch.detectors._config import LEVELS, DetectorConfigError, as_level, cfg_level, check_keys
from coi_watch.events import Event, Tamper
from coi_watch.verdicts import Verdict

__all__ = ("LEVELS", "Tampering")

_NAME = "tamper"
_DETAIL_CHARS = 1024
_FIELD_CHARS = 256


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...(+{len(text) - limit} chars)"


class Tampering:
    """Tamper events as verdicts; the strategy is in the module docstring.

    Config keys (``[detectors.tamper]``), with defaults:

    ``severity = "high"``
        Level of every tamper verdict (``critical``, ``high``, ``warning``, ``info``,
        ``off``).
    ``overrides = {}``
        Levels for particular losses, keyed ``"SOURCE"`` or ``"SOURCE/WHAT"`` (the more
        specific key wins), e.g. ``{"nflog/rule_missing" = "critical"}``.

    Raises:
        ConfigError: an unknown key, or a level that is not one of :data:`LEVELS`.
    """

    name: ClassVar[str] = _NAME
    consumes: ClassVar[frozenset[str]] = frozenset({"tamper"})

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        cfg = dict(config or {})
        check_keys(_NAME, cfg, ("severity", "overrides"))
        self._severity = cfg_level(_NAME, cfg, "severity", "high", LEVELS)
        overrides = cfg.get("overrides", {})
        if not isinstance(overrides, Mapping) or not all(
            isinstance(k, str) and k for k in overrides
        ):
            raise DetectorConfigError(f"detectors.{_NAME}.overrides: a table of "
                                      '"source" or "source/what" -> level')
        self._overrides = {k: as_level(_NAME, f"overrides.{k}", v, LEVELS)
                           for k, v in overrides.items()}

    def feed(self, ev: Event, now_ns: int) -> Iterable[Verdict]:
        """Take one tamper event; return one verdict (none when its level is ``off``)."""
        if not isinstance(ev, Tamper):
            return ()
        severity = self._overrides.get(f"{ev.source}/{ev.what}",
                                       self._overrides.get(ev.source, self._severity))
        if severity is None:
            return ()
        source, what = _clip(ev.source, _FIELD_CHARS), _clip(ev.what, _FIELD_CHARS)
        return (Verdict(
            ts_ns=ev.ts_ns,
            wall_ns=ev.wall_ns,
            container=ev.container,
            detector=self.name,
            title=f"Monitoring tampered with: {source} {what}",
            severity=severity,
            evidence={"source": source, "what": what,
                      "detail": _clip(ev.detail, _DETAIL_CHARS)},
            mitre=("T1562.001",),
            dedup_key=f"tamper:{ev.container}:{source}:{what}",
            event_kind=ev.kind,
        ),)
