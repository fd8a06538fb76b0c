"""The tamper detector: every Tamper event becomes a verdict with its evidence."""

from __future__ import annotations

import time

import orjson
import pytest

from coi_watch.detectors.tamper import Tampering
from coi_watch.errors import ConfigError
from coi_watch.events import Event, FileAccess, Tamper
from coi_watch.protocols import Detector
from coi_watch.verdicts import Severity, Verdict


def tamper(source: str = "nflog", what: str = "nft_rules_changed", detail: str = "",
           container: str = "coi-1") -> Tamper:
    return Tamper(ts_ns=5, wall_ns=6, container=container, source=source, what=what,
                  detail=detail)


def feed(det: Tampering, ev: Event) -> list[Verdict]:
    return list(det.feed(ev, ev.ts_ns))


def test_is_a_detector() -> None:
    det = Tampering()
    assert isinstance(det, Detector)
    assert det.name == "tamper" and det.consumes == frozenset({"tamper"})
    assert feed(det, FileAccess(ts_ns=1, wall_ns=1, container="c", pid=1, op="open")) == []


def test_tamper_is_high_with_evidence() -> None:
    [v] = feed(Tampering(), tamper(detail="chain coi-out flushed"))
    assert v.severity is Severity.HIGH
    assert v.evidence == {"source": "nflog", "what": "nft_rules_changed",
                          "detail": "chain coi-out flushed"}
    assert v.dedup_key == "tamper:coi-1:nflog:nft_rules_changed"
    assert (v.ts_ns, v.wall_ns, v.container, v.event_kind) == (5, 6, "coi-1", "tamper")
    assert v.detector == "tamper" and v.mitre == ("T1562.001",)
    assert "nflog" in v.title and "nft_rules_changed" in v.title
    orjson.dumps(v)


def test_dedup_key_ignores_detail_and_separates_losses() -> None:
    det = Tampering()
    keys = {feed(det, ev)[0].dedup_key for ev in (
        tamper(detail="a"), tamper(detail="b"), tamper(what="mark_lost"),
        tamper(source="conntrack"), tamper(container="coi-2"))}
    assert keys == {"tamper:coi-1:nflog:nft_rules_changed", "tamper:coi-1:nflog:mark_lost",
                    "tamper:coi-1:conntrack:nft_rules_changed",
                    "tamper:coi-2:nflog:nft_rules_changed"}


def test_severity_and_overrides() -> None:
    det = Tampering({"severity": "critical",
                     "overrides": {"conntrack": "warning", "conntrack/netns_gone": "off",
                                   "nflog/nft_rules_changed": "info"}})
    assert feed(det, tamper(source="fanotify", what="x"))[0].severity is Severity.CRITICAL
    assert feed(det, tamper(source="conntrack", what="x"))[0].severity is Severity.WARNING
    assert feed(det, tamper(source="conntrack", what="netns_gone")) == []
    assert feed(det, tamper())[0].severity is Severity.INFO
    assert feed(Tampering({"severity": "off"}), tamper()) == []
    assert feed(Tampering({"mode": "monitor"}), tamper())[0].severity is Severity.HIGH


@pytest.mark.parametrize(("config", "key"), [
    ({"level": "high"}, "level"),
    ({"severity": "HIGH"}, "severity"),
    ({"severity": 2}, "severity"),
    ({"overrides": ["nflog"]}, "overrides"),
    ({"overrides": {"nflog": "loud"}}, "overrides.nflog"),
    ({"overrides": {"": "high"}}, "overrides"),
])
def test_config_errors_name_the_key(config: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        Tampering(config)


def test_hostile_fields_are_clipped_and_fast() -> None:
    big = "\u200b" * (1 << 20)
    start = time.process_time()
    [v] = feed(Tampering(), tamper(source=big, what=big, detail=big))
    assert time.process_time() - start < 0.5
    assert len(orjson.dumps(v)) < 16_000
    assert v.evidence["detail"].endswith("chars)")
