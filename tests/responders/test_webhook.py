"""Falco-compatible webhook alerts, posted to a server on loopback."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from coi_watch.responders.webhook import WebhookAlerter, falco_payload
from coi_watch.verdicts import Severity, Verdict


def _verdict(sev: Severity = Severity.CRITICAL) -> Verdict:
    return Verdict(ts_ns=1, wall_ns=1_700_000_000_123_456_789, container="c1",
                   detector="reverse_shell", title="Reverse shell", severity=sev,
                   evidence={"family": "nc-exec"}, mitre=("T1059.004",), dedup_key="k", pid=42)


def test_payload_has_falco_shape() -> None:
    p = falco_payload(_verdict(), hostname="h1")
    assert set(p) == {"hostname", "output", "output_fields", "priority", "rule", "source",
                      "tags", "time"}
    assert p["priority"] == "Critical" and p["rule"] == "Reverse shell"
    assert p["time"] == "2023-11-14T22:13:20.123456789Z"
    assert p["output_fields"]["container.name"] == "c1"
    assert p["output_fields"]["proc.pid"] == 42
    assert p["output_fields"]["evidence.family"] == "nc-exec"
    assert p["tags"] == ["T1059.004"]
    assert falco_payload(_verdict(Severity.HIGH))["priority"] == "Error"


async def test_posts_to_server_and_filters_by_severity() -> None:
    got: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        got.append(orjson.loads(await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/alerts", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        alerter = WebhookAlerter(str(server.make_url("/alerts")), min_severity=Severity.HIGH)
        await alerter(_verdict(Severity.CRITICAL))
        await alerter(_verdict(Severity.WARNING))  # below the threshold: not sent
        await alerter.close()
    assert len(got) == 1 and got[0]["priority"] == "Critical"
    assert alerter.sent == 1 and alerter.failed == 0


async def test_failure_is_retried_then_reported() -> None:
    calls = 0
    errors: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/alerts", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        alerter = WebhookAlerter(str(server.make_url("/alerts")), attempts=2,
                                 on_error=errors.append)
        await alerter(_verdict())
        await alerter.close()
    assert calls == 2 and alerter.failed == 1
    assert errors and "HTTP 500" in errors[0]
