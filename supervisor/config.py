"""Configuration: TOML files, environment and flags, merged in the seed README's order.

Strategy: configuration is a nested mapping built by merging, lowest precedence first:

1. built-in defaults (:data:`DEFAULTS`),
2. ``/etc/coi/config.toml``,
3. ``~/.config/coi/config.toml``,
4. ``./.coi.toml``,
5. the file named by ``COI_CONFIG``,
6. ``COI_<SECTION>_<KEY>`` environment variables (``COI_RESPONSE_MONITOR_ONLY=true``),
7. CLI flags (passed in as ``overrides``).

Every known key has a type in :data:`SCHEMA`; a value of the wrong type or outside its
allowed set is a :class:`~coi_watch.errors.ConfigError` naming the key and the file (the CLI
exits non-zero); an unknown key is a warning naming the key and the file, and is ignored.
Detector sections (``[detectors.NAME]``) are free-form apart from ``mode``: each detector
documents and checks its own keys.

The Go original's ``[monitoring]`` and ``[monitoring.nft]`` keys are accepted with the same
meaning and translated by :func:`_translate_legacy` (``auto_pause_on_high = false`` makes the
ladder alert on high, ``reverse_shell_one_liners`` becomes the reverse-shell detector's
``one_liners``, and so on).
"""

from __future__ import annotations

import contextlib
import copy
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coi_watch.errors import ConfigError
from coi_watch.verdicts import Action, Severity

__all__ = ("DEFAULTS", "SCHEMA", "Config", "default_paths", "load_config")

ACTIONS = frozenset(a.value for a in Action if a not in (Action.RESUME, Action.SNAPSHOT))
MODES = frozenset({"monitor", "enforce"})

DEFAULTS: dict[str, Any] = {
    "watch": {
        "pattern": "coi-*",
        "incus_socket": "/var/lib/incus/unix.socket",
        "queue_size": 65536,
        "sources": ["proc", "nflog", "conntrack", "fanotify"],
        "follow": True,
        "run_dir": "~/.coi/run",
    },
    "audit": {"dir": "~/.coi/audit", "fsync": True, "events": "all", "redact_patterns": []},
    "response": {
        "monitor_only": False,
        "dedup_window_s": 30.0,
        "ladder": {"info": "log", "warning": "alert", "high": "pause", "critical": "kill"},
        "snapshot_before_kill": False,
        "snapshot_retention": 3,
        "webhook": "",
        "quarantine_permitted": [],
        "quarantine_resolvers": [],
        "webhook_min_severity": "warning",
    },
    "detectors": {"enabled": []},
    "rules": {"paths": [], "packs": True, "reload": True},
}

Check = Callable[[Any], bool]


def _is(*types: type) -> Check:
    def check(v: Any) -> bool:
        return isinstance(v, types) and not (isinstance(v, bool) and bool not in types)

    return check


def _one_of(allowed: frozenset[str]) -> Check:
    return lambda v: isinstance(v, str) and v in allowed


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _positive(v: Any) -> bool:
    return _is(int, float)(v) and v > 0


SCHEMA: dict[str, tuple[Check, str]] = {
    "watch.pattern": (_is(str), "a glob string"),
    "watch.incus_socket": (_is(str), "a path"),
    "watch.queue_size": (lambda v: _is(int)(v) and v >= 16, "an integer >= 16"),
    "watch.sources": (_str_list, "a list of source names"),
    "watch.follow": (_is(bool), "true or false"),
    "watch.run_dir": (_is(str), "a path"),
    "audit.dir": (_is(str), "a path"),
    "audit.fsync": (_is(bool), "true or false"),
    "audit.events": (_one_of(frozenset({"all", "none"})), "'all' or 'none'"),
    "audit.redact_patterns": (_str_list, "a list of regular expressions"),
    "response.monitor_only": (_is(bool), "true or false"),
    "response.dedup_window_s": (lambda v: _is(int, float)(v) and v >= 0, "seconds >= 0"),
    "response.snapshot_before_kill": (_is(bool), "true or false"),
    "response.snapshot_retention": (lambda v: _is(int)(v) and v >= 1, "an integer >= 1"),
    "response.webhook": (lambda v: isinstance(v, str) and (v == "" or v.startswith(
        ("http://", "https://"))), "an http(s) URL or empty"),
    "response.quarantine_permitted": (_str_list, "a list of addresses or CIDRs"),
    "response.quarantine_resolvers": (_str_list, "a list of resolver addresses"),
    "response.webhook_min_severity": (_one_of(frozenset(s.value for s in Severity)),
                                      "info|warning|high|critical"),
    **{
        f"response.ladder.{s.value}": (_one_of(ACTIONS), "one of " + "|".join(sorted(ACTIONS)))
        for s in Severity
    },
    "detectors.enabled": (_str_list, "a list of detector names (empty: all)"),
    "rules.paths": (_str_list, "a list of rule files or folders"),
    "rules.packs": (_is(bool), "true or false"),
    "rules.reload": (_is(bool), "true or false (hot reload on SIGHUP and file changes)"),
    # The Go original's keys (research/coi-monitor.md, section 6).
    "monitoring.enabled": (_is(bool), "true or false"),
    "monitoring.auto_pause_on_high": (_is(bool), "true or false"),
    "monitoring.auto_kill_on_critical": (_is(bool), "true or false"),
    "monitoring.poll_interval_sec": (_positive, "a positive number"),
    "monitoring.file_read_threshold_mb": (_positive, "a positive number"),
    "monitoring.file_read_rate_mb_per_sec": (_positive, "a positive number"),
    "monitoring.file_write_threshold_mb": (_positive, "a positive number"),
    "monitoring.file_write_rate_mb_per_sec": (_positive, "a positive number"),
    "monitoring.audit_log_retention_days": (lambda v: _is(int)(v) and v >= 0, "days >= 0"),
    "monitoring.process_count_threshold": (lambda v: _is(int)(v) and v >= 0, "an int >= 0"),
    "monitoring.process_spawn_rate_threshold": (lambda v: _is(int)(v) and v >= 0, "an int >= 0"),
    "monitoring.reverse_shell_one_liners": (
        _one_of(frozenset({"critical", "warn", "off"})), "critical|warn|off"),
    "monitoring.forensics_on_kill": (_is(bool), "true or false"),
    "monitoring.nft.enabled": (_is(bool), "true or false"),
    "monitoring.nft.rate_limit_per_second": (lambda v: _is(int)(v) and v > 0, "an int > 0"),
    "monitoring.nft.dns_query_threshold": (lambda v: _is(int)(v) and v > 0, "an int > 0"),
    "monitoring.nft.log_dns_queries": (_is(bool), "true or false"),
    "monitoring.nft.lima_host": (_is(str), "a host name"),
}

# Tables whose own keys are free-form (checked by their owners).
_FREE_TABLES = ("detectors.", "sources.")
_TABLES = {k.rsplit(".", 1)[0] for k in SCHEMA} | {"response.ladder", "monitoring.nft"}


@dataclass(slots=True)
class Config:
    """The merged configuration, plus what loading it had to say."""

    data: dict[str, Any]
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def get(self, dotted: str, default: Any = None) -> Any:
        """The value at ``a.b.c``, or ``default``."""
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def detector(self, name: str) -> dict[str, Any]:
        """The ``[detectors.NAME]`` table (empty when absent)."""
        table = self.get(f"detectors.{name}", {})
        return dict(table) if isinstance(table, dict) else {}

    @property
    def ladder(self) -> dict[Severity, Action]:
        """Severity -> action, after legacy translation."""
        return {Severity(k): Action(v) for k, v in self.get("response.ladder").items()}

    @property
    def audit_dir(self) -> Path:
        """The audit directory with ``~`` expanded."""
        return Path(os.path.expanduser(self.get("audit.dir")))


def default_paths(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> list[Path]:
    """Config files in precedence order (lowest first); absent ones are skipped later."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME", "~")).expanduser()
    paths = [
        Path("/etc/coi/config.toml"),
        home / ".config" / "coi" / "config.toml",
        (cwd or Path.cwd()) / ".coi.toml",
    ]
    if env.get("COI_CONFIG"):
        paths.append(Path(env["COI_CONFIG"]))
    return paths


def load_config(
    paths: list[Path] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Merge defaults, files, environment and ``overrides`` (dotted keys, from CLI flags).

    Raises:
        ConfigError: a file is not valid TOML, a named ``COI_CONFIG`` file is missing, or a
            value has the wrong type (the message names the key and its origin).
    """
    env = os.environ if env is None else env
    cfg = Config(copy.deepcopy(DEFAULTS))
    explicit = Path(env["COI_CONFIG"]) if env.get("COI_CONFIG") else None
    for path in default_paths(env) if paths is None else paths:
        if not path.is_file():
            if path == explicit:
                raise ConfigError(f"COI_CONFIG names {path}, which is not a readable file")
            continue
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        _merge(cfg, doc, str(path))
        cfg.files.append(str(path))
    _merge(cfg, _from_env(env), "environment")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _merge(cfg, _nest(dotted, value), "command line")
    _translate_legacy(cfg)
    return cfg


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


def _merge(cfg: Config, doc: Mapping[str, Any], origin: str, prefix: str = "") -> None:
    for key, value in doc.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and (dotted in _TABLES or dotted.startswith(_FREE_TABLES)
                                        or dotted in ("detectors", "sources")):
            _merge(cfg, value, origin, dotted + ".")
            continue
        if dotted.startswith(_FREE_TABLES) and dotted != "detectors.enabled":
            if dotted.endswith(".mode") and value not in MODES:
                raise ConfigError(f"{origin}: {dotted} = {value!r}: expected monitor|enforce")
            _set(cfg.data, dotted, value)
            continue
        rule = SCHEMA.get(dotted)
        if rule is None:
            cfg.warnings.append(f"{origin}: unknown key {dotted!r} ignored")
            continue
        check, expected = rule
        if not check(value):
            raise ConfigError(f"{origin}: {dotted} = {value!r}: expected {expected}")
        _set(cfg.data, dotted, value)


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """``COI_SECTION_KEY=value`` for the keys of :data:`SCHEMA` (``COI_CONFIG`` is a path).

    A value is read as the first of list (comma-separated, for list keys), bool, int, float
    or string that the key's check accepts; if none does, the raw string goes on to
    :func:`_merge`, which reports it.
    """
    out: dict[str, Any] = {}
    for dotted, (check, _) in SCHEMA.items():
        name = "COI_" + dotted.replace(".", "_").upper()
        if name not in env:
            continue
        raw = env[name]
        candidates: list[Any] = []
        if check is _str_list:
            candidates.append([x for x in raw.split(",") if x])
        for parse in (_parse_bool, int, float):
            with contextlib.suppress(ValueError):
                candidates.append(parse(raw))
        candidates.append(raw)
        _set(out, dotted, next((c for c in candidates if check(c)), raw))
    return out


def _parse_bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    raise ValueError(raw)


def _translate_legacy(cfg: Config) -> None:
    """Give the Go original's ``[monitoring]`` keys their meaning in coi-watch terms."""
    mon = cfg.data.get("monitoring", {})
    ladder = cfg.data["response"]["ladder"]
    if mon.get("auto_pause_on_high") is False and ladder["high"] == "pause":
        ladder["high"] = "alert"
    if mon.get("auto_kill_on_critical") is False and ladder["critical"] == "kill":
        ladder["critical"] = "alert"
    dets = cfg.data.setdefault("detectors", {})
    if "reverse_shell_one_liners" in mon:
        value = {"warn": "warning"}.get(mon["reverse_shell_one_liners"],
                                        mon["reverse_shell_one_liners"])
        dets.setdefault("reverse_shell", {}).setdefault("one_liners", value)
    for key in ("process_count_threshold", "process_spawn_rate_threshold"):
        if key in mon:
            dets.setdefault("resources", {}).setdefault(key, mon[key])
    for key in ("file_read_threshold_mb", "file_read_rate_mb_per_sec",
                "file_write_threshold_mb", "file_write_rate_mb_per_sec"):
        if key in mon:
            dets.setdefault("exfiltration", {}).setdefault(key, mon[key])
    if mon.get("forensics_on_kill"):
        cfg.data["response"]["snapshot_before_kill"] = True
    if "poll_interval_sec" in mon:
        cfg.warnings.append("monitoring.poll_interval_sec is accepted but unused: "
                            "coi-watch is event-driven and does not poll")
