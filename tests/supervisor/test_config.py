"""Layered configuration: precedence, legacy keys, unknown keys, invalid values."""

from __future__ import annotations

from pathlib import Path

import pytest

from coi_watch.config import default_paths, load_config
from coi_watch.errors import ConfigError
from coi_watch.verdicts import Action, Severity


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults() -> None:
    cfg = load_config([], env={})
    assert cfg.get("watch.pattern") == "coi-*"
    assert cfg.ladder == {Severity.INFO: Action.LOG, Severity.WARNING: Action.ALERT,
                          Severity.HIGH: Action.PAUSE, Severity.CRITICAL: Action.KILL}
    assert cfg.get("response.dedup_window_s") == 30.0


def test_precedence_files_then_env_then_flags(tmp_path: Path) -> None:
    system = _write(tmp_path / "etc.toml", '[watch]\npattern = "a-*"\nqueue_size = 100\n')
    user = _write(tmp_path / "user.toml", '[watch]\npattern = "b-*"\n')
    env = {"COI_WATCH_QUEUE_SIZE": "200", "COI_RESPONSE_MONITOR_ONLY": "true"}
    cfg = load_config([system, user], env=env)
    assert cfg.get("watch.pattern") == "b-*"
    assert cfg.get("watch.queue_size") == 200
    assert cfg.get("response.monitor_only") is True
    cfg = load_config([system, user], env=env, overrides={"watch.pattern": "c-*"})
    assert cfg.get("watch.pattern") == "c-*"
    assert cfg.files == [str(system), str(user)]


def test_default_paths_order_and_coi_config(tmp_path: Path) -> None:
    paths = default_paths({"HOME": "/home/u", "COI_CONFIG": "/x.toml"}, cwd=tmp_path)
    assert paths == [Path("/etc/coi/config.toml"), Path("/home/u/.config/coi/config.toml"),
                     tmp_path / ".coi.toml", Path("/x.toml")]


def test_missing_coi_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="COI_CONFIG"):
        load_config(None, env={"HOME": str(tmp_path), "COI_CONFIG": str(tmp_path / "no.toml")})


def test_unknown_key_warns_with_key_and_file(tmp_path: Path) -> None:
    f = _write(tmp_path / "c.toml", '[watch]\npatern = "x"\n[bogus]\na = 1\n')
    cfg = load_config([f], env={})
    assert any("watch.patern" in w and str(f) in w for w in cfg.warnings)
    assert any("'bogus'" in w for w in cfg.warnings)
    assert cfg.get("watch.pattern") == "coi-*"


@pytest.mark.parametrize("text, key", [
    ('[watch]\nqueue_size = "big"\n', "watch.queue_size"),
    ('[response.ladder]\nhigh = "explode"\n', "response.ladder.high"),
    ('[response]\nmonitor_only = 1\n', "response.monitor_only"),
    ('[detectors.reverse_shell]\nmode = "loud"\n', "detectors.reverse_shell.mode"),
    ('[monitoring]\nreverse_shell_one_liners = "maybe"\n', "monitoring.reverse_shell_one_liners"),
    ("[watch\n", "not valid TOML"),
])
def test_invalid_values_are_errors_naming_key_and_file(tmp_path: Path, text: str,
                                                       key: str) -> None:
    f = _write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config([f], env={})
    assert key in str(info.value) and str(f) in str(info.value)


def test_go_original_monitoring_keys_keep_their_meaning(tmp_path: Path) -> None:
    f = _write(tmp_path / "c.toml", "[monitoring]\nenabled = true\nauto_pause_on_high = false\n"
               'auto_kill_on_critical = false\nreverse_shell_one_liners = "warn"\n'
               "poll_interval_sec = 2\n[monitoring.nft]\nenabled = true\n"
               "dns_query_threshold = 100\n")
    cfg = load_config([f], env={})
    assert cfg.ladder[Severity.HIGH] is Action.ALERT
    assert cfg.ladder[Severity.CRITICAL] is Action.ALERT
    assert cfg.detector("reverse_shell")["one_liners"] == "warning"
    assert cfg.get("monitoring.nft.dns_query_threshold") == 100
    assert any("poll_interval_sec" in w for w in cfg.warnings)


def test_detector_tables_are_free_form(tmp_path: Path) -> None:
    f = _write(tmp_path / "c.toml", '[detectors]\nenabled = ["reverse_shell"]\n'
               '[detectors.reverse_shell]\nmode = "monitor"\nallow_programs = ["inetd"]\n')
    cfg = load_config([f], env={})
    assert cfg.detector("reverse_shell") == {"mode": "monitor", "allow_programs": ["inetd"]}
    assert cfg.get("detectors.enabled") == ["reverse_shell"]
    assert not cfg.warnings


def test_env_lists_and_strings() -> None:
    cfg = load_config([], env={"COI_WATCH_SOURCES": "proc,nflog", "COI_AUDIT_DIR": "/tmp/a"})
    assert cfg.get("watch.sources") == ["proc", "nflog"]
    assert cfg.audit_dir == Path("/tmp/a")
