"""Shared test configuration.

Tests marked ``privileged`` need root and real kernel interfaces; tests marked ``incus``
need a running incusd with the ``coi-bb`` image (``scripts/testbed.sh`` prepares both).
Outside CI they are skipped with a reason when the machine cannot run them; in CI
(``CI=true``) they are never skipped: a missing prerequisite fails them instead, so a green
CI always means the real end-to-end tests ran.
"""

from __future__ import annotations

import os
import shutil

import pytest

# Shared fixtures: a fake incusd on a unix socket (sock_path, fake, client).
pytest_plugins = ["support.fake_incus"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
INCUS_SOCKET = os.environ.get("COI_INCUS_SOCKET", "/var/lib/incus/unix.socket")
TEST_IMAGE = os.environ.get("COI_TESTBED_IMAGE", "coi-bb")


def _missing(marker: str) -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if marker == "incus":
        if not os.path.exists(INCUS_SOCKET):
            return f"no incusd socket at {INCUS_SOCKET} (run scripts/testbed.sh)"
        if shutil.which("incus") is None:
            return "no incus client on PATH (run scripts/testbed.sh)"
    return None


@pytest.fixture(autouse=True)
def _real_prerequisites(request: pytest.FixtureRequest) -> None:
    for marker in ("privileged", "incus"):
        if request.node.get_closest_marker(marker) is None:
            continue
        reason = _missing(marker)
        if reason is None:
            continue
        if IN_CI:
            pytest.fail(f"{marker} test cannot run in CI: {reason}")
        pytest.skip(reason)
