"""Every exception coi-watch raises on purpose, in one hierarchy.

Strategy: callers catch the narrowest class that tells them what to do next. Malformed data
from the kernel or a container is a :class:`WireError` (the "remote" fault, as in h11), never
a crash of ours; a broken rule file is a :class:`RuleError` that carries its location; an
unreachable or refusing Incus daemon is an :class:`IncusError`. Anything else escaping is a
bug in coi-watch.

The hierarchy::

    CoiWatchError
    ├── ConfigError                  invalid configuration value or file (exit non-zero)
    ├── RegistryError                unknown / duplicate plugin name, bad entry point
    ├── WireError                    malformed netlink / packet / DNS bytes (parsers' only error)
    ├── AuditError                   audit directory or file unusable (permissions, full disk)
    │   └── ChainError               hash chain broken: carries ``line`` and ``reason``
    ├── RuleError                    a rule that cannot be loaded; carries ``source``
    │   ├── RuleSyntaxError          YAML or condition syntax
    │   ├── UnknownModifierError     a ``field|modifier`` coi-watch does not implement
    │   └── UnknownFieldError        a field the mapped log source does not provide
    ├── SourceError                  an event source cannot start (missing capability, feature)
    └── ResponderError               a response could not be carried out
        └── IncusError               Incus API refused or failed (``status``, ``operation``)
            └── IncusUnavailable     the socket is missing, refused or not permitted
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = (
    "AuditError",
    "ChainError",
    "CoiWatchError",
    "ConfigError",
    "IncusError",
    "IncusUnavailable",
    "RegistryError",
    "ResponderError",
    "RuleError",
    "RuleLocation",
    "RuleSyntaxError",
    "SourceError",
    "UnknownFieldError",
    "UnknownModifierError",
    "WireError",
)


class CoiWatchError(Exception):
    """Root of every error coi-watch raises deliberately."""


class ConfigError(CoiWatchError):
    """A configuration file or value is invalid."""


class RegistryError(CoiWatchError):
    """A plugin name is unknown or registered twice, or its entry point does not load."""


class WireError(CoiWatchError):
    """Bytes from the kernel (netlink, packets, DNS) that do not parse.

    The only exception a wire parser raises: a fuzzer feeding random bytes sees either events
    or this, never ``struct.error``, ``IndexError`` or ``UnicodeDecodeError``.
    """


class AuditError(CoiWatchError):
    """The audit log cannot be written or read (permissions, full disk, bad path)."""


class ChainError(AuditError):
    """An audit file's hash chain is broken at ``line`` (1-based)."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RuleLocation:
    """Where in a rule file something is: ``path:line:col`` (1-based; 0 = unknown)."""

    path: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.path}:{self.line}" + (f":{self.col}" if self.col else "")
        return self.path


class RuleError(CoiWatchError):
    """A rule that cannot be loaded or compiled; ``source`` says where, ``code`` what."""

    code = "E000"

    def __init__(self, message: str, source: RuleLocation | None = None) -> None:
        super().__init__(f"{source}: {message}" if source else message)
        self.message = message
        self.source = source


class RuleSyntaxError(RuleError):
    """Broken YAML, unknown keys, or a condition that does not parse."""

    code = "E001"


class UnknownModifierError(RuleError):
    """A value modifier coi-watch does not implement."""

    code = "E002"


class UnknownFieldError(RuleError):
    """A field that no coi-watch event of the rule's log source carries."""

    code = "E003"


class SourceError(CoiWatchError):
    """An event source cannot start: missing privilege, kernel feature or namespace."""


class ResponderError(CoiWatchError):
    """A response (pause, kill, quarantine) could not be carried out."""


class IncusError(ResponderError):
    """The Incus REST API answered with an error.

    ``status`` is the HTTP status (0 when none), ``operation`` the API path or operation
    that failed, and the message carries Incus's own error text.
    """

    def __init__(self, message: str, *, status: int = 0, operation: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.operation = operation


class IncusUnavailable(IncusError):
    """The Incus unix socket is missing, refuses connections, or we lack permission."""
