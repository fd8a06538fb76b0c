"""Plugin discovery through entry points.

Strategy: sources, detectors and responders (built-ins included) are registered under the
entry-point groups ``coi_watch.sources``, ``coi_watch.detectors`` and
``coi_watch.responders`` and loaded with :func:`importlib.metadata.entry_points`; nothing
scans namespaces. Every problem (an unknown name asked for, a name registered twice by two
distributions, an entry point that does not import) is a :class:`RegistryError` at start,
never a surprise at the first event.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from coi_watch.errors import RegistryError

__all__ = ("GROUPS", "available", "load", "load_all")

GROUPS = ("coi_watch.sources", "coi_watch.detectors", "coi_watch.responders")


def _entries(group: str) -> dict[str, EntryPoint]:
    if group not in GROUPS:
        raise RegistryError(f"unknown plugin group {group!r}")
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        other = found.get(ep.name)
        if other is not None and other.value != ep.value:
            raise RegistryError(
                f"{group}: name {ep.name!r} registered twice ({other.value} and {ep.value})"
            )
        found[ep.name] = ep
    return found


def available(group: str) -> tuple[str, ...]:
    """Names registered in ``group``, sorted.

    Raises:
        RegistryError: unknown group or a name registered twice.
    """
    return tuple(sorted(_entries(group)))


def load(group: str, name: str) -> Any:
    """The object (usually a class) registered as ``name`` in ``group``.

    Raises:
        RegistryError: unknown group or name, or the entry point fails to import.
    """
    entries = _entries(group)
    ep = entries.get(name)
    if ep is None:
        known = ", ".join(sorted(entries)) or "none"
        raise RegistryError(f"no {group} plugin named {name!r} (known: {known})")
    try:
        return ep.load()
    except Exception as exc:
        raise RegistryError(f"{group} plugin {name!r} ({ep.value}) failed to load: {exc}") from exc


def load_all(group: str, names: list[str] | None = None) -> dict[str, Any]:
    """``name -> object`` for ``names`` (all registered when None), in the given order.

    Raises:
        RegistryError: as :func:`load`.
    """
    return {n: load(group, n) for n in (names if names is not None else available(group))}
