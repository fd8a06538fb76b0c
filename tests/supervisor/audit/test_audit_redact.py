"""Redactor: what the defaults redact and leave alone, argv and key rules, configurable
lists, and linear time on hostile input."""

from __future__ import annotations

import time
from dataclasses import fields
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coi_watch.audit import DEFAULT_PATTERNS, REDACTED, Pattern, Redactor
from coi_watch.audit.redact import is_secret_flag, is_secret_key, is_secret_name
from coi_watch.errors import ConfigError
from coi_watch.events import EVENT_TYPES
from coi_watch.verdicts import ActionRecord, Verdict

R = Redactor.default()
GHP = "ghp_" + "A1b2" * 9

POSITIVE = [
    # (input, expected output)
    ("AKIAIOSFODNN7EXAMPLE", "AKIA[REDACTED]"),
    ("key id ASIAY34FZKBOKMUTVV7A here", "key id ASIA[REDACTED] here"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
     "aws_secret_access_key = [REDACTED]"),
    ('{"SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}',
     '{"SecretAccessKey": "[REDACTED]"}'),
    ("Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc", "Bearer [REDACTED]"),
    ("curl -H 'Authorization: token abc123' https://api", "curl -H 'Authorization: [REDACTED]' "
     "https://api"),
    ("Authorization: Basic dXNlcjpwYXNz", "Authorization: [REDACTED]"),
    ("Proxy-Authorization: Basic dXNlcjpwYXNz", "Proxy-Authorization: [REDACTED]"),
    ("mysql --password=hunter2 db", "mysql --password=[REDACTED] db"),
    ("mysql --password hunter2 db", "mysql --password [REDACTED] db"),
    ("cli --token=abc --api-key=def", "cli --token=[REDACTED] --api-key=[REDACTED]"),
    ("cli --api-key 'a b c' next", "cli --api-key '[REDACTED]' next"),
    ("openssl enc -pass pass:s3cret", "openssl enc -pass [REDACTED]"),
    (f"GITHUB_TOKEN={GHP}", "GITHUB_TOKEN=[REDACTED]"),
    ("DB_PASSWORD=x", "DB_PASSWORD=[REDACTED]"),
    ('DB_PASSWORD="two words"', 'DB_PASSWORD="[REDACTED]"'),
    ("PGPASSWORD=pg MYSQL_PWD=my", "PGPASSWORD=[REDACTED] MYSQL_PWD=[REDACTED]"),
    ("SSH_KEY=abc apiKey=def client.secret=ghi", "SSH_KEY=[REDACTED] apiKey=[REDACTED] "
     "client.secret=[REDACTED]"),
    ("my_credentials: xyz", "my_credentials: [REDACTED]"),
    ("https://h/p?a=1&token=abc&b=2", "https://h/p?a=1&token=[REDACTED]&b=2"),
    ("git clone https://user:pa55@github.com/x", "git clone https://user:[REDACTED]@github.com/x"),
    (f"echo {GHP}", "echo ghp_[REDACTED]"),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
     "github_pat_[REDACTED]"),
    ("glpat-abcdefghij0123456789", "glpat-[REDACTED]"),
    ("xoxb-1234567890-abcdef", "xoxb-[REDACTED]"),
    ("sk-ant-api03-" + "x" * 40, "sk-[REDACTED]"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK==\n-----END RSA PRIVATE KEY-----\nafter",
     "-----BEGIN RSA PRIVATE KEY-----[REDACTED]-----END RSA PRIVATE KEY-----\nafter"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1r", "-----BEGIN OPENSSH PRIVATE KEY-----"
     "[REDACTED]"),
    ("-----BEGIN PRIVATE KEY-----abc-def-----END PRIVATE KEY-----",
     "-----BEGIN PRIVATE KEY-----[REDACTED]-----END PRIVATE KEY-----"),
]

NEGATIVE = [
    "monkey=banana",
    "keyboard=us KEYMAP=de hotkey=F1",
    "bypass=1 author=bob",
    "PWD=/home/user OLDPWD=/tmp",
    "ls --passwordless",
    "docker login --password-stdin",
    "tool --token-file /run/secrets/t",
    "ssh -p 2222 host",
    "https://github.com:443/owner/repo",
    "AKIAIOSFODNN7EXAMPLEX",  # too long to be an access key id
    "disk-0123456789abcdef0123456789abcdef01",  # 'sk-' inside a word
    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
    "Bearer",
    "PASSWORD=",
    "/etc/ssh/ssh_host_ed25519_key",
    "",
]


@pytest.mark.parametrize(("text", "expected"), POSITIVE)
def test_default_patterns_redact(text: str, expected: str) -> None:
    assert R.redact_text(text) == expected
    assert R.redact_text(expected) == expected  # idempotent


@pytest.mark.parametrize("text", NEGATIVE)
def test_default_patterns_leave_alone(text: str) -> None:
    assert R.redact_text(text) == text


def test_name_judgements() -> None:
    assert all(map(is_secret_name, ["GITHUB_TOKEN", "DB_PASSWORD", "api-key", "apiKey", "KEY",
                                    "MYSQL_PWD", "BASIC_AUTH", "--pass", "privkey"]))
    assert not any(map(is_secret_name, ["monkey", "PWD", "OLDPWD", "keyboard", "author",
                                        "path", "oauth"]))
    assert all(map(is_secret_flag, ["--password", "--api-key", "--auth-token", "-passin",
                                    "--client-secret", "--credentials", "-pw"]))
    assert not any(map(is_secret_flag, ["--passwordless", "--password-stdin", "--key", "-p",
                                        "--token-file", "--keys"]))


def test_no_field_of_our_own_records_counts_as_a_secret_key() -> None:
    names = {f.name for cls in (*EVENT_TYPES.values(), Verdict, ActionRecord)
             for f in fields(cls)}
    assert "dedup_key" in names
    assert not [n for n in names if is_secret_key(n)]


def test_argv_values_after_secret_flags_are_redacted() -> None:
    argv = ("mysql", "--password", "hunter2", "--user", "bob", "--passwordless", "keep",
            "-H", "Authorization: Bearer x", "--token=abc", "--api-key", "--weird")
    assert R.redact(argv) == ("mysql", "--password", REDACTED, "--user", "bob",
                              "--passwordless", "keep", "-H", "Authorization: [REDACTED]",
                              "--token=[REDACTED]", "--api-key", REDACTED)
    assert R.redact(["--password"]) == ["--password"]


def test_nested_structures_and_secret_keys() -> None:
    data: dict[str, Any] = {
        "argv": ["env", "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE"],
        "evidence": {"env": {"DB_PASSWORD": "x", "HOME": "/root"}, "client_secret": "s",
                     "count": 3, "dedup_key": "rs:c1", "token": None},
        "n": 1.5,
    }
    assert R.redact(data) == {
        "argv": ["env", "AWS_ACCESS_KEY_ID=[REDACTED]"],
        "evidence": {"env": {"DB_PASSWORD": REDACTED, "HOME": "/root"},
                     "client_secret": REDACTED, "count": 3, "dedup_key": "rs:c1",
                     "token": None},
        "n": 1.5,
    }


def test_redact_json_skips_payloads_without_hints() -> None:
    clean = orjson.dumps({"kind": "proc.exit", "pid": 4, "code": 0})
    assert not R.may_match(clean)
    assert R.redact_json(clean) is clean
    dirty = orjson.dumps({"argv": ["x", "--token", "t"]})
    assert R.may_match(dirty)
    assert orjson.loads(R.redact_json(dirty)) == {"argv": ["x", "--token", REDACTED]}
    harmless = orjson.dumps({"path": "/etc/ssh/ssh_host_ed25519_key"})  # hinted, unchanged
    assert R.redact_json(harmless) is harmless


def test_configurable_lists() -> None:
    custom = Redactor.default().extended([r"internal-(?P<secret>\d{6})", r"hunter\d"])
    assert custom.redact_text("id internal-123456 pw hunter2") == \
        "id internal-[REDACTED] pw [REDACTED]"
    assert custom.redact_text("GITHUB_TOKEN=x") == "GITHUB_TOKEN=[REDACTED]"  # defaults kept
    assert custom.may_match(b'{"a":"nothing"}')  # a pattern without hints: always walk
    only = Redactor(patterns=[Pattern.regex("foo", hints=["foo"])], flag_values=False,
                    secret_keys=False)
    assert only.redact_text("foo GITHUB_TOKEN=x") == "[REDACTED] GITHUB_TOKEN=x"
    assert not only.may_match(b'{"a":"GITHUB_TOKEN=x"}')
    named = Redactor(patterns=[p for p in DEFAULT_PATTERNS if p.name == "bearer-token"])
    assert named.redact_text("Bearer x DB_PASSWORD=y") == "Bearer [REDACTED] DB_PASSWORD=y"
    off = Redactor.disabled()
    assert not off.active and off.redact(["--password", "x"]) == ["--password", "x"]
    with pytest.raises(ConfigError, match="not a valid RE2"):
        Redactor.default().extended(["(unclosed"])
    with pytest.raises(ConfigError):
        Redactor(patterns=[r"(?<=lookbehind)x"])  # RE2 refuses what could be slow


HOSTILE_UNITS = [
    "a=", "token", "token=", "key=x ", "PWD=", "a.", "--password ", "--a ", "Bearer ",
    "-----BEGIN RSA PRIVATE KEY-----", "-----BEGIN PRIVATE KEY-----x-", "AKIA", "ghp_",
    "github_pat_", "sk-", "a://", "a://:", "x://a:b", "authorization: ", "password=\"", "'",
    "aKey=", "a: ", "x" * 31 + "=",
]


@pytest.mark.parametrize("unit", HOSTILE_UNITS)
def test_a_hostile_mebibyte_redacts_in_linear_time(unit: str) -> None:
    text = (unit * (2**20 // len(unit) + 1))[: 2**20]
    start = time.perf_counter()
    R.redact_text(text)
    R.redact([text, text[:1000]])
    # Linear time: ~0.1 s here; a super-linear pattern would take minutes on 1 MiB. The
    # bound is loose because CI machines are noisy (figures live in bench/).
    assert time.perf_counter() - start < 5.0


def test_a_user_pattern_cannot_backtrack() -> None:
    evil = Redactor(patterns=[r"(a+)+$"], flag_values=False, secret_keys=False)
    start = time.perf_counter()
    evil.redact_text("a" * 100_000 + "!")
    # Linear time: ~0.1 s here; a super-linear pattern would take minutes on 1 MiB. The
    # bound is loose because CI machines are noisy (figures live in bench/).
    assert time.perf_counter() - start < 5.0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _shape(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _shape(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_shape(v) for v in obj]
    return str if isinstance(obj, str) else obj


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_redaction_keeps_the_shape_of_any_json(value: Any) -> None:
    out = R.redact(value)
    assert _shape(out) == _shape(value)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("aK=:-_ \"'/@.PWDtokenpass[]\n")), max_size=80))
def test_redaction_is_idempotent_on_dense_inputs(text: str) -> None:
    once = R.redact_text(text)
    assert R.redact_text(once) == once


def test_a_file_and_line_is_not_a_secret_assignment() -> None:
    # Verdict evidence names a rule by file:line; "credential" in the file name is no secret.
    loc = "/etc/coi/rules/coi-credential-access.yml:17"
    assert R.redact_text(loc) == loc
    assert R.redact({"rule": "coi-credential-access.yml:17"}) == {
        "rule": "coi-credential-access.yml:17"}
    assert R.redact_text("credential: hunter2") == "credential: [REDACTED]"
