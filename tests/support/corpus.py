"""Where the SigmaHQ Linux rules (the compatibility corpus) are.

The reference material lives in ``shared/`` beside the repository (CI lays out a fresh
clone with a copy of ``shared/`` next to it); ``COI_SIGMAHQ`` overrides. Tests that need the
corpus call :func:`sigmahq_linux`, which skips outside CI when it is absent and fails in CI,
where it must be there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

__all__ = ("sigmahq_linux",)

_REPO = Path(__file__).resolve().parents[2]
_CANDIDATES = (
    _REPO.parent / "shared" / "sigmahq-linux" / "rules" / "linux",
    Path("/work/shared/sigmahq-linux/rules/linux"),
)


def sigmahq_linux() -> Path:
    """The corpus folder (skip off-CI, fail in CI, when it is missing)."""
    override = os.environ.get("COI_SIGMAHQ")
    for path in ((Path(override),) if override else _CANDIDATES):
        if path.is_dir():
            return path
    reason = "SigmaHQ corpus not found beside the repository (shared/sigmahq-linux)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)
