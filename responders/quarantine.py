"""Network quarantine: drop a container's egress, except where it is permitted to go.

Strategy: a graduated alternative to a pause (issue 5): the agent keeps running and can
still reach the destinations the configuration permits (the package mirror, the company
API, DNS to its resolvers), but nothing else leaves it. The rules live in coi-watch's own
nftables table, on the container's host-side veth (:mod:`coi_watch.nft`), out of the
container's reach; the supervisor's NFLOG source runs that table, and when it is not
running this responder starts a quarantine-only table of its own (removed at exit).

Config (``[response]``): ``quarantine_permitted`` (addresses or CIDRs, default none) and
``quarantine_resolvers`` (resolver addresses DNS may still go to, default none). A container
with no NIC has no egress to cut: that is ``skipped``. ``coi-watch resume`` lifts it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from coi_watch import nft
from coi_watch.containers import info_from_state
from coi_watch.errors import CoiWatchError
from coi_watch.incus import DEFAULT_SOCKET, IncusClient
from coi_watch.verdicts import Action, ActionRecord, Verdict

__all__ = ("QuarantineResponder",)


class QuarantineResponder:
    """Quarantines ``verdict.container``; :meth:`lift` ends it."""

    name: ClassVar[str] = "quarantine"
    action: ClassVar[Action] = Action.QUARANTINE

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        client: IncusClient | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        cfg = dict(config or {})
        self.permitted = [str(x) for x in cfg.get("quarantine_permitted", [])]
        self.resolvers = [str(x) for x in cfg.get("quarantine_resolvers", [])]
        self._socket = str(cfg.get("socket", DEFAULT_SOCKET))
        self._client = client
        self._clock = clock
        self._own: nft.NftManager | None = None

    async def _manager(self) -> nft.NftManager:
        running = nft.current()
        if running is not None:
            return running
        if self._own is None:
            self._own = nft.NftManager(None)
            await self._own.start()
        return self._own

    def quarantined(self, name: str) -> bool:
        """True while ``name`` is quarantined (the table's state, not a flag here)."""
        mgr = nft.current() or self._own
        return mgr is not None and mgr.quarantined(name) is not None

    async def respond(self, verdict: Verdict) -> ActionRecord:
        """Quarantine the container; failures are reported, never raised."""
        start = self._clock()
        status, error, detail = "done", "", ""
        try:
            client = self._client or IncusClient.connect(self._socket)
            self._client = client
            info = info_from_state(verdict.container, await client.state(verdict.container))
            if not info.host_veths:
                status, detail = "skipped", "no network interface: nothing to quarantine"
            else:
                mgr = await self._manager()
                await mgr.quarantine(info, self.permitted, self.resolvers)
                allowed = ", ".join(self.permitted) or "nothing"
                detail = (f"egress on {', '.join(info.host_veths)} dropped except to {allowed}"
                          f" in {(self._clock() - start) / 1e6:.1f} ms")
        except (CoiWatchError, ValueError) as exc:
            status, error = "failed", str(exc)
        end = self._clock()
        return ActionRecord(
            ts_ns=end, wall_ns=time.time_ns(), container=verdict.container,
            action=Action.QUARANTINE, status=status, detector=verdict.detector,
            dedup_key=verdict.dedup_key, detail=detail or "quarantine failed", error=error,
            latency_ms=round((end - verdict.ts_ns) / 1e6, 3) if 0 < verdict.ts_ns <= end else 0,
        )

    async def lift(self, name: str) -> bool:
        """End ``name``'s quarantine; True if there was one."""
        mgr = nft.current() or self._own
        if mgr is None or mgr.quarantined(name) is None:
            return False
        await mgr.lift_quarantine(name)
        return True

    async def aclose(self) -> None:
        """Remove a quarantine-only table this responder started."""
        if self._own is not None:
            await self._own.close()
            self._own = None


