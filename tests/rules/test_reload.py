"""Hot reload: file changes (inotify, debounced) and SIGHUP compile a new rule set and swap
it in between two events; a broken set never replaces the running one.

The stand-in engine and build below model the contract (``swap`` between events, a build
returning ``(ruleset | None, diagnostics)``); ``test_real_engine_*`` run the real loader
and engine when they are present.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from coi_watch.errors import RuleLocation
from coi_watch.events import Event, ProcExec
from coi_watch.rules.lint import Diagnostic, diagnostic
from coi_watch.rules.reload import RuleReloader, parse_inotify_events
from coi_watch.verdicts import Severity, Verdict


class StubEngine:
    """One verdict per rule id of the current set, for every event."""

    def __init__(self, ruleset: tuple[str, ...]) -> None:
        self.ruleset = ruleset
        self.swaps = 0

    def swap(self, ruleset: tuple[str, ...]) -> None:
        self.ruleset = ruleset
        self.swaps += 1

    def feed(self, ev: Event, now_ns: int) -> Iterable[Verdict]:
        return [Verdict(ts_ns=ev.ts_ns, wall_ns=ev.wall_ns, container=ev.container,
                        detector=f"sigma:{rid}", title=rid, severity=Severity.INFO)
                for rid in self.ruleset]


Built = tuple[Any, tuple[Diagnostic, ...]]


def stub_build(delay: float = 0.0) -> Callable[..., Built]:
    """Rule files hold ``rule: <id>`` lines; anything else is a syntax error."""

    def build(paths: Sequence[str], include_packs: bool,
              placeholders: Mapping[str, Sequence[str]] | None) -> Built:
        time.sleep(delay)  # runs in a worker thread: the loop keeps going meanwhile
        ids: list[str] = []
        diags: list[Diagnostic] = []
        files: list[Path] = []
        for raw in paths:
            p = Path(raw)
            files.extend(sorted(p.rglob("*.yml")) if p.is_dir() else [p])
        for f in files:
            try:
                text = f.read_text()
            except OSError as exc:
                diags.append(diagnostic("E010", str(exc), RuleLocation(str(f))))
                continue
            for n, line in enumerate(text.splitlines(), 1):
                key, _, value = line.partition(":")
                if key != "rule" or not value.strip():
                    diags.append(diagnostic("E001", f"bad line {line!r}", RuleLocation(str(f), n)))
                else:
                    ids.append(value.strip())
        if placeholders:
            ids.extend(f"ph:{k}" for k in sorted(placeholders))
        if any(d.severity == "error" for d in diags):
            return None, tuple(diags)
        return tuple(ids), tuple(diags)

    return build


class Probe:
    def __init__(self) -> None:
        self.successes: list[Any] = []
        self.failures: list[tuple[Diagnostic, ...]] = []

    def ok(self, ruleset: Any, diags: tuple[Diagnostic, ...]) -> None:
        self.successes.append(ruleset)

    def failed(self, diags: tuple[Diagnostic, ...]) -> None:
        self.failures.append(diags)


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


class Running:
    """A reloader task for the duration of a test."""

    def __init__(self, reloader: RuleReloader) -> None:
        self.reloader = reloader
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RuleReloader:
        self.task = asyncio.create_task(self.reloader.run())
        await asyncio.wait_for(self.reloader.ready.wait(), 5)
        return self.reloader

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def make(tmp_path: Path, engine: StubEngine, probe: Probe, *, paths: list[Path] | None = None,
         delay: float = 0.0, **kw: Any) -> RuleReloader:
    return RuleReloader(paths or [tmp_path / "rules"], engine, on_success=probe.ok,
                        on_failure=probe.failed, build=stub_build(delay), sighup=False, **kw)


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    d = tmp_path / "rules"
    d.mkdir()
    (d / "a.yml").write_text("rule: old\n")
    return d


def event(i: int) -> ProcExec:
    return ProcExec(ts_ns=i, wall_ns=i, container="agent-1", pid=100 + i)


# --------------------------------------------------------------------------- swapping


async def test_every_event_is_evaluated_exactly_once_across_a_reload(
    tmp_path: Path, rules_dir: Path
) -> None:
    engine, probe = StubEngine(("old",)), Probe()
    fired: list[str] = []
    fed = 0
    stop = asyncio.Event()

    async def stream() -> None:
        nonlocal fed
        while not stop.is_set():
            ev = event(fed)
            fed += 1
            fired.extend(v.detector for v in engine.feed(ev, ev.ts_ns))
            await asyncio.sleep(0)

    async with Running(make(tmp_path, engine, probe, delay=0.1)):
        producer = asyncio.create_task(stream())
        await until(lambda: fed > 200)
        (rules_dir / "a.yml").write_text("rule: new\n")
        await until(lambda: bool(probe.successes))
        at_swap = fed
        await until(lambda: fed > at_swap + 200)
        stop.set()
        await producer
    assert len(fired) == fed  # one verdict per event: none lost, none twice
    n_old = fired.count("sigma:old")
    assert fired == ["sigma:old"] * n_old + ["sigma:new"] * (fed - n_old)
    assert 200 < n_old < fed
    # The build took 100 ms in a worker thread: events kept flowing meanwhile.
    assert n_old > 250


async def test_broken_file_keeps_the_running_set(tmp_path: Path, rules_dir: Path) -> None:
    engine, probe = StubEngine(("old",)), Probe()
    async with Running(make(tmp_path, engine, probe)) as reloader:
        (rules_dir / "a.yml").write_text("rule: new\nthis is: broken\n")
        await until(lambda: bool(probe.failures))
        assert engine.ruleset == ("old",) and engine.swaps == 0
        (diag,) = probe.failures[0]
        assert diag.code == "E001" and diag.source.line == 2
        assert reloader.failures == 1
        (rules_dir / "a.yml").write_text("rule: fixed\n")
        await until(lambda: engine.ruleset == ("fixed",))
    assert probe.successes == [("fixed",)]


async def test_half_written_file_is_read_once_complete(tmp_path: Path, rules_dir: Path) -> None:
    engine, probe = StubEngine(("old",)), Probe()
    async with Running(make(tmp_path, engine, probe, debounce_s=0.1)) as reloader:
        with open(rules_dir / "a.yml", "w") as f:
            f.write("rule: ne")
            f.flush()
            await asyncio.sleep(0.5)  # five debounce periods with the file still open
            assert reloader.reloads == 0
            f.write("w\n")
        await until(lambda: engine.ruleset == ("new",))
        assert reloader.reloads == 1
    assert probe.failures == []


async def test_a_writer_that_never_closes_is_read_after_max_wait(
    tmp_path: Path, rules_dir: Path
) -> None:
    engine, probe = StubEngine(("old",)), Probe()
    async with Running(make(tmp_path, engine, probe, debounce_s=0.05, max_wait_s=0.3)):
        with open(rules_dir / "a.yml", "w") as f:
            f.write("rule: slow\n")
            f.flush()
            await until(lambda: engine.ruleset == ("slow",), timeout=3)


async def test_atomic_rename_replace(tmp_path: Path, rules_dir: Path) -> None:
    engine, probe = StubEngine(("old",)), Probe()
    async with Running(make(tmp_path, engine, probe)):
        tmp = rules_dir / ".a.yml.tmp"
        tmp.write_text("rule: renamed\n")
        os.replace(tmp, rules_dir / "a.yml")
        await until(lambda: engine.ruleset == ("renamed",))


async def test_changes_are_debounced_into_one_reload(tmp_path: Path, rules_dir: Path) -> None:
    engine, probe = StubEngine(("old",)), Probe()
    async with Running(make(tmp_path, engine, probe, debounce_s=0.2)) as reloader:
        for i in range(5):
            (rules_dir / "a.yml").write_text(f"rule: v{i}\n")
            await asyncio.sleep(0.02)
        await until(lambda: engine.ruleset == ("v4",))
        await asyncio.sleep(0.4)
        assert reloader.reloads == 1


async def test_new_files_and_subdirectories_are_seen(tmp_path: Path, rules_dir: Path) -> None:
    engine, probe = StubEngine(("old",)), Probe()
    async with Running(make(tmp_path, engine, probe, debounce_s=0.05)):
        (rules_dir / "b.yml").write_text("rule: b\n")
        await until(lambda: engine.ruleset == ("old", "b"))
        (rules_dir / "sub").mkdir()
        await until(lambda: len(probe.successes) >= 2)
        (rules_dir / "sub" / "c.yml").write_text("rule: c\n")
        await until(lambda: engine.ruleset == ("old", "b", "c"))
        (rules_dir / "notes.txt").write_text("ignored\n")
        await asyncio.sleep(0.2)
        assert engine.ruleset == ("old", "b", "c")


async def test_a_single_rule_file_is_watched_through_its_directory(tmp_path: Path) -> None:
    (tmp_path / "one.yml").write_text("rule: one\n")
    (tmp_path / "other.yml").write_text("rule: other\n")
    engine, probe = StubEngine(("one",)), Probe()
    reloader = make(tmp_path, engine, probe, paths=[tmp_path / "one.yml"], debounce_s=0.05)
    async with Running(reloader):
        (tmp_path / "other.yml").write_text("rule: changed\n")  # not ours
        await asyncio.sleep(0.3)
        assert reloader.reloads == 0
        (tmp_path / "one.yml").unlink()
        await until(lambda: bool(probe.failures))  # the file is gone: E010, keep running set
        (tmp_path / "one.yml").write_text("rule: back\n")
        await until(lambda: engine.ruleset == ("back",))


async def test_placeholder_file_is_watched_and_re_read(tmp_path: Path, rules_dir: Path) -> None:
    ph = tmp_path / "placeholders.yml"
    ph.write_text("hosts: [a]\n")
    engine, probe = StubEngine(("old",)), Probe()
    async with Running(make(tmp_path, engine, probe, placeholders=ph, debounce_s=0.05)):
        ph.write_text("hosts: [a]\nports: [22]\n")
        await until(lambda: engine.ruleset == ("old", "ph:hosts", "ph:ports"))
        ph.write_text("- not a mapping\n")
        await until(lambda: bool(probe.failures))
        assert probe.failures[-1][0].code == "E010"
        assert engine.ruleset == ("old", "ph:hosts", "ph:ports")


# --------------------------------------------------------------------------- triggers


async def test_sighup_reloads(tmp_path: Path, rules_dir: Path) -> None:
    engine, probe = StubEngine(("old",)), Probe()
    reloader = RuleReloader([rules_dir], engine, on_success=probe.ok, build=stub_build(),
                            watch=False)
    async with Running(reloader):
        (rules_dir / "a.yml").write_text("rule: hup\n")
        await asyncio.sleep(0.3)
        assert engine.ruleset == ("old",)  # not watching: only the signal reloads
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: engine.ruleset == ("hup",))
    # The handler is gone with the task: the default disposition is back.
    assert signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, signal.default_int_handler)


async def test_build_exceptions_and_callback_exceptions_do_not_kill_the_reloader(
    tmp_path: Path, rules_dir: Path
) -> None:
    engine = StubEngine(("old",))
    calls: list[str] = []

    def explode(*_: Any) -> Built:
        calls.append("build")
        raise RuntimeError("loader bug")

    def on_failure(diags: tuple[Diagnostic, ...]) -> None:
        calls.append(diags[0].code + " " + diags[0].message)
        raise ValueError("callback bug")

    reloader = RuleReloader([rules_dir], engine, on_failure=on_failure, build=explode,
                            watch=False, sighup=False)
    async with Running(reloader):
        reloader.request("test")
        await until(lambda: len(calls) == 2)
        reloader.request("again")
        await until(lambda: len(calls) == 4)
    assert calls[1] == "E001 reload failed: loader bug"
    assert engine.swaps == 0


async def test_reload_can_be_called_directly(tmp_path: Path, rules_dir: Path) -> None:
    engine, probe = StubEngine(("old",)), Probe()
    reloader = make(tmp_path, engine, probe)
    (rules_dir / "a.yml").write_text("rule: direct\n")
    assert await reloader.reload("test") is True
    assert engine.ruleset == ("direct",)


def test_parse_inotify_events() -> None:
    def ev(wd: int, mask: int, name: bytes) -> bytes:
        padded = name + b"\0" * (16 - len(name)) if name else b""
        return struct.pack("iIII", wd, mask, 0, len(padded)) + padded

    buf = ev(1, 0x8, b"a.yml") + ev(2, 0x400, b"") + ev(3, 0x80, b"b.yaml")
    assert list(parse_inotify_events(buf)) == [
        (1, 0x8, 0, "a.yml"), (2, 0x400, 0, ""), (3, 0x80, 0, "b.yaml"),
    ]
    assert list(parse_inotify_events(buf[:10])) == []


# --------------------------------------------------------------------------- real engine

RULE = """title: Every program ({tag})
id: {id}
logsource: {{category: process_creation, product: linux}}
detection:
    sel:
        Image|startswith: /
    condition: sel
level: informational
"""
OLD_ID = "a2eed49e-e178-4deb-93ea-8c8183dde4bf"
NEW_ID = "68339f6e-fa88-4418-b44b-3670ac2d9d25"


def real_engine(rules_dir: Path) -> Any:
    from coi_watch.rules.engine import RuleEngine, RuleSet

    ruleset = RuleSet.load([str(rules_dir)], include_packs=False)
    assert ruleset.errors == ()
    return RuleEngine(ruleset=ruleset)


def exe_event(i: int) -> ProcExec:
    return ProcExec(ts_ns=i, wall_ns=i, container="agent-1", pid=100 + i, exe="/usr/bin/ls",
                    argv=("ls",))


async def test_real_engine_every_event_exactly_once(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "all.yml").write_text(RULE.format(tag="old", id=OLD_ID))
    engine, probe = real_engine(rules_dir), Probe()
    fired: list[str] = []
    fed = 0
    stop = asyncio.Event()

    async def stream() -> None:
        nonlocal fed
        while not stop.is_set():
            ev = exe_event(fed)
            fed += 1
            fired.extend(v.detector for v in engine.feed(ev, ev.ts_ns))
            await asyncio.sleep(0)

    reloader = RuleReloader([rules_dir], engine, on_success=probe.ok, on_failure=probe.failed,
                            include_packs=False, sighup=False, debounce_s=0.05)
    async with Running(reloader):
        producer = asyncio.create_task(stream())
        await until(lambda: fed > 100)
        (rules_dir / "all.yml").write_text(RULE.format(tag="new", id=NEW_ID))
        await until(lambda: bool(probe.successes))
        at_swap = fed
        await until(lambda: fed > at_swap + 100)
        stop.set()
        await producer
    n_old = fired.count(f"sigma:{OLD_ID}")
    assert len(fired) == fed
    assert fired == [f"sigma:{OLD_ID}"] * n_old + [f"sigma:{NEW_ID}"] * (fed - n_old)
    assert 0 < n_old < fed and probe.failures == []


async def test_real_engine_broken_rule_keeps_the_running_set(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "all.yml").write_text(RULE.format(tag="old", id=OLD_ID))
    engine, probe = real_engine(rules_dir), Probe()
    reloader = RuleReloader([rules_dir], engine, on_success=probe.ok, on_failure=probe.failed,
                            include_packs=False, watch=False)
    async with Running(reloader):
        (rules_dir / "all.yml").write_text(RULE.format(tag="new", id=NEW_ID)
                                           .replace("startswith", "startswiht"))
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: bool(probe.failures))
        assert [d.code for d in probe.failures[0] if d.severity == "error"] == ["E002"]
        ev = exe_event(1)
        assert [v.detector for v in engine.feed(ev, 1)] == [f"sigma:{OLD_ID}"]
        (rules_dir / "all.yml").write_text(RULE.format(tag="new", id=NEW_ID))
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: bool(probe.successes))
        assert [v.detector for v in engine.feed(ev, 1)] == [f"sigma:{NEW_ID}"]
