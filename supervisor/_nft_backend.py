"""How coi-watch talks to nftables: libnftables in-process, or the ``nft`` binary.

Strategy: a :class:`Backend` runs one command buffer (JSON, or text for the table creation)
and returns the JSON it printed. The default calls ``libnftables.so.1`` through ctypes with
one ``nft_ctx`` (one netlink socket, so an owned table lives as long as it does) and no fork
per command; ``nft -j -f -`` in a subprocess is the fallback when the library cannot be
loaded. :func:`check_table` dry-runs the whole table through one of them. The manager that
uses them is :class:`coi_watch.nft.NftManager`, which re-exports the public names.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from typing import Any, Protocol

import orjson

from coi_watch._nft_rules import (
    FAMILY,
    Quarantine,
    _chain,
    _doc,
    _element,
    _rule,
    container_rules,
    skeleton,
    table_name,
)
from coi_watch.errors import SourceError
from coi_watch.netns import call_in_netns

__all__ = ("Backend", "NftError", "check_table")


class NftError(SourceError):
    """nftables refused a command or cannot be used (no library or binary, no privilege)."""


# --------------------------------------------------------------------------- backends


class Backend(Protocol):
    """Runs one nftables command buffer (JSON, or text for the table), returns its output."""

    can_own: bool

    def run(self, buf: str, *, terse: bool = False, dry_run: bool = False) -> str: ...

    def close(self) -> None: ...


# libnftables.h: enum nft_output_flags
_OUT_HANDLE = 1 << 3
_OUT_JSON = 1 << 4
_OUT_TERSE = 1 << 11


class _LibNftables:
    """``libnftables.so.1`` through ctypes: one ``nft_ctx`` (one netlink socket) for life.

    Not thread-safe: the manager calls it from one worker thread, under a lock.
    """

    can_own = True

    def __init__(self, netns: str | None) -> None:
        try:
            lib = ctypes.CDLL("libnftables.so.1", use_errno=True)
        except OSError as exc:
            raise NftError(f"libnftables.so.1 cannot be loaded: {exc}") from exc
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        for fn in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
        for fn in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
            getattr(lib, fn).restype = ctypes.c_char_p
        lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self._lib = lib
        # nft_ctx_new opens the netlink socket: in the target netns when one is given.

        def new() -> int | None:
            return lib.nft_ctx_new(0)  # type: ignore[no-any-return]  # NFT_CTX_DEFAULT

        ctx = call_in_netns(netns, new) if netns else new()
        if not ctx:
            raise NftError("nft_ctx_new failed")
        self._ctx: int | None = ctx
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)

    def run(self, buf: str, *, terse: bool = False, dry_run: bool = False) -> str:
        if self._ctx is None:
            raise NftError("nftables context closed")
        flags = _OUT_JSON | _OUT_HANDLE | (_OUT_TERSE if terse else 0)
        self._lib.nft_ctx_output_set_flags(self._ctx, flags)
        self._lib.nft_ctx_set_dry_run(self._ctx, dry_run)
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, buf.encode())
        out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
        if rc != 0:
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode().strip()
            raise NftError(err or f"nftables command failed ({rc})")
        return out

    def close(self) -> None:
        # Freeing the context closes its socket: an owned table goes with it.
        if self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None


class _NftCli:
    """``nft -j -f -`` in a subprocess (``nsenter --net`` for another netns)."""

    can_own = False

    def __init__(self, netns: str | None) -> None:
        self._prefix = ["nsenter", f"--net={netns}", "--"] if netns else []

    def run(self, buf: str, *, terse: bool = False, dry_run: bool = False) -> str:
        # With -j, "-f -" parses stdin as JSON and the text fallback then reads an empty
        # stdin: a text command would silently do nothing (nft 1.0.6, measured).
        json_in = buf.lstrip().startswith("{")
        argv = [*self._prefix, "nft", *(["-j"] if json_in else []), "-a",
                *(["-t"] if terse else []), *(["-c"] if dry_run else []), "-f", "-"]
        try:
            done = subprocess.run(argv, input=buf.encode(), capture_output=True, timeout=30,
                                  check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NftError(f"cannot run nft: {exc}") from exc
        if done.returncode:
            raise NftError(done.stderr.decode("utf-8", "replace").strip() or "nft failed")
        return done.stdout.decode()

    def close(self) -> None:
        pass


def _backend(kind: str, netns: str | None) -> Backend:
    if kind == "lib":
        return _LibNftables(netns)
    if kind == "cli":
        return _NftCli(netns)
    if kind != "auto":
        raise ValueError(f"unknown nftables backend {kind!r}")
    try:
        return _LibNftables(netns)
    except NftError:
        return _NftCli(netns)


def check_table(group: int | None, *, netns: str | None = None, backend: str = "auto") -> str:
    """Have the kernel validate coi-watch's whole table (bridge family, hooks, sets, NFLOG
    rules, a container chain) in a dry run (``nft --check``: the transaction is sent, then
    aborted); nothing is created. Returns the backend used (``lib`` or ``cli``).

    Raises:
        NftError: nftables is unusable or the kernel refused something.
    """
    b = _backend(backend, netns)
    try:
        name = table_name(os.getpid(), 0, 99)
        cmds = [{"add": {"table": {"family": FAMILY, "name": name}}},
                *skeleton(name, group), _chain(name, "add", "c_probe"),
                *(_rule(name, "c_probe", r) for r in container_rules(
                    group is not None, Quarantine.of(["198.18.0.0/15"], ["198.18.0.1"]))),
                _element(name, "add", "coi-probe0", "c_probe")]
        b.run(_doc(cmds), dry_run=True)
    finally:
        b.close()
    return "lib" if isinstance(b, _LibNftables) else "cli"


# --------------------------------------------------------------------------- output


def _objects(out: str) -> list[dict[str, Any]]:
    """The objects of one or more ``{"nftables": [...]}`` documents in a command's output."""
    objs: list[dict[str, Any]] = []
    for line in out.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise NftError(f"nft printed something that is not JSON: {exc}") from None
        objs += [o for o in doc.get("nftables", ()) if isinstance(o, dict)]
    return objs


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for p in text.split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


