"""The audit record format and its hash chain, defined once for the writer and the verifier.

Strategy: a record is one line of JSON (orjson, keys in a fixed order, ``prev`` last)::

    {"v":1,"seq":7,"kind":"verdict","wall_ns":...,"ts_ns":...,"container":"c1",
     "data":{...},"prev":"<64 hex>"}

``seq`` counts the records of one file from 1. ``prev`` is :func:`line_hash` of the
previous line's exact bytes (without its newline); the first record of a file carries
:data:`GENESIS`. Hashing the bytes as written (not a re-serialisation) means the verifier
never has to agree with the writer on JSON formatting: whatever is on disk is what was
chained, and any edit, deletion or reordering of a line shows up as a mismatch at the next
one.

The chain proves a file is internally consistent; it cannot tell that the newest records
were cut off, or that the whole tail was rewritten with fresh hashes. Anchoring
:func:`line_hash` of the last line somewhere else (another file, a remote log) closes that.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

import orjson

__all__ = (
    "GENESIS",
    "KINDS",
    "SCHEMA_VERSION",
    "SUPPORTED_VERSIONS",
    "encode_record",
    "line_hash",
    "parse_line",
)

SCHEMA_VERSION: Final = 1
"""The ``v`` this writer puts in every record."""

SUPPORTED_VERSIONS: Final = frozenset({1})
"""The ``v`` values the verifier and reader understand."""

GENESIS: Final = "0" * 64
"""``prev`` of the first record of a file."""

KINDS: Final = frozenset({"event", "verdict", "action", "system"})
"""Record kinds."""


def line_hash(line: bytes) -> str:
    """SHA-256 (hex) of one record line, given without its trailing newline."""
    return hashlib.sha256(line).hexdigest()


def encode_record(
    *,
    seq: int,
    kind: str,
    wall_ns: int,
    ts_ns: int,
    container: str,
    data: bytes,
    prev: str,
) -> bytes:
    """One record line (no newline). ``data`` is the payload, already JSON (orjson) bytes."""
    # orjson.Fragment embeds the payload bytes as they are: the event was serialised once
    # (and redacted, if it had to be), so it is not decoded and encoded again here.
    return orjson.dumps({
        "v": SCHEMA_VERSION,
        "seq": seq,
        "kind": kind,
        "wall_ns": wall_ns,
        "ts_ns": ts_ns,
        "container": container,
        "data": orjson.Fragment(data),
        "prev": prev,
    })


# field -> accepted type; bool is excluded from the int fields by an exact type check.
_FIELDS: Final[Mapping[str, type]] = {
    "v": int,
    "seq": int,
    "kind": str,
    "wall_ns": int,
    "ts_ns": int,
    "container": str,
    "data": dict,
    "prev": str,
}


def parse_line(line: bytes) -> dict[str, Any]:
    """Decode and shape-check one record line (not its chain).

    Raises:
        ValueError: not JSON, not an object, an unknown ``v``, or a field missing or of the
            wrong type; the message says which, for a verifier's report.
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise ValueError("not valid JSON") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    v = obj.get("v")
    if type(v) is not int or v not in SUPPORTED_VERSIONS:
        raise ValueError(f"unknown schema version v={v!r}")
    for name, tp in _FIELDS.items():
        if type(obj.get(name)) is not tp:
            raise ValueError(f"field {name!r} missing or not a {tp.__name__}")
    if obj["kind"] not in KINDS:
        raise ValueError(f"unknown record kind {obj['kind']!r}")
    return obj
