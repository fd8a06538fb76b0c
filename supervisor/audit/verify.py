"""Verifying an audit file: shape, schema version, sequence and hash chain, line by line.

Strategy: one streaming pass that remembers only the previous line's hash and the ``seq``
expected next, and stops at the first line that fails, reporting its 1-based line number and
a reason a human can act on. The checks for line ``n`` run in this order:

1. it ends with a newline (else: a torn record, the writer stopped mid-write);
2. it is a JSON object with a known ``v`` and well-typed fields (:func:`~coi_watch.audit.
   chain.parse_line`);
3. its ``seq`` is the previous one plus one (else records were removed, repeated or
   reordered: reported at this line);
4. its ``prev`` is the hash of line ``n-1`` (the genesis hash for the first record). A
   mismatch means line ``n-1`` was altered after it was written, so that is the line
   reported; the only other explanations (this record's own ``prev`` edited, or records
   removed and the rest renumbered) are named in the reason.

A torn line that the writer later closed with a newline is followed by its ``recovered``
system record; the reason then says so. What the chain cannot show: records cut from the end
of a file, or a tail rewritten with freshly computed hashes (see :mod:`coi_watch.audit.
chain`); :attr:`VerifyResult.head` is the hash to anchor elsewhere for that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO

from coi_watch.audit.chain import GENESIS, line_hash, parse_line
from coi_watch.errors import AuditError, ChainError

__all__ = ("VerifyResult", "verify_file", "verify_stream")


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome for one file.

    ``records`` counts the records that verified (all of them when ``ok``), ``head`` is the
    hash of the last of those (:data:`~coi_watch.audit.chain.GENESIS` for an empty file), and
    ``error`` is the first break, if any.
    """

    path: str
    records: int
    head: str
    error: ChainError | None = None

    @property
    def ok(self) -> bool:
        """True when the whole file verified."""
        return self.error is None

    def raise_for_error(self) -> None:
        """Raise :attr:`error` if the file did not verify.

        Raises:
            ChainError: the first break found.
        """
        if self.error is not None:
            raise self.error


def verify_file(path: str | os.PathLike[str]) -> VerifyResult:
    """Verify one audit file (see the module docstring).

    Raises:
        AuditError: the file cannot be opened or read (a broken chain is *returned*, not
            raised).
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            return verify_stream(fh, name)
    except OSError as exc:
        raise AuditError(f"cannot read {name}: {exc.strerror or exc}") from None


def verify_stream(fh: BinaryIO, name: str) -> VerifyResult:
    """Verify the lines of an open binary stream; ``name`` labels the result."""
    expected_seq = 1
    prev = GENESIS
    records = 0

    def broken(line: int, reason: str) -> VerifyResult:
        return VerifyResult(name, records, prev, ChainError(name, line, reason))

    for lineno, raw in enumerate(fh, 1):
        if not raw.endswith(b"\n"):
            return broken(lineno, f"torn record at the end of the file ({len(raw)} bytes "
                                  "without a newline: the writer stopped mid-write)")
        line = raw[:-1]
        try:
            obj = parse_line(line)
        except ValueError as exc:
            return broken(lineno, _unreadable(str(exc), len(line), fh.readline(), lineno))
        seq = obj["seq"]
        if seq != expected_seq:
            if seq > expected_seq:
                why = f"{seq - expected_seq} record(s) missing before this line, or reordered"
            else:
                why = "a record repeated or out of order"
            return broken(lineno, f"seq {seq}, expected {expected_seq} ({why})")
        if obj["prev"] != prev:
            if records == 0:
                return broken(lineno, "the first record's prev is not the genesis hash")
            return broken(lineno - 1, f"record altered: its hash does not match the prev "
                                      f"stored by line {lineno} (or line {lineno}'s prev was "
                                      f"edited)")
        prev = line_hash(line)
        expected_seq += 1
        records += 1
    return VerifyResult(name, records, prev)


def _unreadable(reason: str, size: int, following: bytes, lineno: int) -> str:
    """The reason for an unparseable line, naming a recovery record right after it."""
    try:
        nxt = parse_line(following.rstrip(b"\n")) if following else None
    except ValueError:
        nxt = None
    if nxt is not None and nxt["kind"] == "system" and nxt["data"].get("what") == "recovered":
        return (f"torn record ({size} bytes, {reason}): the writer stopped mid-write; "
                f"line {lineno + 1} records the recovery")
    return reason
