"""Sigma's Linux field taxonomy, mapped onto coi-watch events.

Strategy: a Sigma rule names a *log source* (``category``/``product``/``service``) and
*fields* (``Image``, ``DestinationIp``). Each supported log source maps onto one or more
coi-watch event kinds through an :class:`Exposure`: the Sigma fields that kind *observes*
(a getter per field, shared by all log sources), the fields that are *constant* for it
(``Initiated`` is always ``'true'``: NFLOG only sees connections the container opens), the
fields of the taxonomy coi-watch *cannot observe* there (with the reason), and for file
events the fanotify operations that count. The compiler (:mod:`coi_watch.rules.compile`)
folds constant and unobservable fields away at load time, so a rule that could only match
on something coi-watch never sees is reported (E003/E004/E007) instead of loading dead, and
a rule whose fields span two kinds (``DestinationHostname`` lives on DNS queries,
``DestinationPort`` on connections) is reported rather than silently never matching.

At run time an :class:`EventView` wraps one event and caches every field it computes (and
its lower-cased form, for Sigma's case-insensitive matching): all rules evaluated on that
event share one ``cmdline`` join and one ``Image`` resolution.

Field values are ``str``, ``int`` or ``None``; ``None`` means "absent" (empty strings from
a partial /proc read are absent too), so ``field: null`` matches them.

The mapping
===========

====================================== =============== ============================================
Sigma log source / field               event kind      value
====================================== =============== ============================================
**process_creation**                   ``proc.exec``
``Image``                                              ``exe``; for a multi-call binary (busybox,
                                                       toybox, uutils coreutils) the *applet*:
                                                       ``argv[0]`` when it is an absolute path,
                                                       else ``/bin/<basename(argv[0])>``
                                                       (``argv[1]`` when the binary was run by its
                                                       own name, as in ``busybox nc``). Busybox
                                                       dispatches on argv[0], so this is the
                                                       program that really runs; rules test
                                                       ``Image|endswith: '/nc'``. A `` (deleted)``
                                                       suffix is dropped. With ``exe`` unknown
                                                       (a partial event), an absolute
                                                       ``argv[0]``, or ``/bin/<argv[0]>`` for a
                                                       bare name (found through PATH).
``CommandLine``                                        ``argv`` joined by spaces
``ParentImage``                                        nearest ancestor's exe (applet rule as
                                                       above, from its command line)
``ParentCommandLine``                                  nearest ancestor's cmdline
``User``                                               ``root`` for container uid 0, else the
                                                       container uid as a string (host uid minus
                                                       :data:`CONTAINER_UID_BASE` in an
                                                       unprivileged container; names need the
                                                       container's /etc/passwd, which a detector
                                                       may not read)
``CurrentDirectory``                                   ``cwd``
``ProcessId``, ``ParentProcessId``                     ``pid``, ``ppid``
``Comm``, ``Exe``, ``Uid``                             coi-watch extensions: comm, the real
                                                       /proc/PID/exe, container-relative uid (int)
**network_connection**                 ``net.connect``
``DestinationIp``, ``DestinationPort``                 ``dst``, ``dport``
``SourceIp``, ``SourcePort``                           ``src``, ``sport``
``Protocol``                                           ``tcp``, ``udp``, ``icmp`` ...
``DestinationIsIpv6``                                  ``'true'``/``'false'`` (and
                                                       ``SourceIsIpv6``)
``Initiated``                                          always ``'true'`` (constant)
*unobserved*                                           ``Image``, ``User``, ``ProcessId``,
                                                       ``DestinationHostname``... NFLOG packets
                                                       carry neither the process nor the host name
**network_connection**                 ``net.dns``     a connection to a name starts with its
                                                       lookup:
``DestinationHostname``                                ``qname``; ``Initiated`` always ``'true'``
**dns**, **dns_query**                 ``net.dns``
``query``, ``QueryName``                               ``qname`` (lower-case, no trailing dot)
``record_type``                                        ``A``, ``AAAA``, ``TXT`` ... (``TYPE<n>``)
``SourceIp``, ``DestinationIp``                        ``src``, ``dst``
``src_ip``, ``dst_ip``                                 the same (Zeek names)
**file_event**                         ``file.access`` only ``close_write`` (a file written)
``TargetFilename``                                     ``path`` (the container's view)
``ProcessId``, ``Comm``                                ``pid``, ``comm``
*unobserved*                                           ``Image``, ``User``: fanotify reports a pid,
                                                       not the executable
**file_access**                        ``file.access`` every operation; ``Operation`` = ``op``
**auditd** (service)                   ``proc.exec``   each exec as one ``EXECVE`` record:
``type``                                               always ``EXECVE`` (constant)
``argc``, ``a0`` ... ``aN``                            ``len(argv)``, ``argv[N]``
*unobserved*                                           ``syscall``, ``exe``, ``key``, ``name``,
                                                       ...: SYSCALL, PATH and other records have no
                                                       event
every log source                       every kind      ``Container``: the Incus instance name
====================================== =============== ============================================

Everything else (``syslog``, ``auth``, ``sshd``, ``sudo``, product ``windows``/``macos``,
categories such as ``file_delete`` or ``registry_*``) is unsupported and reported as E004.
Keyword detections (a bare list of strings) search the kind's ``keyword_fields``, anywhere in
the text (``value`` means ``*value*``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from coi_watch.errors import RuleError
from coi_watch.events import Event

__all__ = (
    "CONTAINER_UID_BASE",
    "MULTICALL_BINARIES",
    "EventView",
    "Exposure",
    "LogSourceSpec",
    "UnsupportedLogsourceError",
    "field_value",
    "fields_for_kind",
    "kinds_for_logsource",
    "logsource_spec",
    "resolve_image",
)

CONTAINER_UID_BASE = 1_000_000
"""Host uid of container root in an unprivileged Incus container (the default idmap)."""

MULTICALL_BINARIES = frozenset({
    "busybox", "busybox.static", "busybox.nosuid", "busybox.suid", "toybox", "coreutils",
})
"""Executables that pick the program to run from ``argv[0]``."""

Getter = Callable[[Any], Any]


class UnsupportedLogsourceError(RuleError):
    """A log source coi-watch has no events for (syslog, auth, windows, ...)."""

    code = "E004"


# --------------------------------------------------------------------------- getters


def resolve_image(exe: str, argv0: str, argv1: str = "") -> str | None:
    """The Sigma ``Image`` of a process: ``exe``, or the applet of a multi-call binary."""
    if exe.endswith(" (deleted)"):
        exe = exe[: -len(" (deleted)")]
    if exe and exe.rsplit("/", 1)[-1] not in MULTICALL_BINARIES:
        return exe
    if not exe and not argv0:
        return None
    applet = argv0.rsplit("/", 1)[-1]
    if not exe:
        # exe unknown (the process exited before /proc was read, or an ``incus exec``
        # command from Incus's record): argv[0] is all we have. A bare name was found
        # through PATH, so it gets the applet convention, /bin/<name>.
        if argv0.startswith("/"):
            return argv0
        return f"/bin/{argv0}" if "/" not in argv0 else None
    if not applet or applet in MULTICALL_BINARIES:  # "busybox nc ..."
        applet = argv1.rsplit("/", 1)[-1]
        return f"/bin/{applet}" if applet else exe
    return argv0 if argv0.startswith("/") else f"/bin/{applet}"


def _str(v: str) -> str | None:
    return v or None


def _image(ev: Any) -> str | None:
    argv = ev.argv
    return resolve_image(ev.exe, argv[0] if argv else "", argv[1] if len(argv) > 1 else "")


def _parent_image(ev: Any) -> str | None:
    if not ev.ancestry:
        return None
    parent = ev.ancestry[0]
    words = parent.cmdline.split(" ", 2)
    return resolve_image(parent.exe, words[0], words[1] if len(words) > 1 else "")


def _container_uid(uid: int) -> int | None:
    if uid < 0:
        return None
    return uid - CONTAINER_UID_BASE if uid >= CONTAINER_UID_BASE else uid


def _user(ev: Any) -> str | None:
    cuid = _container_uid(ev.uid)
    if cuid is None:
        return None
    return "root" if cuid == 0 else str(cuid)


_QTYPES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 10: "NULL", 12: "PTR", 13: "HINFO", 15: "MX",
    16: "TXT", 28: "AAAA", 33: "SRV", 35: "NAPTR", 43: "DS", 48: "DNSKEY", 64: "SVCB",
    65: "HTTPS", 99: "SPF", 252: "AXFR", 255: "ANY", 257: "CAA",
}


def _qtype(ev: Any) -> str:
    return _QTYPES.get(ev.qtype, f"TYPE{ev.qtype}")


def _bool(v: bool) -> str:
    return "true" if v else "false"


_PROC_EXEC: dict[str, Getter] = {
    "Image": _image,
    "CommandLine": lambda ev: _str(ev.cmdline),
    "ParentImage": _parent_image,
    "ParentCommandLine": lambda ev: _str(ev.ancestry[0].cmdline) if ev.ancestry else None,
    "User": _user,
    "CurrentDirectory": lambda ev: _str(ev.cwd),
    "ProcessId": lambda ev: ev.pid,
    "ParentProcessId": lambda ev: ev.ppid or None,
    "Comm": lambda ev: _str(ev.comm),
    "Exe": lambda ev: _str(ev.exe),
    "Uid": lambda ev: _container_uid(ev.uid),
    # auditd EXECVE record
    "type": lambda ev: "EXECVE",
    "argc": lambda ev: len(ev.argv),
}

_NET_CONNECT: dict[str, Getter] = {
    "DestinationIp": lambda ev: _str(ev.dst),
    "DestinationPort": lambda ev: ev.dport,
    "SourceIp": lambda ev: _str(ev.src),
    "SourcePort": lambda ev: ev.sport,
    "Protocol": lambda ev: _str(ev.proto),
    "DestinationIsIpv6": lambda ev: _bool(ev.family == 6),
    "SourceIsIpv6": lambda ev: _bool(ev.family == 6),
    "Initiated": lambda ev: "true",
}

_NET_DNS: dict[str, Getter] = {
    "DestinationHostname": lambda ev: _str(ev.qname),
    "Initiated": lambda ev: "true",
    "query": lambda ev: _str(ev.qname),
    "QueryName": lambda ev: _str(ev.qname),
    "record_type": _qtype,
    "SourceIp": lambda ev: _str(ev.src),
    "DestinationIp": lambda ev: _str(ev.dst),
    "src_ip": lambda ev: _str(ev.src),
    "dst_ip": lambda ev: _str(ev.dst),
}

_FILE_ACCESS: dict[str, Getter] = {
    "TargetFilename": lambda ev: _str(ev.path),
    "ProcessId": lambda ev: ev.pid,
    "Comm": lambda ev: _str(ev.comm),
    "Operation": lambda ev: ev.op,
}

_COMMON: dict[str, Getter] = {"Container": lambda ev: _str(ev.container)}

_KIND_GETTERS: Mapping[str, Mapping[str, Getter]] = MappingProxyType({
    kind: MappingProxyType({**table, **_COMMON})
    for kind, table in {
        "proc.exec": _PROC_EXEC,
        "net.connect": _NET_CONNECT,
        "net.dns": _NET_DNS,
        "file.access": _FILE_ACCESS,
        "proc.fork": {}, "proc.exit": {}, "proc.comm": {}, "proc.uid": {},
        "net.flow": {}, "tamper": {},
    }.items()
})

_ARGV_FIELD = re.compile(r"a(0|[1-9][0-9]{0,3})")


def _dynamic_getter(kind: str, name: str) -> Getter | None:
    """Fields with a number in the name: auditd ``a0`` ... ``aN`` (argv) on proc.exec."""
    if kind == "proc.exec":
        m = _ARGV_FIELD.fullmatch(name)
        if m:
            i = int(m.group(1))
            return lambda ev: ev.argv[i] if i < len(ev.argv) else None
    return None


def _getter(kind: str, name: str) -> Getter | None:
    table = _KIND_GETTERS.get(kind)
    if table is None:
        return None
    return table.get(name) or _dynamic_getter(kind, name)


def field_value(ev: Event, sigma_field: str) -> Any:
    """The value of Sigma field ``sigma_field`` on ``ev``; ``None`` when it has none."""
    getter = _getter(ev.kind, sigma_field)
    return None if getter is None else getter(ev)


def fields_for_kind(kind: str) -> frozenset[str]:
    """Every Sigma field name some log source reads from events of ``kind`` (``a0`` ...
    ``aN`` of auditd on proc.exec are not listed one by one)."""
    return frozenset(_KIND_GETTERS.get(kind, {}))


# --------------------------------------------------------------------------- the view


def _as_text(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return _bool(v)
    return str(v)


class EventView:
    """One event, with every Sigma field computed at most once (raw and lower-cased)."""

    __slots__ = ("_getters", "_lower", "_raw", "ev")

    def __init__(self, ev: Event) -> None:
        self.ev = ev
        self._getters = _KIND_GETTERS.get(ev.kind, _COMMON)
        self._raw: dict[str, Any] = {}
        self._lower: dict[str, str | None] = {}

    def raw(self, name: str) -> Any:
        """The field's value (``str``, ``int`` or ``None``)."""
        try:
            return self._raw[name]
        except KeyError:
            getter = self._getters.get(name) or _dynamic_getter(self.ev.kind, name)
            value = None if getter is None else getter(self.ev)
            self._raw[name] = value
            return value

    def text(self, name: str) -> str | None:
        """The field's value as text (numbers in decimal), or ``None``."""
        return _as_text(self.raw(name))

    def lower(self, name: str) -> str | None:
        """The field's text, lower-cased (Sigma compares case-insensitively by default)."""
        try:
            return self._lower[name]
        except KeyError:
            text = _as_text(self.raw(name))
            value = None if text is None else text.lower()
            self._lower[name] = value
            return value


# --------------------------------------------------------------------------- log sources


@dataclass(frozen=True, slots=True)
class Exposure:
    """What one log source sees of one event kind."""

    kind: str
    observed: frozenset[str]
    """Fields read from the event (getters in the kind's table)."""
    constants: Mapping[str, tuple[Any, str]] = field(default_factory=dict)
    """Fields with one value for every event of this kind: name -> (value, why)."""
    unobserved: Mapping[str, str] = field(default_factory=dict)
    """Fields of the taxonomy coi-watch cannot see here: name -> why."""
    ops: frozenset[str] | None = None
    """file.access operations that belong to the log source (None: all)."""
    keyword_fields: tuple[str, ...] = ()
    """Fields a keyword detection (a bare value list) searches."""
    dynamic_argv: bool = False
    """Whether ``a0`` ... ``aN`` are fields (auditd EXECVE)."""

    def classify(self, name: str) -> str:
        """``observed``, ``constant``, ``unobserved`` or ``unknown``."""
        if name in self.constants:
            return "constant"
        if name in self.observed or name == "Container":
            return "observed"
        if self.dynamic_argv and _ARGV_FIELD.fullmatch(name):
            return "observed"
        if name in self.unobserved:
            return "unobserved"
        return "unknown"

    def known(self) -> list[str]:
        """Every field name this exposure knows, for "did you mean" hints."""
        return sorted({*self.observed, *self.constants, *self.unobserved, "Container"})

    def values(self, ev: Event) -> dict[str, Any]:
        """The observed and constant fields of ``ev`` by Sigma name (None values left out)."""
        out: dict[str, Any] = {}
        getters = _KIND_GETTERS.get(ev.kind, _COMMON)
        for name in sorted({*self.observed, *self.constants, "Container"}):
            getter = getters.get(name)
            if getter is not None and (v := getter(ev)) is not None:
                out[name] = v
        if self.dynamic_argv and ev.kind == "proc.exec":
            for i, arg in enumerate(getattr(ev, "argv", ())):
                out[f"a{i}"] = arg
        return out


@dataclass(frozen=True, slots=True)
class LogSourceSpec:
    """A supported Sigma log source and the event kinds it maps onto."""

    name: str
    exposures: tuple[Exposure, ...]

    @property
    def kinds(self) -> frozenset[str]:
        """The event kinds of the log source."""
        return frozenset(e.kind for e in self.exposures)

    def unknown_field_message(self, name: str) -> str:
        """A "no such field" message with the closest known names."""
        known = sorted({n for e in self.exposures for n in e.known()})
        by_case = [k for k in known if k.lower() == name.lower()]
        close = by_case or difflib.get_close_matches(name, known, n=3, cutoff=0.7)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        return (f"field {name!r} does not exist for log source {self.name}{hint}; "
                f"it has: {', '.join(k for k in known if k not in self._hidden())}")

    def _hidden(self) -> frozenset[str]:
        return frozenset(n for e in self.exposures for n in e.unobserved)


_NO_PROCESS = "NFLOG packets carry no process"
_NO_NAME = "a connection carries an address; the host name is on the DNS query (net.dns)"
_NOT_ON_DNS = "a DNS query carries the name; the connection's addresses are on net.connect"
_NO_EXE_FILE = "fanotify reports the pid and comm of a file's user, not its executable"
_SYSMON_ONLY = "Sysmon metadata that coi-watch does not observe"
_NO_AUDIT = ("coi-watch sees each exec as one auditd EXECVE record; SYSCALL, PATH and other "
             "auditd records have no coi-watch event")


def _unobserved(names: str, why: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), why)


_PROCESS_CREATION = LogSourceSpec("process_creation", (Exposure(
    "proc.exec",
    observed=frozenset(["Image", "CommandLine", "ParentImage", "ParentCommandLine", "User",
                        "CurrentDirectory", "ProcessId", "ParentProcessId", "Comm", "Exe",
                        "Uid"]),
    unobserved=_unobserved(
        "UtcTime ProcessGuid ParentProcessGuid FileVersion Description Product Company "
        "OriginalFileName LogonGuid LogonId TerminalSessionId IntegrityLevel Hashes "
        "ParentUser", _SYSMON_ONLY),
    keyword_fields=("CommandLine", "Image", "ParentCommandLine", "ParentImage"),
),))

_CONNECT_TAXONOMY = ("DestinationIp DestinationPort SourceIp SourcePort Protocol "
                     "DestinationIsIpv6 SourceIsIpv6")

_NETWORK_CONNECTION = LogSourceSpec("network_connection", (
    Exposure(
        "net.connect",
        observed=frozenset(_CONNECT_TAXONOMY.split()),
        constants={"Initiated": ("true", "NFLOG sees connections the container opens")},
        unobserved={
            **_unobserved("Image User ProcessId ProcessGuid CommandLine ParentImage "
                          "ParentCommandLine UtcTime", _NO_PROCESS),
            **_unobserved("DestinationHostname SourceHostname DestinationPortName "
                          "SourcePortName", _NO_NAME),
        },
        keyword_fields=("DestinationIp",),
    ),
    Exposure(
        "net.dns",
        observed=frozenset({"DestinationHostname"}),
        constants={"Initiated": ("true", "the container sends the query")},
        unobserved={
            **_unobserved("Image User ProcessId ProcessGuid CommandLine ParentImage "
                          "ParentCommandLine UtcTime", _NO_PROCESS),
            **_unobserved(_CONNECT_TAXONOMY + " SourceHostname DestinationPortName "
                          "SourcePortName", _NOT_ON_DNS),
        },
        keyword_fields=("DestinationHostname",),
    ),
))

_DNS_EXPOSURE = Exposure(
    "net.dns",
    observed=frozenset(["query", "QueryName", "record_type", "SourceIp", "DestinationIp",
                        "src_ip", "dst_ip"]),
    unobserved=_unobserved("answer answers QueryResults QueryStatus response_code rcode "
                           "Image ProcessId User",
                           "coi-watch sees DNS queries, not answers or the process"),
    keyword_fields=("query",),
)

_FILE_FIELDS = frozenset(["TargetFilename", "ProcessId", "Comm", "Operation"])
_FILE_UNOBSERVED = _unobserved("Image User ProcessGuid CreationUtcTime UtcTime", _NO_EXE_FILE)

_FILE_EVENT = LogSourceSpec("file_event", (Exposure(
    "file.access", observed=_FILE_FIELDS, unobserved=_FILE_UNOBSERVED,
    ops=frozenset({"close_write"}), keyword_fields=("TargetFilename",)),))

_FILE_ACCESS_SPEC = LogSourceSpec("file_access", (Exposure(
    "file.access", observed=_FILE_FIELDS, unobserved=_FILE_UNOBSERVED,
    keyword_fields=("TargetFilename",)),))

_AUDITD = LogSourceSpec("auditd", (Exposure(
    "proc.exec",
    observed=frozenset({"argc"}),
    constants={"type": ("EXECVE", _NO_AUDIT)},
    unobserved=_unobserved(
        "syscall exe comm key name nametype uid euid suid fsuid auid gid egid sgid fsgid "
        "success exit proctitle cwd pid ppid tty ses mode ouid ogid inode dev item "
        "cap_fp cap_fi cap_fe cap_fver SYSCALL", _NO_AUDIT),
    keyword_fields=("CommandLine",),
    dynamic_argv=True,
),))

_CATEGORIES: Mapping[str, LogSourceSpec] = MappingProxyType({
    "process_creation": _PROCESS_CREATION,
    "network_connection": _NETWORK_CONNECTION,
    "dns": LogSourceSpec("dns", (_DNS_EXPOSURE,)),
    "dns_query": LogSourceSpec("dns_query", (_DNS_EXPOSURE,)),
    "file_event": _FILE_EVENT,
    "file_access": _FILE_ACCESS_SPEC,
})

_WHY_NOT: Mapping[str, str] = MappingProxyType({
    "file_delete": "fanotify reports opens, writes and closes, not deletions",
    "file_rename": "fanotify reports opens, writes and closes, not renames",
    "file_change": "use file_event (a file written) instead",
    "process_termination": "no Sigma fields for exits; coi-watch's own detectors use them",
    "firewall": "use network_connection (connections leaving the container)",
})


def logsource_spec(
    category: str | None, product: str | None, service: str | None
) -> LogSourceSpec:
    """The supported log source for a rule's ``logsource``.

    Raises:
        UnsupportedLogsourceError: coi-watch has no events for it (code E004).
    """
    label = "/".join(f"{k}:{v}" for k, v in
                     (("category", category), ("product", product), ("service", service)) if v)
    if product not in (None, "linux"):
        raise UnsupportedLogsourceError(
            f"unsupported log source {label}: coi-watch watches Linux containers")
    if service is not None:
        if service == "auditd" and category is None:
            return _AUDITD
        raise UnsupportedLogsourceError(
            f"unsupported log source {label}: coi-watch observes kernel events (exec, "
            "network, DNS, files), not the text of log files or daemons; supported: "
            "service auditd (EXECVE) and categories " + ", ".join(_CATEGORIES))
    if category is None:
        raise UnsupportedLogsourceError(
            f"unsupported log source {label}: a rule over a whole product needs log text; "
            "name a category (" + ", ".join(_CATEGORIES) + ")")
    spec = _CATEGORIES.get(category)
    if spec is None:
        why = _WHY_NOT.get(category, "no coi-watch event carries it")
        raise UnsupportedLogsourceError(
            f"unsupported log source {label}: {why}; supported categories: "
            + ", ".join(_CATEGORIES))
    return spec


def kinds_for_logsource(
    category: str | None, product: str | None, service: str | None
) -> frozenset[str]:
    """The event kinds a log source maps onto (empty when unsupported)."""
    try:
        return logsource_spec(category, product, service).kinds
    except UnsupportedLogsourceError:
        return frozenset()
