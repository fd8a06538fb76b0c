"""Golden wire fixtures (``tests/fixtures/wire/``): hex dumps captured from a real kernel.

Each fixture is ``NAME.hex`` (hex, ``#`` comment lines allowed) beside the expected JSON;
each folder's ``capture.py`` made them and also holds helpers the tests reuse, loaded here
under a stable module name so every test file shares one copy.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ("WIRE", "load_module", "read_hex")

WIRE = Path(__file__).resolve().parents[1] / "fixtures" / "wire"


def read_hex(path: Path) -> bytes:
    """The bytes of a ``.hex`` fixture (comment lines skipped)."""
    lines = path.read_text().splitlines()
    return bytes.fromhex("".join(ln for ln in lines if not ln.startswith("#")))


def load_module(name: str, path: Path) -> ModuleType:
    """Import the fixture script at ``path`` once, as ``name``."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]
