"""Tuning: Sigma filter documents applied as exceptions (W102 for filters that apply to
nothing) and placeholder files read into the lists ``|expand`` takes its values from."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from sigma.collection import SigmaCollection
from sigma.rule import SigmaRule

from coi_watch.errors import ConfigError, RuleLocation
from coi_watch.rules.lint import Diagnostic
from coi_watch.rules.tuning import apply_filters, load_placeholders

RULES = """
title: Curl in a container
id: 5638f7c0-ac70-491d-8465-2a65075e0d86
name: curl_exec
logsource: {category: process_creation, product: linux}
detection:
  sel:
    Image|endswith: /curl
  condition: sel
---
title: Wget in a container
id: 6638f7c0-ac70-491d-8465-2a65075e0d86
name: wget_exec
logsource: {category: process_creation, product: linux}
detection:
  sel:
    Image|endswith: /wget
  condition: sel
---
title: Outbound to a rare port
id: 7638f7c0-ac70-491d-8465-2a65075e0d86
name: rare_port
logsource: {category: network_connection, product: linux}
detection:
  sel:
    DestinationPort: 4444
  condition: sel
---
title: Many curls
id: 8638f7c0-ac70-491d-8465-2a65075e0d86
name: many_curls
correlation:
  type: event_count
  rules: [curl_exec]
  timespan: 1m
  condition: {gte: 3}
"""

FILTER = """
title: Builds may fetch
logsource: {category: process_creation, product: linux}
filter:
  rules: {rules}
  build_dir:
    CurrentDirectory|startswith: /opt/build
  condition: not build_dir
"""


def load(extra: str = "") -> SigmaCollection:
    return SigmaCollection.from_yaml(RULES + ("---\n" + extra if extra else ""),
                                     collect_filters=True)


def rule(coll: SigmaCollection, name: str) -> SigmaRule:
    r = coll[name]
    assert isinstance(r, SigmaRule)
    return r


def loc(_: object) -> RuleLocation:
    return RuleLocation("tuning/filters.yml", 4)


def diags(coll: SigmaCollection) -> tuple[Diagnostic, ...]:
    rules, found = apply_filters(coll.rules, coll.filters, source_of=loc)
    assert rules == coll.rules  # nothing broke: every rule is still there, in order
    return found


# --------------------------------------------------------------------------- filters


def test_filter_becomes_an_exception_of_the_named_rule() -> None:
    coll = load(FILTER.replace("{rules}", "[curl_exec]"))
    assert diags(coll) == ()
    curl = rule(coll, "curl_exec")
    # Deterministic names (pySigma's own apply_on_rule draws a random prefix).
    assert curl.detection.condition == ["(sel) and (not _filter0_build_dir)"]
    assert set(curl.detection.detections) == {"sel", "_filter0_build_dir"}
    assert rule(coll, "wget_exec").detection.condition == ["sel"]


def test_filter_patterns_and_them_are_renamed() -> None:
    flt = FILTER.replace("{rules}", "[curl_exec]").replace(
        "  condition: not build_dir", "  build_ci:\n    CurrentDirectory|startswith: /srv/ci\n"
        "  condition: not 1 of build_* and not 1 of them")
    coll = load(flt)
    assert diags(coll) == ()
    assert rule(coll, "curl_exec").detection.condition == [
        "(sel) and (not 1 of _filter0_build_* and not 1 of _filter0_*)"]


@pytest.mark.parametrize("condition,message", [
    ("not nosuchselection", "'nosuchselection' not defined"),
    ("not (build_dir", "Unbalanced parentheses"),
    ("not 1 of x*", "doesn't match any detection"),
])
def test_a_broken_filter_is_e011_and_touches_no_rule(condition: str, message: str) -> None:
    coll = load(FILTER.replace("{rules}", "[curl_exec, wget_exec]").replace(
        "condition: not build_dir", f"condition: {condition}"))
    rules, found = apply_filters(coll.rules, coll.filters, source_of=loc)
    (d,) = found
    assert (d.code, d.severity) == ("E011", "error") and message in d.message
    assert rules == coll.rules
    assert rule(coll, "curl_exec").detection.condition == ["sel"]


def test_filter_by_uuid_and_name_list() -> None:
    coll = load(FILTER.replace("{rules}", "[5638F7C0-AC70-491D-8465-2A65075E0D86, wget_exec]"))
    assert diags(coll) == ()
    assert rule(coll, "curl_exec").detection.condition != ["sel"]
    assert rule(coll, "wget_exec").detection.condition != ["sel"]


def test_unknown_rule_is_a_w102_warning() -> None:
    coll = load(FILTER.replace("{rules}", "[curl_exec, no_such_rule]"))
    (d,) = diags(coll)
    assert (d.code, d.severity) == ("W102", "warning")
    assert "no_such_rule" in d.message
    assert d.source == RuleLocation("tuning/filters.yml", 4)


def test_filter_naming_only_unknown_rules_applies_to_nothing() -> None:
    coll = load(FILTER.replace("{rules}", "[ghost]"))
    found = diags(coll)
    assert [d.code for d in found] == ["W102", "W102"]
    assert "applies to no rule" in found[1].message


def test_logsource_not_covered_is_reported_and_not_applied() -> None:
    coll = load(FILTER.replace("{rules}", "[rare_port]"))
    found = diags(coll)
    assert "does not apply to rule 'rare_port'" in found[0].message
    assert rule(coll, "rare_port").detection.condition == ["sel"]


def test_correlations_are_not_filtered() -> None:
    coll = load(FILTER.replace("{rules}", "[many_curls]"))
    found = diags(coll)
    assert "not correlations" in found[0].message


def test_rules_any_applies_to_every_rule_of_the_logsource() -> None:
    coll = load(FILTER.replace("{rules}", "any"))
    assert diags(coll) == ()
    assert rule(coll, "curl_exec").detection.condition != ["sel"]
    assert rule(coll, "wget_exec").detection.condition != ["sel"]
    assert rule(coll, "rare_port").detection.condition == ["sel"]


def test_default_location_comes_from_pysigma() -> None:
    coll = load(FILTER.replace("{rules}", "[ghost]"))
    (d, _) = apply_filters(coll.rules, coll.filters)[1]
    assert d.source.path == "<unknown>"


# --------------------------------------------------------------------------- placeholder file


def test_load_placeholders(tmp_path: Path) -> None:
    p = tmp_path / "placeholders.yml"
    p.write_text(
        "approved_hosts:\n  - pypi.org\n  - '*.github.com'\n"
        "admin_uid: 0\n"
        "empty:\n"
        "ports: [22, 443]\n"
    )
    assert load_placeholders(p) == {
        "approved_hosts": ["pypi.org", "*.github.com"],
        "admin_uid": ["0"],
        "empty": [],
        "ports": ["22", "443"],
    }


def test_empty_placeholder_file(tmp_path: Path) -> None:
    p = tmp_path / "p.yml"
    p.write_text("")
    assert load_placeholders(p) == {}


@pytest.mark.parametrize("text,match", [
    ("- a\n- b\n", "mapping"),
    ("x: [a, {b: c}]\n", "strings or numbers"),
    ("x: [true]\n", "strings or numbers"),
    ("'%x%': [a]\n", "bad placeholder name"),
    ("x: [a\n", "not YAML"),
])
def test_bad_placeholder_files(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "p.yml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_placeholders(p)


def test_missing_placeholder_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_placeholders(tmp_path / "nope.yml")


# --------------------------------------------------------------------------- end to end


def test_filters_and_placeholders_through_the_loader_and_engine(tmp_path: Path) -> None:
    from coi_watch.events import ProcExec
    from coi_watch.rules.engine import RuleEngine, RuleSet
    from coi_watch.rules.load import load_rules

    rules = tmp_path / "fetch.yml"
    rules.write_text(textwrap.dedent("""
        title: curl to an unapproved host
        id: 44034512-3c71-424b-aba9-6de57b3091a4
        name: curl_unapproved
        logsource: {category: process_creation, product: linux}
        detection:
            selection:
                Image|endswith: /curl
            approved:
                CommandLine|expand|contains: '%approved_hosts%'
            condition: selection and not approved
        level: medium
        ---
        title: Builds may fetch
        logsource: {category: process_creation, product: linux}
        filter:
            rules: [curl_unapproved, retired_rule]
            build:
                CurrentDirectory|startswith: /opt/build
            condition: not build
    """))
    ph = tmp_path / "placeholders.yml"
    ph.write_text("approved_hosts: [pypi.org, '*.github.com']\n")
    result = load_rules([rules], include_packs=False, placeholders=load_placeholders(ph))
    assert result.errors == ()
    (w,) = [d for d in result.diagnostics if d.code == "W102"]
    assert "retired_rule" in w.message and w.source.path == str(rules)
    engine = RuleEngine(ruleset=RuleSet.from_load(result))

    def curl(url: str, cwd: str = "/work") -> list[str]:
        ev = ProcExec(ts_ns=1, wall_ns=1, container="agent-1", pid=5, exe="/usr/bin/curl",
                      argv=("curl", url), cwd=cwd)
        return [v.detector for v in engine.feed(ev, 1)]

    hit = ["sigma:44034512-3c71-424b-aba9-6de57b3091a4"]
    assert curl("https://evil.example/x") == hit
    assert curl("https://pypi.org/simple/") == []
    assert curl("https://api.github.com/repos") == []
    assert curl("https://evil.example/x", cwd="/opt/build/app") == []


def test_a_placeholder_without_a_list_rejects_the_rule(tmp_path: Path) -> None:
    from coi_watch.rules.load import load_rules

    rules = tmp_path / "r.yml"
    rules.write_text(textwrap.dedent("""
        title: t
        id: 44034512-3c71-424b-aba9-6de57b3091a5
        logsource: {category: process_creation, product: linux}
        detection:
            sel:
                CommandLine|expand|contains: '%approved_hosts%'
            condition: sel
    """))
    result = load_rules([rules], include_packs=False, placeholders={})
    assert [d.code for d in result.errors] == ["E005"]
    assert result.rules == ()
