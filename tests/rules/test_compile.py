"""Compiling a rule: metadata, coi attributes, log source to kinds, immutability, and a
clear located error for every kind of bad input."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from sigma.rule import SigmaRule

from coi_watch.errors import RuleError, RuleLocation
from coi_watch.events import DnsQuery, NetConnect, ProcExec
from coi_watch.rules.compile import compile_rule, mitre_ids
from coi_watch.rules.load import MAX_FILE_BYTES, LoadResult, load_rules, load_text

ID = "0b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


def doc(detection: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    out = {"title": "Test rule", "id": ID, "level": "high",
           "logsource": {"category": "process_creation", "product": "linux"},
           "detection": detection or {"sel": {"Image|endswith": "/nc"}, "condition": "sel"}}
    out.update(top)
    return {k: v for k, v in out.items() if v is not None}


def load(d: dict[str, Any]) -> tuple[str, LoadResult]:
    text = yaml.safe_dump(d, sort_keys=False)
    return text, load_text(text, path="rule.yml")


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def only_error(res: LoadResult) -> tuple[str, int]:
    assert len(res.errors) == 1, res.diagnostics
    assert not res.rules
    d = res.errors[0]
    assert d.source.path == "rule.yml"
    return d.code, d.source.line


def test_metadata() -> None:
    _, res = load(doc(name="nc_rule", tags=["attack.execution", "attack.t1059.004",
                                            "attack.t1071", "cve.2021-1"],
                      level="critical", description="d", status="test"))
    (r,) = res.rules
    assert (r.id, r.name, r.title, r.level) == (ID, "nc_rule", "Test rule", "critical")
    assert r.tags == ("attack.execution", "attack.t1059.004", "attack.t1071", "cve.2021-1")
    assert r.mitre == ("T1059.004", "T1071")
    assert r.kinds == {"proc.exec"}
    assert (r.action, r.mode, r.description, r.status) == ("", "enforce", "d", "test")
    assert r.source == RuleLocation("rule.yml", 1)
    assert r.key_fields == ("Image",)


def test_mitre_ids() -> None:
    assert mitre_ids(["attack.t1059", "attack.T1001", "attack.g0032", "attack.t1059"]) == (
        "T1059",)


@pytest.mark.parametrize(("attrs", "action", "mode"), [
    ({"coi.action": "kill"}, "kill", "enforce"),
    ({"coi.mode": "monitor"}, "", "monitor"),
    ({"coi": {"action": "pause", "mode": "monitor"}}, "pause", "monitor"),
])
def test_coi_attributes(attrs: dict[str, Any], action: str, mode: str) -> None:
    _, res = load(doc(**attrs))
    (r,) = res.rules
    assert (r.action, r.mode) == (action, mode)


@pytest.mark.parametrize("attrs", [
    {"coi.action": "nuke"}, {"coi.mode": "loud"}, {"coi.acton": "kill"}, {"coi": "kill"}])
def test_bad_coi_attributes(attrs: dict[str, Any]) -> None:
    text, res = load(doc(**attrs))
    code, line = only_error(res)
    assert code == "E001"
    assert line == line_of(text, "coi")


def test_compiled_rule_is_immutable() -> None:
    _, res = load(doc())
    (r,) = res.rules
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.title = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        r.predicates["proc.exec"] = r.predicates["proc.exec"]  # type: ignore[index]


def test_compile_rule_on_a_pysigma_rule() -> None:
    rule = SigmaRule.from_dict(doc())
    r = compile_rule(rule, source=RuleLocation("x.yml", 3))
    assert r.source == RuleLocation("x.yml", 3)
    assert r.match(ProcExec(ts_ns=1, wall_ns=1, container="c", pid=1, exe="/usr/bin/nc",
                            argv=("nc",)))
    assert not r.match(DnsQuery(ts_ns=1, wall_ns=1, container="c", family=4, proto="udp",
                                src="a", dst="b", qname="nc"))
    bad = SigmaRule.from_dict(doc(logsource={"product": "windows", "category": "x"}))
    with pytest.raises(RuleError) as exc:
        compile_rule(bad, source=RuleLocation("x.yml", 3))
    assert exc.value.code == "E004"
    assert exc.value.source is not None and exc.value.source.path == "x.yml"


def test_network_connection_splits_by_kind() -> None:
    _, res = load(doc(logsource={"category": "network_connection", "product": "linux"},
                      detection={"port": {"DestinationPort": 4444},
                                 "host": {"DestinationHostname|endswith": ".ngrok.io"},
                                 "condition": "port or host"}))
    (r,) = res.rules
    assert r.kinds == {"net.connect", "net.dns"}
    assert r.match(NetConnect(ts_ns=1, wall_ns=1, container="c", family=4, proto="tcp",
                              src="a", dst="1.2.3.4", dport=4444))
    assert r.match(DnsQuery(ts_ns=1, wall_ns=1, container="c", family=4, proto="udp",
                            src="a", dst="b", qname="x.ngrok.io"))
    only_host = load(doc(logsource={"category": "network_connection"},
                         detection={"h": {"DestinationHostname": "x"}, "condition": "h"}))[1]
    assert only_host.rules[0].kinds == {"net.dns"}


def test_fields_on_two_kinds_at_once_do_not_load() -> None:
    text, res = load(doc(logsource={"category": "network_connection"},
                         detection={"s": {"DestinationPort": 1, "DestinationHostname": "x"},
                                    "condition": "s"}))
    code, line = only_error(res)
    assert code == "E003"
    assert line in (line_of(text, "DestinationPort"), line_of(text, "DestinationHostname"))


def test_unobserved_field_the_rule_survives_is_a_warning() -> None:
    _, res = load(doc(logsource={"category": "file_event"},
                      detection={"sel": {"TargetFilename|startswith": "/etc/sudoers.d/"},
                                 "filter": {"Image": "/usr/bin/dpkg"},
                                 "condition": "sel and not filter"}))
    assert len(res.rules) == 1
    assert [d.code for d in res.diagnostics] == ["W103"]


# ---------------------------------------------------------------- bad input, located


def test_broken_yaml() -> None:
    res = load_text("title: x\ndetection: [unclosed\nlevel: high\n", path="rule.yml")
    code, line = only_error(res)
    assert code == "E001" and line == 3
    assert res.errors[0].source.col > 0


def test_half_written_file() -> None:
    text = yaml.safe_dump(doc(), sort_keys=False)
    for cut in (len(text) // 3, len(text) // 2, len(text) - 12):
        res = load_text(text[:cut], path="rule.yml")
        assert res.errors and not res.rules, cut
        assert all(d.source.path == "rule.yml" for d in res.errors)
        assert all(d.source.line >= 1 for d in res.errors)


@pytest.mark.parametrize(("key", "code"), [("detections", "E001"), ("levl", "E001"),
                                          ("logsorce", "E001")])
def test_misspelt_keys(key: str, code: str) -> None:
    d = doc()
    d[key] = d.pop(key.replace("detections", "detection").replace("levl", "level")
                   .replace("logsorce", "logsource"))
    text, res = load(d)
    got, line = only_error(res)
    assert got == code and line == line_of(text, key)
    assert "did you mean" in res.errors[0].message


def test_unknown_key_is_a_warning() -> None:
    text, res = load(doc(team="blue"))
    assert len(res.rules) == 1
    (d,) = res.diagnostics
    assert (d.code, d.source.line) == ("W104", line_of(text, "team"))


@pytest.mark.parametrize(("detection", "code", "needle"), [
    ({"sel": {"Image|endwith": "x"}, "condition": "sel"}, "E002", "Image|endwith"),
    ({"sel": {"ProcessId|hour": 3}, "condition": "sel"}, "E002", "ProcessId|hour"),
    ({"sel": {"Imag": "x"}, "condition": "sel"}, "E003", "Imag"),
    ({"sel": {"Hashes": "x"}, "condition": "sel"}, "E003", "Hashes"),
    ({"sel": {"CommandLine|re": "(?<=a)b"}, "condition": "sel"}, "E005", "CommandLine|re"),
    ({"sel": {"Image": "x"}, "condition": "sel and filter"}, "E006", "condition"),
    ({"sel": {"Image": "x"}, "condition": "sel and"}, "E001", "condition"),
    ({"sel": [], "condition": "sel"}, "E007", "sel"),
    ({"sel": {"Image": []}, "condition": "sel"}, "E007", "Image"),
    ({"sel": {"Image": "x"}}, "E001", "detection"),
])
def test_located_errors(detection: dict[str, Any], code: str, needle: str) -> None:
    text, res = load(doc(detection))
    got, line = only_error(res)
    assert got == code, res.errors
    assert line == line_of(text, needle), (res.errors, text)


def test_unsupported_logsource_is_located_at_logsource() -> None:
    text, res = load(doc(logsource={"product": "linux", "service": "sshd"},
                         detection={"keywords": ["Failed password"], "condition": "keywords"}))
    code, line = only_error(res)
    assert (code, line) == ("E004", line_of(text, "logsource"))
    assert "sshd" in res.errors[0].message


def test_enormous_list_is_refused_quickly() -> None:
    head = yaml.safe_dump(doc({"sel": {"Image": "PLACE"}, "condition": "sel"}), sort_keys=False)
    huge = "".join(f"\n    - /x{i}" for i in range(100_000))
    text = head.replace(" PLACE", huge)
    start = time.perf_counter()
    res = load_text(text, path="rule.yml")
    assert time.perf_counter() - start < 5
    code, line = only_error(res)
    assert (code, line) == ("E005", line_of(text, "Image"))


def test_oversized_text_is_refused() -> None:
    res = load_text("#" * (MAX_FILE_BYTES + 1), path="rule.yml")
    assert only_error(res) == ("E010", 0)


def test_large_list_within_the_limit_loads_and_matches() -> None:
    names = [f"/opt/tool{i}" for i in range(5000)]
    _, res = load(doc({"sel": {"Image": names}, "condition": "sel"}))
    (r,) = res.rules
    assert r.match(ProcExec(ts_ns=1, wall_ns=1, container="c", pid=1, exe="/opt/tool4999",
                            argv=("t",)))


def test_duplicate_yaml_key() -> None:
    text = yaml.safe_dump(doc(), sort_keys=False) + "level: low\n"
    res = load_text(text, path="rule.yml")
    code, line = only_error(res)
    assert (code, line) == ("E001", len(text.splitlines()))


def test_missing_file_and_binary_file(tmp_path: Path) -> None:
    binary = tmp_path / "bin.yml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    res = load_rules([tmp_path / "missing.yml", binary], include_packs=False)
    assert sorted(d.code for d in res.errors) == ["E010", "E010"]
    assert {d.source.path for d in res.errors} == {str(tmp_path / "missing.yml"), str(binary)}


def test_one_bad_document_does_not_hide_the_others() -> None:
    good = yaml.safe_dump(doc(), sort_keys=False)
    bad = yaml.safe_dump(doc({"sel": {"Nope": 1}, "condition": "sel"},
                             id="1b8e5f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"), sort_keys=False)
    res = load_text(bad + "---\n" + good, path="rule.yml")
    assert len(res.rules) == 1
    assert [d.code for d in res.errors] == ["E003"]


def test_sigma_collection_actions() -> None:
    text = """action: global
title: From global
logsource: {category: process_creation, product: linux}
level: high
---
id: 5d7b3f6e-0000-4000-8000-000000000001
detection: {sel: {Image|endswith: /nc}, condition: sel}
---
action: repeat
id: 5d7b3f6e-0000-4000-8000-000000000002
detection: {sel: {Image|endswith: /socat}, condition: sel}
"""
    res = load_text(text)
    assert not res.diagnostics
    assert [r.title for r in res.rules] == ["From global", "From global"]
    assert [r.level for r in res.rules] == ["high", "high"]
