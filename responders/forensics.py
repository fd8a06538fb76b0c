"""Forensic snapshot before a kill: keep the frozen container's files for investigation.

Strategy: on a kill, the policy freezes first, then (when ``response.snapshot_before_kill``
is on, the Go original's ``forensics_on_kill``) asks this responder for an Incus snapshot of
the frozen container (``POST /1.0/instances/NAME/snapshots``; 0.16 s for the test image on
the ``dir`` pool), and only then force-stops it. Processes stay frozen while the snapshot is
taken, so nothing runs between detection and the copy. Snapshots are named
``coi-forensics-<UTC time>`` and at most ``snapshot_retention`` (default 3) are kept per
container: older coi-forensics snapshots are deleted, never anybody else's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from coi_watch.errors import IncusError
from coi_watch.incus import DEFAULT_SOCKET, IncusClient
from coi_watch.verdicts import Action, ActionRecord, Verdict

__all__ = ("PREFIX", "SnapshotResponder")

PREFIX = "coi-forensics-"


class SnapshotResponder:
    """Takes a forensic snapshot; prunes old ones beyond the retention cap."""

    name: ClassVar[str] = "snapshot"
    action: ClassVar[Action] = Action.SNAPSHOT

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        client: IncusClient | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        cfg = dict(config or {})
        self.retention = int(cfg.get("snapshot_retention", 3))
        if self.retention < 1:
            raise ValueError("snapshot_retention must be at least 1")
        self._socket = str(cfg.get("socket", DEFAULT_SOCKET))
        self._client = client
        self._clock = clock

    async def respond(self, verdict: Verdict) -> ActionRecord:
        """Snapshot ``verdict.container``; a failure is reported, never raised."""
        start = self._clock()
        # UTC time to the millisecond: names sort in the order they were taken.
        wall_ms = time.time_ns() // 1_000_000
        snap = PREFIX + time.strftime("%Y%m%dT%H%M%S", time.gmtime(wall_ms / 1000)) + (
            f".{wall_ms % 1000:03d}Z")
        status, error, detail = "done", "", ""
        try:
            client = self._client or IncusClient.connect(self._socket)
            self._client = client
            await client.snapshot(verdict.container, snap)
            pruned = await self._prune(client, verdict.container)
            detail = f"snapshot {snap} in {(self._clock() - start) / 1e6:.1f} ms" + (
                f"; pruned {', '.join(pruned)}" if pruned else "")
        except IncusError as exc:
            status, error = "failed", str(exc)
        end = self._clock()
        return ActionRecord(
            ts_ns=end, wall_ns=time.time_ns(), container=verdict.container,
            action=Action.SNAPSHOT, status=status, detector=verdict.detector,
            dedup_key=verdict.dedup_key, detail=detail or "snapshot failed", error=error,
            latency_ms=round((end - verdict.ts_ns) / 1e6, 3) if 0 < verdict.ts_ns <= end else 0,
        )

    async def _prune(self, client: IncusClient, name: str) -> list[str]:
        ours = sorted(s for s in await client.list_snapshots(name) if s.startswith(PREFIX))
        old = ours[: max(0, len(ours) - self.retention)]
        for snap in old:
            await client.delete_snapshot(name, snap)
        return old
