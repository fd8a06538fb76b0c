"""The event model: exact JSON round trip through orjson, for every kind (property test)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coi_watch.errors import WireError
from coi_watch.events import (
    EVENT_TYPES,
    Ancestor,
    Fd,
    ProcExec,
    event_from_json,
    event_to_json,
)

# Text of any code point except lone surrogates (JSON cannot carry them; sources decode
# with backslash escapes so they never produce one).
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_int = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def _strategy(tp: Any) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return st.sampled_from(typing.get_args(tp))
    if origin is tuple:
        return st.lists(_strategy(typing.get_args(tp)[0]), max_size=4).map(tuple)
    if dataclasses.is_dataclass(tp):
        return _of(tp)
    return {int: _int, str: _text, bool: st.booleans()}[tp]


def _of(cls: Any) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: _strategy(hints[f.name]) for f in dataclasses.fields(cls)})


@settings(max_examples=300)
@given(st.sampled_from(sorted(EVENT_TYPES)).flatmap(lambda k: _of(EVENT_TYPES[k])))
def test_every_event_round_trips_exactly(ev: Any) -> None:
    data = event_to_json(ev)
    back = event_from_json(data)
    assert back == ev
    assert type(back) is type(ev)
    assert orjson.loads(data)["kind"] == ev.kind


def test_events_are_frozen_and_slotted() -> None:
    ev = ProcExec(ts_ns=1, wall_ns=2, container="c", pid=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.pid = 4  # type: ignore[misc]
    assert not hasattr(ev, "__dict__")


def test_nested_records_decode_to_their_classes() -> None:
    ev = ProcExec(ts_ns=1, wall_ns=2, container="c", pid=3, argv=("sh", "-i"),
                  stdio=(Fd(fd=0, type="socket", proto="tcp", state="ESTABLISHED",
                            remote="127.0.0.1:4444"),),
                  ancestry=(Ancestor(pid=2, comm="nc"),))
    back = event_from_json(event_to_json(ev))
    assert isinstance(back, ProcExec)
    assert isinstance(back.stdio[0], Fd) and back.stdio[0].connected_inet
    assert isinstance(back.ancestry[0], Ancestor)
    assert back.cmdline == "sh -i"


@pytest.mark.parametrize("raw", [
    b"not json", b"[]", b'{"kind":"nope"}', b'{"kind":"proc.fork","pid":1}',
    b'{"kind":"proc.fork","ts_ns":1,"wall_ns":1,"container":"c","pid":"1","ppid":1}',
    b'{"kind":"proc.fork","ts_ns":true,"wall_ns":1,"container":"c","pid":1,"ppid":1}',
    b'{"kind":"proc.fork","ts_ns":1,"wall_ns":1,"container":"c","pid":1,"ppid":1,"x":1}',
])
def test_bad_json_is_a_wire_error(raw: bytes) -> None:
    with pytest.raises(WireError):
        event_from_json(raw)


def test_connected_inet() -> None:
    assert Fd(fd=0, type="socket", proto="tcp6", state="ESTABLISHED").connected_inet
    assert not Fd(fd=0, type="socket", proto="tcp", state="LISTEN").connected_inet
    assert not Fd(fd=0, type="socket", proto="unix").connected_inet
    assert Fd(fd=1, type="socket", proto="udp", remote="10.0.0.1:53").connected_inet
    assert not Fd(fd=1, type="socket", proto="udp", remote="0.0.0.0:0").connected_inet
    assert not Fd(fd=1, type="pipe").connected_inet
