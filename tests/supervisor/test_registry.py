"""Entry-point plugins: built-ins are registered and load; unknown names fail clearly."""

from __future__ import annotations

import pytest

from coi_watch import registry
from coi_watch.errors import RegistryError


def test_builtins_are_registered() -> None:
    assert "proc" in registry.available("coi_watch.sources")
    assert "reverse_shell" in registry.available("coi_watch.detectors")
    assert {"log", "alert", "pause", "kill"} <= set(registry.available("coi_watch.responders"))


def test_builtin_detector_loads_and_satisfies_protocol() -> None:
    from coi_watch.protocols import Detector

    cls = registry.load("coi_watch.detectors", "reverse_shell")
    assert isinstance(cls(), Detector)


def test_unknown_names_and_groups() -> None:
    with pytest.raises(RegistryError, match=r"no coi_watch\.detectors plugin named 'nope'"):
        registry.load("coi_watch.detectors", "nope")
    with pytest.raises(RegistryError, match="unknown plugin group"):
        registry.available("coi_watch.nothing")
