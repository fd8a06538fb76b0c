"""Validators for the built-in detectors' ``[detectors.NAME]`` config tables.

Strategy: a detector reads its whole config once, in ``__init__``, and refuses anything it
does not understand before the first event, so a typo never leaves a check silently off.
Every reader here takes the detector's name, the config mapping, the key and its default,
returns the value in the type the detector uses, and otherwise raises
:class:`DetectorConfigError` (a :class:`~coi_watch.errors.ConfigError` *and* a
:class:`ValueError`) whose message starts with ``detectors.NAME.KEY`` and shows the value
it got.

- :func:`check_keys` refuses unknown keys and lists the known ones; ``mode`` belongs to the
  response policy and is accepted in every table.
- :func:`cfg_bool`, :func:`cfg_int` and :func:`cfg_number` refuse booleans posing as
  numbers (``True`` is an ``int`` to Python), infinities and NaN, and values out of bounds.
- :func:`cfg_level` maps a level name through a table the detector chooses (:data:`LEVELS`
  where ``off`` drops the verdict, :data:`SEVERITIES` where it may not);
  :func:`cfg_severity` is the network detectors' table, which also takes the Go original's
  ``warn``.
- :func:`cfg_strings` reads a list of non-empty strings; :func:`cfg_networks` a list of
  addresses and CIDRs. The address parser lives in :mod:`coi_watch.detectors._net` and is
  imported on first use, so the host-only detectors do not load the Public Suffix List.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from coi_watch.errors import ConfigError
from coi_watch.verdicts import Severity

if TYPE_CHECKING:
    from coi_watch.detectors._net import Network

__all__ = (
    "LEVELS",
    "SEVERITIES",
    "WARN",
    "DetectorConfigError",
    "as_level",
    "as_network",
    "cfg_bool",
    "cfg_int",
    "cfg_level",
    "cfg_networks",
    "cfg_number",
    "cfg_severity",
    "cfg_strings",
    "check_keys",
)

L = TypeVar("L", Severity, Severity | None)

SEVERITIES: Mapping[str, Severity] = MappingProxyType({s.value: s for s in Severity})
"""The four severity names: ``info``, ``warning``, ``high``, ``critical``."""
LEVELS: Mapping[str, Severity | None] = MappingProxyType({**SEVERITIES, "off": None})
"""The severity names and ``off`` (the verdict is dropped)."""
WARN: Mapping[str, Severity] = MappingProxyType({"warn": Severity.WARNING})
"""The Go original's spelling of ``warning``, for tables that accept it."""
_NET_SEVERITIES: Mapping[str, Severity] = MappingProxyType({**SEVERITIES, **WARN})


class DetectorConfigError(ConfigError, ValueError):
    """A detector config key is unknown or has a bad value (a ``ValueError`` too, for callers
    that expect one); the message starts with ``detectors.NAME.KEY``."""


def check_keys(detector: str, cfg: Mapping[str, Any], known: Iterable[str]) -> None:
    """Refuse keys not in ``known`` (``mode`` is the policy's and always allowed)."""
    allowed = set(known) | {"mode"}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise DetectorConfigError(
            f"detectors.{detector}: unknown keys {unknown}; known: {sorted(allowed - {'mode'})}"
        )


def cfg_number(detector: str, cfg: Mapping[str, Any], key: str, default: float, *,
               minimum: float = 0.0, strict: bool = True) -> float:
    """A finite number ``> minimum`` (``>= minimum`` when not ``strict``); booleans refused."""
    value = cfg.get(key, default)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (value > minimum if strict else value >= minimum):
        return float(value)
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
    raise DetectorConfigError(f"detectors.{detector}.{key}: a number {bound}, got {value!r}")


def cfg_int(detector: str, cfg: Mapping[str, Any], key: str, default: int, *,
            minimum: int = 1, maximum: int | None = None) -> int:
    """An integer ``>= minimum`` (and ``<= maximum`` when given); booleans refused."""
    value = cfg.get(key, default)
    if type(value) is int and value >= minimum and (maximum is None or value <= maximum):
        return value
    bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
    raise DetectorConfigError(f"detectors.{detector}.{key}: an integer {bound}, got {value!r}")


def cfg_bool(detector: str, cfg: Mapping[str, Any], key: str, default: bool) -> bool:
    """A boolean."""
    value = cfg.get(key, default)
    if isinstance(value, bool):
        return value
    raise DetectorConfigError(f"detectors.{detector}.{key}: true or false, got {value!r}")


def cfg_strings(detector: str, cfg: Mapping[str, Any], key: str,
                default: Iterable[str] = ()) -> list[str]:
    """A list of non-empty strings."""
    value = cfg.get(key, list(default))
    if isinstance(value, list | tuple) and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise DetectorConfigError(
        f"detectors.{detector}.{key}: a list of non-empty strings, got {value!r}"
    )


def as_level(detector: str, key: str, value: Any, levels: Mapping[str, L]) -> L:
    """``value`` looked up in ``levels`` (``key`` names it in the error)."""
    if isinstance(value, str) and value in levels:
        return levels[value]
    raise DetectorConfigError(
        f"detectors.{detector}.{key}: one of {sorted(levels)}, got {value!r}"
    )


def cfg_level(detector: str, cfg: Mapping[str, Any], key: str, default: str,
              levels: Mapping[str, L]) -> L:
    """The level named by ``key``, one of the names in ``levels``."""
    return as_level(detector, key, cfg.get(key, default), levels)


def cfg_severity(detector: str, cfg: Mapping[str, Any], key: str, default: str) -> Severity:
    """``info``, ``warning`` (or ``warn``), ``high`` or ``critical``."""
    return as_level(detector, key, cfg.get(key, default), _NET_SEVERITIES)


def as_network(detector: str, key: str, text: str) -> Network:
    """``text`` as a network (:func:`~coi_watch.detectors._net.parse_network`)."""
    from coi_watch.detectors._net import parse_network  # loads the PSL: only when needed

    try:
        return parse_network(text)
    except ValueError:
        raise DetectorConfigError(
            f"detectors.{detector}.{key}: {text!r} is not an IP address or CIDR"
        ) from None


def cfg_networks(detector: str, cfg: Mapping[str, Any], key: str,
                 default: Iterable[str] = ()) -> list[Network]:
    """A list of IPs/CIDRs."""
    return [as_network(detector, key, item) for item in cfg_strings(detector, cfg, key, default)]
