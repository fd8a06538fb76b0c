"""Alerts as Falco-compatible JSON posted to a webhook.

Strategy: security teams already route Falco's JSON output (falcosidekick, SIEM HTTP
inputs), so a verdict is posted in that shape: ``output``, ``priority``, ``rule``, ``time``
(RFC 3339, UTC), ``output_fields``, ``source``, ``tags`` and ``hostname``. Severity maps onto
Falco's priorities (critical -> Critical, high -> Error, warning -> Warning,
info -> Informational). Posting never delays containment: the policy calls the alerter
after choosing the action, without waiting; a failed post is retried with backoff
(bounded) and then reported to the ``on_error`` hook (the supervisor audits it).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from coi_watch.verdicts import Severity, Verdict

__all__ = ("FALCO_PRIORITY", "WebhookAlerter", "falco_payload")

FALCO_PRIORITY = {
    Severity.CRITICAL: "Critical",
    Severity.HIGH: "Error",
    Severity.WARNING: "Warning",
    Severity.INFO: "Informational",
}


def falco_payload(v: Verdict, *, hostname: str | None = None) -> dict[str, Any]:
    """The Falco-shaped JSON object for ``v``."""
    t = v.wall_ns / 1e9
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{v.wall_ns % 10**9:09d}Z"
    fields: dict[str, Any] = {"container.name": v.container, "coi.detector": v.detector,
                              "coi.severity": v.severity.value, "coi.dedup_key": v.dedup_key}
    if v.pid:
        fields["proc.pid"] = v.pid
    fields.update({f"evidence.{k}": val for k, val in v.evidence.items()})
    return {
        "hostname": hostname or socket.gethostname(),
        "output": f"{stamp} {FALCO_PRIORITY[v.severity]}: {v.title} "
                  f"(container={v.container} detector={v.detector})",
        "output_fields": fields,
        "priority": FALCO_PRIORITY[v.severity],
        "rule": v.title,
        "source": "coi-watch",
        "tags": list(v.mitre),
        "time": stamp,
    }


class WebhookAlerter:
    """Posts verdicts at or above ``min_severity`` to ``url``."""

    def __init__(self, url: str, *, min_severity: Severity = Severity.WARNING,
                 attempts: int = 3, timeout_s: float = 5.0,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.url = url
        self.min_severity = min_severity
        self.attempts = attempts
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.on_error = on_error or (lambda _m: None)
        self.sent = 0
        self.failed = 0
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, v: Verdict) -> None:
        """Post ``v`` if it is severe enough; never raises."""
        if v.severity.rank < self.min_severity.rank:
            return
        body = orjson.dumps(falco_payload(v))
        delay = 0.2
        last = ""
        for _ in range(self.attempts):
            try:
                if self._session is None:
                    self._session = aiohttp.ClientSession(timeout=self.timeout)
                async with self._session.post(
                        self.url, data=body, headers={"Content-Type": "application/json"}) as r:
                    if r.status < 300:
                        self.sent += 1
                        return
                    last = f"HTTP {r.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(delay)
            delay *= 2
        self.failed += 1
        self.on_error(f"webhook {self.url} failed for {v.detector}: {last}")

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None
