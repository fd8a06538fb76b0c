"""Rule regression tests (``coi-watch rules test``): the test-file format, line-by-line
comparison both ways, discovery, and errors that fail one test without stopping the rest.

Most tests drive :func:`run_tests` with a stand-in compiler (a predicate per rule id), so
they test the runner alone; ``test_shipped_examples_pass`` runs the example tests under
``tests/rules/data/`` through the real loader and engine.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from coi_watch.events import Event, ProcExec
from coi_watch.rules.testing import Compiled, TestReport, run_tests
from coi_watch.verdicts import Severity, Verdict

DATA = Path(__file__).parent / "data"
CURL = "5638f7c0-ac70-491d-8465-2a65075e0d86"
NC = "6638f7c0-ac70-491d-8465-2a65075e0d86"


class StubEngine:
    """Fires ``sigma:<id>`` for each rule whose predicate holds; records ``now_ns``."""

    def __init__(self, rules: Mapping[str, Callable[[Event], bool]]) -> None:
        self.rules = rules
        self.fed: list[tuple[Event, int]] = []

    def feed(self, ev: Event, now_ns: int) -> Iterable[Verdict]:
        self.fed.append((ev, now_ns))
        return [
            Verdict(ts_ns=ev.ts_ns, wall_ns=ev.wall_ns, container=ev.container,
                    detector=f"sigma:{rid}", title=rid, severity=Severity.HIGH)
            for rid, pred in self.rules.items() if pred(ev)
        ]


def exe_is(name: str) -> Callable[[Event], bool]:
    return lambda ev: isinstance(ev, ProcExec) and ev.exe.endswith("/" + name)


class StubCompiler:
    def __init__(self, errors: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[list[Path], bool, Any]] = []
        self.engines: list[StubEngine] = []
        self.errors = errors

    def __call__(self, paths: Sequence[Path], include_packs: bool,
                 placeholders: Mapping[str, Sequence[str]] | None) -> Compiled:
        self.calls.append((list(paths), include_packs, placeholders))
        engine = StubEngine({CURL: exe_is("curl"), NC: exe_is("nc")})
        self.engines.append(engine)
        names = {CURL: CURL, "curl_exec": CURL, NC: NC, "nc_exec": NC}
        return Compiled(engine, names, self.errors)


def exec_line(t: int, exe: str, **extra: Any) -> str:
    ev = {"kind": "proc.exec", "ts_ns": t, "wall_ns": t, "container": "agent-1", "pid": 10,
          "exe": exe, **extra}
    return orjson.dumps(ev).decode()


EVENTS = "\n".join([
    exec_line(1, "/usr/bin/ls"),
    exec_line(2, "/usr/bin/curl"),
    "",
    exec_line(4, "/bin/nc", now_ns=4000),
]) + "\n"


def write(tmp: Path, name: str, body: str, events: str = EVENTS) -> Path:
    (tmp / "events.jsonl").write_text(events)
    (tmp / "rules").mkdir(exist_ok=True)
    (tmp / "rules" / "curl.yml").write_text("title: x\n")
    p = tmp / name
    p.write_text(textwrap.dedent(body))
    return p


GOOD = """
    name: curl and nc
    rules: [rules/curl.yml]
    events: events.jsonl
    expect:
      - {line: 2, rules: [curl_exec]}
      - line: 4
        rules: [6638f7c0-ac70-491d-8465-2a65075e0d86]
"""


def test_passing_test(tmp_path: Path) -> None:
    compiler = StubCompiler()
    report = run_tests([write(tmp_path, "a.test.yml", GOOD)], compiler=compiler)
    assert report.ok
    (r,) = report.results
    assert (r.name, r.status, r.events, r.verdicts) == ("curl and nc", "pass", 3, 2)
    assert "PASS  curl and nc  (3 events, 2 verdicts)" in report.render()
    assert report.render().endswith("1 passed, 0 failed, 0 errors")
    # Rule paths resolve relative to the test file; packs only when no rule file is named.
    ((paths, packs, placeholders),) = compiler.calls
    assert paths == [tmp_path / "rules" / "curl.yml"] and packs is False
    assert placeholders is None


def test_now_ns_per_line_defaults_to_the_event_time(tmp_path: Path) -> None:
    compiler = StubCompiler()
    run_tests([write(tmp_path, "a.test.yml", GOOD)], compiler=compiler)
    assert [now for _, now in compiler.engines[0].fed] == [1, 2, 4000]


def test_missing_and_unexpected_matches_fail_with_a_diff(tmp_path: Path) -> None:
    body = """
        rules: [rules/curl.yml]
        events: events.jsonl
        expect:
          - {line: 1, rules: [curl_exec]}
          - {line: 2, rules: [curl_exec]}
    """
    report = run_tests([write(tmp_path, "b.test.yml", body)], compiler=StubCompiler())
    assert not report.ok
    (r,) = report.results
    assert r.status == "fail" and r.name == "b"
    assert r.diff == (f"- line 1: curl_exec ({CURL})", f"+ line 4: nc_exec ({NC})")
    text = report.render()
    assert "FAIL  b" in text and f"+ line 4: nc_exec ({NC})" in text
    assert text.endswith("0 passed, 1 failed, 0 errors")


def test_expect_as_a_map_and_empty_means_nothing_matches(tmp_path: Path) -> None:
    body = """
        rules: [rules/curl.yml]
        events: events.jsonl
        expect: {2: curl_exec, 4: [nc_exec]}
    """
    assert run_tests([write(tmp_path, "c.test.yml", body)], compiler=StubCompiler()).ok
    quiet = exec_line(1, "/usr/bin/ls") + "\n"
    body = "rules: [rules/curl.yml]\nevents: events.jsonl\nexpect: []\n"
    assert run_tests([write(tmp_path, "d.test.yml", body, quiet)], compiler=StubCompiler()).ok


def test_rule_ids_restrict_what_is_compared(tmp_path: Path) -> None:
    body = """
        rules: [rules/curl.yml, curl_exec]
        events: events.jsonl
        expect: [{line: 2, rules: [curl_exec]}]
    """
    assert run_tests([write(tmp_path, "e.test.yml", body)], compiler=StubCompiler()).ok


def test_only_rule_ids_loads_the_packs(tmp_path: Path) -> None:
    compiler = StubCompiler()
    body = "rules: [nc_exec]\nevents: events.jsonl\nexpect: {4: [nc_exec]}\n"
    assert run_tests([write(tmp_path, "f.test.yml", body)], compiler=compiler).ok
    assert compiler.calls[0][:2] == ([], True)


def test_placeholders_file_is_loaded(tmp_path: Path) -> None:
    compiler = StubCompiler()
    (tmp_path / "ph.yml").write_text("hosts: [a, b]\n")
    body = GOOD + "    placeholders: ph.yml\n"
    run_tests([write(tmp_path, "g.test.yml", body)], compiler=compiler)
    assert compiler.calls[0][2] == {"hosts": ["a", "b"]}


def test_directories_are_searched_recursively_in_order(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "z.test.yml", GOOD)
    write(tmp_path, "a.test.yml", GOOD)
    write(tmp_path, "notes.yml", "not a test\n")
    report = run_tests([tmp_path], compiler=StubCompiler())
    assert [Path(r.path).name for r in report.results] == ["a.test.yml", "z.test.yml"]
    assert report.ok


def test_finding_no_tests_is_not_ok(tmp_path: Path) -> None:
    report = run_tests([tmp_path], compiler=StubCompiler())
    assert not report.ok
    assert "no rule tests (*.test.yml) found in: " + str(tmp_path) in report.render()


@pytest.mark.parametrize("body,events,message", [
    ("events: events.jsonl\n", EVENTS, "missing required key 'expect'"),
    ("events: e.jsonl\nexpect: []\n", EVENTS, "cannot read events"),
    ("events: events.jsonl\nexpect: []\nrule: [x]\n", EVENTS, "unknown keys ['rule']"),
    ("events: events.jsonl\nexpect: {2: [ghost]}\n", EVENTS, "names unknown rule 'ghost'"),
    ("events: events.jsonl\nexpect: {3: []}\n", EVENTS, "lines without an event: [3]"),
    ("events: events.jsonl\nexpect: [{rules: [x]}]\n", EVENTS, "needs 'line'"),
    ("rules: [rules/missing.yml]\nevents: events.jsonl\nexpect: []\n", EVENTS, "not found"),
    ("events: events.jsonl\nexpect: []\n", "{not json\n", "events.jsonl:1: not JSON"),
    ("events: events.jsonl\nexpect: []\n", '{"kind": "nope"}\n', "unknown event kind"),
    ("events: events.jsonl\nexpect: []\n",
     exec_line(1, "/x", now_ns="soon") + "\n", "now_ns must be an integer"),
    ("- just a list\n", EVENTS, "must be a YAML mapping"),
])
def test_broken_tests_are_errors(tmp_path: Path, body: str, events: str, message: str) -> None:
    report = run_tests([write(tmp_path, "x.test.yml", body, events)], compiler=StubCompiler())
    (r,) = report.results
    assert r.status == "error", r
    assert message in r.error
    assert not report.ok
    assert "ERROR x" in report.render()


def test_rules_that_do_not_load_are_an_error_and_other_tests_still_run(tmp_path: Path) -> None:
    bad = write(tmp_path, "a.test.yml", GOOD)
    compiler = StubCompiler(errors=("rules/curl.yml:3: E001 broken",))
    report = run_tests([bad, tmp_path / "missing.test.yml"], compiler=compiler)
    assert [r.status for r in report.results] == ["error", "error"]
    assert "rules do not load:\nrules/curl.yml:3: E001 broken" in report.results[0].error
    assert "cannot read test file" in report.results[1].error


def test_report_is_not_collected_by_pytest() -> None:
    assert TestReport.__test__ is False


def test_shipped_examples_pass() -> None:
    report = run_tests([DATA])  # the real loader and engine, every test below DATA
    assert report.ok, report.render()
    # The three examples of this folder (the packs' own tests live in data/packs/).
    assert [r.name for r in report.results if Path(r.path).parent == DATA] == [
        "download then execute from /tmp",
        "curl to unapproved hosts, tuned",
        "port scan (value_count)",
    ]


def test_a_wrong_expectation_fails_against_the_real_engine(tmp_path: Path) -> None:
    for name in ("port_scan.jsonl", "rules"):
        src = DATA / name
        (tmp_path / name).symlink_to(src, target_is_directory=src.is_dir())
    (tmp_path / "scan.test.yml").write_text(
        "rules: [rules/port_scan.yml]\nevents: port_scan.jsonl\nexpect: {7: [port_scan]}\n")
    report = run_tests([tmp_path])
    (r,) = report.results
    assert r.diff == (
        "- line 7: port_scan (7a6072c4-f451-4276-b49e-c67b6423eea9)",
        "+ line 8: port_scan (7a6072c4-f451-4276-b49e-c67b6423eea9)",
    )


def test_rules_that_do_not_load_in_the_real_loader(tmp_path: Path) -> None:
    (tmp_path / "bad.yml").write_text("title: x\nlogsource: {category: syslog}\n"
                                      "detection: {s: {a: 1}, condition: s}\n")
    (tmp_path / "e.jsonl").write_text(exec_line(1, "/bin/true") + "\n")
    (tmp_path / "t.test.yml").write_text("rules: [bad.yml]\nevents: e.jsonl\nexpect: []\n")
    (r,) = run_tests([tmp_path]).results
    assert r.status == "error" and "E004" in r.error
