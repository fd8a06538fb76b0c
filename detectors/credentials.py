"""Credential and environment scanning: many secrets touched at once, or another process's
environment read.

Strategy: one credential read is usually honest (``git`` reads ``~/.git-credentials``, a
dotenv library reads the workspace's ``.env``, ``ssh -i`` reads its key), so the
single-event patterns ship as Sigma rules at the level their strength deserves
(``rules/packs/coi-credential-access.yml``: a private key or the shadow file read by a
stranger, a search for key material, an environment dump; ``coi-files.yml``: cloud
credential files opened, monitor mode). What no single event shows is a **sweep**: an
agent turned against its owner reads many different secrets in a short time. This
detector keeps, per container, the distinct **credential sources** touched within
``window_s`` and reports ``scan_level`` (high) when there are ``sources_threshold`` of them:

- credential files (:func:`classify_path`): SSH private keys (each key file), AWS
  (``~/.aws/credentials``, SSO and CLI caches), gcloud (``~/.config/gcloud/*credentials*``,
  ``access_tokens.db``), Azure token caches (``~/.azure``), ``~/.kube/config``,
  ``~/.docker/config.json``, ``~/.netrc``, ``~/.git-credentials``, ``~/.npmrc``,
  ``~/.pypirc``, ``/etc/shadow`` and ``/etc/gshadow``, and ``.env`` files *outside* the
  workspace (``workspace_dirs``; ``.env.example`` and other templates never count). One
  tool's files count once (gcloud reads three at every start);
- the environment: an environment dump (``env``/``printenv`` with nothing to run or
  name, the shell builtins ``set``, ``export -p``, ``declare -p``/``-x`` without names,
  one's own ``/proc/self/environ``) and other processes' ``/proc/PID/environ``;
- a search for key material (``grep``/``rg``/``ag``/``ack``/``git grep`` for ``AKIA``,
  ``PRIVATE KEY``, ``aws_secret_access_key`` ...; ``find``/``locate`` for ``id_rsa``,
  ``.netrc`` ...).

Each is seen in two ways, and both count (as the same source): a **file event**
(fanotify ``open``/``access``/``close_nowrite``; path and comm) and a **command line**
(every path-like word of the argv, and of ``sh -c`` scripts cut into commands with
:func:`~coi_watch.detectors._cmdline.parse_script`, so ``cat ~/.aws/credentials
~/.netrc ~/.ssh/id_rsa`` is a sweep even where only the proc connector runs). A command
line naming a whole credential directory (``tar cz ~/.ssh ~/.aws``) counts it; programs
that name files without reading them (``ls``, ``stat``, ``chmod``, ``rm``, ``echo`` ...)
count nothing. ``~``, ``$HOME`` and a relative path are the same home as the absolute path a
file event gives later.

Honest clients are exempt per kind of credential (:data:`CLIENTS`, matched on comm, exe
and argv[0] names as the kernel's 15-character task name, version suffixes ignored, and
through ``sudo``/``env``/``timeout``-style wrappers): the SSH tools, ``git``, ``scp`` and
``rsync`` for keys; ``git`` for ``.git-credentials``; ``pip``/``uv``/``twine`` for
``.pypirc``; ``npm``/``yarn``/``pnpm`` for ``.npmrc``; ``curl``/``wget``/``git``/``pip`` for
``.netrc``; ``aws``, ``kubectl``, ``docker`` ... for their own files; authentication tools
for the shadow file. Names are as strong as names: a renamed binary passes.

The second verdict, ``environ_level`` (high), is immediate: a file event reading
``/proc/PID/environ`` (or ``/proc/PID/task/TID/environ``) of a process other than the
reader. A container's pid 1 environment holds Incus's ``environment.*`` keys (where API
keys are injected), and nothing an agent legitimately runs reads another process's
environment (``ps e`` does, and is exactly environment scanning). File events with an
empty path (a procfs file the kernel could not name) cannot be classified and are ignored.
Command lines naming another process's environ are the Sigma packs' (they count as a
source here).

Dedup keys: ``credentials:<container>:scan`` and ``credentials:<container>:environ``. A
scan verdict fires once when the threshold is reached and re-arms when the window has
dropped below it; the environ verdict at most once per window.

Hostile input: the argv is normalised (:func:`~coi_watch.detectors._cmdline.normalize`);
one search of the joined text decides whether anything can match; after that each
argument is split with one linear regex and each distinct path is walked once; wrappers are
skipped without slicing; ``sh -c`` nesting stops at :data:`MAX_DEPTH`, and a script longer
than :data:`PARSE_CAP` is read as flat words (no exemptions: more verdicts, never fewer); a
command line stops being read once it has named :data:`MAX_SOURCES` distinct sources (the
verdict is certain by then). State per container: at most :data:`MAX_SOURCES` sources
(oldest first out) and at most :data:`MAX_CONTAINERS` containers (least recently active
first out).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from coi_watch.detectors._cmdline import base_name, normalize, parse_script, unquote
from coi_watch.detectors._config import (
    LEVELS,
    DetectorConfigError,
    cfg_int,
    cfg_level,
    cfg_number,
    cfg_strings,
    check_keys,
)
from coi_watch.detectors._windows import LruMap
from coi_watch.events import Event, FileAccess, ProcExec
from coi_watch.verdicts import Verdict

__all__ = (
    "CLIENTS",
    "MAX_CONTAINERS",
    "MAX_DEPTH",
    "MAX_SOURCES",
    "PARSE_CAP",
    "CredentialAccess",
    "classify_path",
)

MAX_DEPTH = 3
"""Nesting of ``sh -c`` scripts followed."""
MAX_SOURCES = 256
"""Distinct sources remembered per container."""
MAX_CONTAINERS = 4096
"""Containers whose state is kept at once."""

_SSH_CLIENTS = frozenset({
    "ssh", "sshd", "ssh-agent", "ssh-add", "ssh-keygen", "ssh-keyscan", "ssh-copy-id",
    "scp", "sftp", "sftp-server", "sshfs", "autossh", "rsync", "git", "mosh-client",
})
_AUTH_TOOLS = frozenset({
    "sudo", "su", "login", "sshd", "unix_chkpwd", "runuser", "newgrp", "sg", "passwd",
    "chpasswd", "chage", "chfn", "chsh", "gpasswd", "useradd", "usermod", "userdel",
    "groupadd", "groupmod", "groupdel", "adduser", "addgroup", "deluser", "delgroup", "pwck",
    "grpck", "pwconv", "grpconv", "vipw", "cron", "crond", "polkitd", "systemd-logind",
})
_IAC = frozenset({"terraform", "tofu", "pulumi"})

CLIENTS: Mapping[str, frozenset[str]] = MappingProxyType({
    "ssh-key": _SSH_CLIENTS,
    "aws": frozenset({"aws", "aws_completer", "sam", "cdk"}) | _IAC,
    "gcloud": frozenset({"gcloud", "gsutil", "bq"}) | _IAC,
    "azure": frozenset({"az"}) | _IAC,
    "kube": frozenset({"kubectl", "helm", "k9s", "kubectx", "kubens", "kind", "minikube",
                       "k3d", "kustomize", "kubeadm", "oc"}) | _IAC,
    "docker": frozenset({"docker", "docker-compose", "docker-buildx", "dockerd", "podman",
                         "buildah", "skopeo", "crane", "nerdctl"}),
    "netrc": frozenset({"curl", "wget", "git", "git-remote-http", "git-remote-https", "pip",
                        "uv", "poetry", "twine", "ftp", "lftp", "rclone", "aria2c"}),
    "git-credentials": frozenset({"git", "git-credential-store", "git-remote-http",
                                  "git-remote-https"}),
    "npmrc": frozenset({"npm", "npx", "node", "yarn", "pnpm", "bun", "corepack"}),
    "pypirc": frozenset({"pip", "twine", "uv", "poetry", "hatch", "flit", "pdm"}),
    "shadow": _AUTH_TOOLS,
})
"""Programs exempt per kind of credential file (comm / program names)."""
_CLIENT_TASKS = {kind: frozenset(n[:15] for n in names) for kind, names in CLIENTS.items()}

_NAME = "credentials"
_KEYS = ("window_s", "sources_threshold", "scan_level", "environ_level", "workspace_dirs",
         "allow_programs")
_COMM = 15  # TASK_COMM_LEN - 1: comm is cut to this
_READ_OPS = frozenset({"open", "access", "close_nowrite"})
_EVIDENCE_SOURCES, _EVIDENCE_CHARS = 16, 256

# ----------------------------------------------------------------------------- paths

_HOME_WORDS = frozenset({"~", "$HOME", "${HOME}"})
_SSH_NOT_KEYS = frozenset({
    "known_hosts", "known_hosts.old", "authorized_keys", "authorized_keys2", "config",
    "environment", "rc", "",
})
_DOTENV_TEMPLATES = frozenset({
    "example", "sample", "template", "tmpl", "dist", "defaults", "default", "schema", "test",
})
_TOP_FILES = {".netrc": "netrc", ".git-credentials": "git-credentials", ".npmrc": "npmrc",
              ".pypirc": "pypirc"}
_DOT_DIRS = frozenset({".ssh", ".aws", ".config", ".azure", ".kube", ".docker", *_TOP_FILES})
_DIR_KIND = {".ssh": "ssh-key", ".aws": "aws", ".azure": "azure", ".kube": "kube",
             ".docker": "docker"}
_DIR_TAIL = {".ssh": ".ssh/", ".aws": ".aws", ".azure": ".azure", ".kube": ".kube/config",
             ".docker": ".docker/config.json"}
_SHADOW = {"/etc/shadow": "/etc/shadow", "/etc/shadow-": "/etc/shadow",
           "/etc/gshadow": "/etc/gshadow", "/etc/gshadow-": "/etc/gshadow"}

Source = tuple[str, str, str]
"""``(kind, home, tail)``: ``("aws", "/root", ".aws")``, ``("ssh-key", "~", ".ssh/id_rsa")``."""


def _is_dotenv(name: str) -> bool:
    if name == ".env":
        return True
    if not name.startswith(".env."):
        return False
    return name[5:].lower() not in _DOTENV_TEMPLATES


def _home(prefix: str, absolute: bool, cwd: str) -> str:
    """The home a dot-directory lives in: ``~`` for ``~``/``$HOME``, ``cwd`` for a
    relative path (``~`` when unknown), else the absolute prefix (``/`` for ``/.ssh``)."""
    if prefix in _HOME_WORDS:
        return "~"
    if not prefix or prefix == ".":
        if absolute:
            return "/"
        return cwd or "~"
    if not absolute and not prefix.startswith(("~/", "$HOME/", "${HOME}/")):
        return f"{cwd}/{prefix}" if cwd else prefix
    return prefix


def classify_path(path: str, *, cwd: str = "", dirs: bool = False) -> Source | None:
    """The credential source ``path`` names, ``None`` when it names none.

    ``cwd`` resolves a relative path; ``dirs`` also classifies credential *directories*
    (``~/.ssh``), which a command line may hand over whole. ``.env`` files come back as
    ``("dotenv", DIRECTORY, NAME)`` whatever the workspace: the caller decides. One tool's
    several files share one tail (``.aws``, ``.config/gcloud``, ``.azure``); SSH keys are
    one source per key file. Linear in ``len(path)``.
    """
    shadow = _SHADOW.get(path)
    if shadow:
        return ("shadow", "", shadow)
    if "/." not in path and not path.startswith("."):
        return None  # every credential name below starts with a dot
    head, _, name = path.rpartition("/")
    if _is_dotenv(name):
        return ("dotenv", _home(head, path.startswith("/"), cwd), name)
    comps = path.split("/")
    j = -1
    for i, c in enumerate(comps):
        if c in _DOT_DIRS:
            j = i
            break
    if j < 0:
        return None
    home = _home("/".join(comps[:j]), path.startswith("/"), cwd)
    rest = [c for c in comps[j:] if c]  # ".ssh/" and ".ssh" alike
    top, n = rest[0], len(rest)
    if top in _TOP_FILES:
        return (_TOP_FILES[top], home, top) if n == 1 else None
    if n == 1 and top != ".config":
        return (_DIR_KIND[top], home, _DIR_TAIL[top]) if dirs else None
    if top == ".ssh":
        name = rest[1]
        if n == 2 and not name.endswith(".pub") and name not in _SSH_NOT_KEYS:
            return ("ssh-key", home, f".ssh/{name}")
        return None
    if top == ".aws":
        if (n == 2 and rest[1] == "credentials") or (
            n >= 3 and rest[1] in ("sso", "cli") and rest[2] == "cache"
        ):
            return ("aws", home, ".aws")
        return None
    if top == ".azure":
        low = rest[-1].lower()
        if "token" in low or "msal" in low or "service_principal" in low:
            return ("azure", home, ".azure")
        return None
    if top == ".kube":
        return ("kube", home, ".kube/config") if rest[1:] == ["config"] else None
    if top == ".docker":
        return ("docker", home, ".docker/config.json") if rest[1:] == ["config.json"] else None
    # .config/...
    if n >= 2 and rest[1] == "gcloud":
        if n == 2:
            return ("gcloud", home, ".config/gcloud") if dirs else None
        if any("credential" in c.lower() or c == "access_tokens.db" for c in rest[2:]):
            return ("gcloud", home, ".config/gcloud")
        return None
    if rest[1:] == ["git", "credentials"]:
        return ("git-credentials", home, ".git-credentials")
    return None



def _environ_target(path: str) -> str | None:
    """``PID`` of ``/proc/PID/environ`` or ``/proc/PID/task/TID/environ`` (as written:
    digits, ``self``, a glob, a variable), ``None`` for any other path."""
    if not path.startswith("/proc/") or not path.endswith("/environ"):
        return None
    parts = path[6:-8].split("/")
    if len(parts) == 1 or (len(parts) == 3 and parts[1] == "task"):
        return parts[0] or None
    return None


# ----------------------------------------------------------------------------- commands

_SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "hush", "yash",
                     "posh", "rbash"})
# Wrappers run the program after them: their options that take a value as the next word,
# and how many positionals come before the program (timeout DURATION, chroot DIR).
_WRAPPERS: Mapping[str, tuple[frozenset[str], int]] = {
    "sudo": (frozenset({"-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U", "-T", "-R",
                        "--user", "--group", "--chdir", "--host", "--prompt"}), 0),
    "doas": (frozenset({"-u", "-C"}), 0),
    "runuser": (frozenset({"-u", "-g", "-G", "--user", "--group"}), 0),
    "env": (frozenset({"-u", "--unset", "-C", "--chdir", "-S", "--split-string"}), 0),
    "timeout": (frozenset({"-s", "--signal", "-k", "--kill-after"}), 1),
    "nice": (frozenset({"-n", "--adjustment"}), 0),
    "ionice": (frozenset({"-c", "-n", "-p", "--class", "--classdata"}), 0),
    "stdbuf": (frozenset({"-i", "-o", "-e"}), 0),
    "exec": (frozenset({"-a"}), 0),
    "time": (frozenset({"-f", "-o", "--format", "--output"}), 0),
    "xargs": (frozenset({"-a", "-d", "-E", "-I", "-L", "-n", "-P", "-s", "--arg-file",
                         "--delimiter", "--max-args", "--max-procs"}), 0),
    "chroot": (frozenset({"--userspec", "--groups"}), 1),
    **{w: (frozenset(), 0) for w in ("nohup", "setsid", "command", "builtin", "unbuffer",
                                     "busybox")},
}
# Programs that name files without reading them: their paths are not credential reads.
_METADATA_ONLY = frozenset({
    "ls", "stat", "test", "[", "mkdir", "chmod", "chown", "chgrp", "touch", "cd", "file",
    "du", "dirname", "basename", "realpath", "readlink", "namei", "echo", "printf", "rm",
    "rmdir", "mv", "ln", "which", "type", "getfacl", "setfacl",
})
_GREPS = frozenset({"grep", "egrep", "fgrep", "zgrep", "rg", "ag", "ack", "ack-grep",
                    "ugrep", "sift"})
_FINDERS = frozenset({"find", "locate", "plocate", "mlocate", "fd", "fdfind"})
_CONTENT_NEEDLES = ("private key", "begin openssh", "aws_secret_access_key",
                    "aws_access_key_id", "aws_session_token", "secretaccesskey",
                    "accesskeyid")
_NAME_NEEDLES = ("id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "id_*", ".git-credentials",
                 ".netrc", ".pypirc", ".npmrc", ".aws/credentials",
                 "application_default_credentials")
_DUMP_WORDS = frozenset({"env", "printenv", "set", "export", "declare", "typeset"})
# Lower-case substrings: an argument holding none of these names no credential path.
_PATH_MARKERS = (".ssh", ".aws", "gcloud", ".azure", ".kube", ".docker", ".netrc",
                 "git-credentials", ".config/git", ".npmrc", ".pypirc", ".env", "shadow",
                 "environ")
_PATH_MARKER = re.compile("|".join(map(re.escape, _PATH_MARKERS)))
# A command line holding none of these (lower case; "AKIA" as written) cannot match at all:
# one C-speed substring scan each decides for the common `cd x && make`.
_TRIGGERS = (*_PATH_MARKERS, *_CONTENT_NEEDLES, *_NAME_NEEDLES, *_DUMP_WORDS)
# One C-level scan for "any trigger occurs": an alternation of plain literals (no
# quantifiers), so the cost stays linear in the command line whatever it holds.
_TRIGGER_RE = re.compile("|".join(re.escape(t) for t in sorted(set(_TRIGGERS), key=len,
                                                                    reverse=True)))
PARSE_CAP = 64 * 1024
"""Longest ``sh -c`` script cut into commands; a longer one is read as a flat list of
words: every path in it counts, with no client exemptions (more verdicts, never fewer)."""
# Path words inside an argument: split on what cannot be part of a path in code or shell.
_SPLIT = re.compile(r"[\s'\"`;|&<>(),=:\[\]{}]++")


def _task_name(name: str) -> str:
    """``name`` as a kernel task name: lower case, at most 15 characters."""
    return name.lower()[:_COMM]


def _names(*words: str) -> set[str]:
    """Task names a program is known by (``pip3.11`` is also ``pip``)."""
    out: set[str] = set()
    for w in words:
        if not w:
            continue
        name = _task_name(base_name(w))
        out.add(name)
        short = name.rstrip("0123456789.-")
        if short:
            out.add(short)
    return out


def _script_of(args: Sequence[str]) -> str | None:
    """The ``-c`` script of a shell's arguments (``-c``, ``-lc``, ``-ec`` ...)."""
    for j, a in enumerate(args):
        if a.startswith("-") and not a.startswith("--") and "c" in a[1:]:
            return args[j + 1] if j + 1 < len(args) else None
        if not a.startswith("-"):
            return None
    return None


def _unwrap(words: Sequence[str]) -> tuple[str, Sequence[str]]:
    """``(program, arguments)`` past wrappers: ``sudo -u git cat f`` -> ``cat``; an ``env``
    that prints the environment is the program itself."""
    i, n = 0, len(words)
    while i < n:
        name = _task_name(base_name(words[i]))
        spec = _WRAPPERS.get(name)
        # Slice only on the way out: `sudo sudo sudo ...` must stay linear.
        if spec is None or i + 1 >= n or (name == "env" and _dumps("env", words, i + 1)):
            return name, words[i + 1:]
        takes_value, positionals = spec
        i += 1
        while i < n:
            w = words[i]
            if w == "--":
                i += 1
                break
            if w in takes_value:
                i += 2
            elif w.startswith("-") or (name == "env" and "=" in w):
                i += 1
            else:
                break
        i += positionals
    return "", ()


# ----------------------------------------------------------------------------- the detector


@dataclass(slots=True)
class _Seen:
    ts_ns: int
    via: str
    pid: int
    comm: str
    what: str


@dataclass(slots=True)
class _Box:
    """One container's sources in the window."""

    sources: OrderedDict[Source, _Seen] = field(default_factory=OrderedDict)  # oldest first
    homes: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (kind, tail)
    armed: bool = True
    environ_quiet_until: int = -1


class CredentialAccess:
    """Credential sweeps and other processes' environ; see the module docstring.

    Config keys (``[detectors.credentials]``), with defaults:

    ``window_s = 60.0``
        The sweep window in seconds: long enough for an agent reading secrets one command
        at a time, short enough that a day of honest tool use does not add up.
    ``sources_threshold = 3``
        Distinct credential sources within the window that make a sweep. Two is the
        honest pair (``aws`` then ``docker login``, both exempt anyway); three different
        secrets read by non-clients is a collection.
    ``scan_level = "high"``
        Level of a sweep (``critical``, ``high``, ``warning``, ``info``, ``off``).
    ``environ_level = "high"``
        Level of another process's ``/proc/PID/environ`` read (file events).
    ``workspace_dirs = ["/workspace"]``
        Directories whose ``.env`` files are the project's own (COI mounts the workspace
        at ``/workspace``); ``.env`` files elsewhere count as credentials.
    ``allow_programs = []``
        Program names exempt from every signal (comm or program basename).

    Raises:
        ConfigError: an unknown key, or a value of the wrong type or out of range.
    """

    name: ClassVar[str] = _NAME
    consumes: ClassVar[frozenset[str]] = frozenset({"proc.exec", "file.access"})

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        cfg = dict(config or {})
        check_keys(_NAME, cfg, _KEYS)
        self._window_ns = int(cfg_number(_NAME, cfg, "window_s", 60.0) * 1e9)
        self._threshold = cfg_int(_NAME, cfg, "sources_threshold", 3, maximum=MAX_SOURCES)
        self._scan_level = cfg_level(_NAME, cfg, "scan_level", "high", LEVELS)
        self._environ_level = cfg_level(_NAME, cfg, "environ_level", "high", LEVELS)
        workspaces = cfg_strings(_NAME, cfg, "workspace_dirs", ["/workspace"])
        if not all(w.startswith("/") for w in workspaces):
            raise DetectorConfigError(f"detectors.{_NAME}.workspace_dirs: absolute paths")
        dirs = [w.rstrip("/") for w in workspaces]
        self._workspaces = frozenset(dirs)
        self._workspace_prefixes = tuple(f"{w}/" for w in dirs)  # "/" itself: ""+"/"
        self._allow = frozenset(_task_name(n) for n in cfg_strings(_NAME, cfg, "allow_programs"))
        self._boxes: LruMap[str, _Box] = LruMap(MAX_CONTAINERS)

    # -- events

    def feed(self, ev: Event, now_ns: int) -> Iterable[Verdict]:
        """Take one exec or file event; return any verdicts it completes."""
        if isinstance(ev, FileAccess):
            return self._file(ev, now_ns)
        if isinstance(ev, ProcExec):
            return self._exec(ev, now_ns)
        return ()

    def _file(self, ev: FileAccess, now_ns: int) -> list[Verdict]:
        if not ev.path or ev.op not in _READ_OPS:
            return []
        comm = _task_name(normalize(ev.comm))
        if comm in self._allow:
            return []
        path = normalize(ev.path)
        out: list[Verdict] = []
        target = _environ_target(path)
        found: Source | None
        if target is None:
            found = classify_path(path)
            if found is None or not self._counts(found, _names(comm)):
                return out
        elif target in ("self", "thread-self", str(ev.pid)):
            found = ("env-dump", "", "")
        else:
            found = ("environ", "", "*")
            box = self._box(ev.container)
            if self._environ_level is not None and now_ns >= box.environ_quiet_until:
                box.environ_quiet_until = now_ns + self._window_ns
                out.append(self._environ_verdict(ev, path, target))
        box = self._box(ev.container)
        self._add(box, found, _Seen(now_ns, "file", ev.pid, ev.comm, path), now_ns)
        out.extend(self._check(ev, box, now_ns))
        return out

    def _exec(self, ev: ProcExec, now_ns: int) -> list[Verdict]:
        if not ev.argv:
            return []
        argv = [normalize(a) for a in ev.argv]
        joined = " ".join(argv)
        if "AKIA" not in joined:
            low = joined.lower()
            if _TRIGGER_RE.search(low) is None:
                return []
        names = _names(ev.exe, ev.comm, argv[0])
        if not self._allow.isdisjoint(names):
            return []
        # Distinct sources of this command line; past MAX_SOURCES the verdict is certain
        # (sources_threshold <= MAX_SOURCES) and the rest could only evict these.
        found: dict[Source, str] = {}
        for src, word in self._command(argv, names, ev.cwd, ev.pid, 0):
            found.setdefault(src, word)
            if len(found) >= MAX_SOURCES:
                break
        if not found:
            return []
        box = self._box(ev.container)
        for src, word in found.items():
            self._add(box, src, _Seen(now_ns, "exec", ev.pid, ev.comm, word), now_ns)
        return self._check(ev, box, now_ns)

    # -- command lines

    def _command(self, words: Sequence[str], names: set[str], cwd: str, pid: int,
                 depth: int) -> Iterator[tuple[Source, str]]:
        """Sources one command names; ``names`` are the program's names (wrappers seen
        through), ``words`` its argv (unquoted)."""
        program, args = _unwrap(words)
        if program:
            names = names | _names(program)
        if program in _SHELLS:
            script = _script_of(args)
            if script is not None and depth < MAX_DEPTH:
                if len(script) <= PARSE_CAP:
                    yield from self._script(script, cwd, pid, depth + 1)
                else:
                    yield from self._paths([script], names, cwd, pid)
                return
        if program in ("env", "printenv") and _dumps(program, args):
            yield ("env-dump", "", ""), program
        if _searches(program, args):
            yield ("key-search", "", ""), _clip(" ".join(words[:8]))
        if program not in _METADATA_ONLY:
            yield from self._paths(words[1:], names, cwd, pid)  # wrapper arguments too

    def _paths(self, args: Sequence[str], names: set[str], cwd: str, pid: int
               ) -> Iterator[tuple[Source, str]]:
        """Sources named by path words inside ``args`` (each word looked at once)."""
        low = " ".join(args).lower()
        if not any(m in low for m in _PATH_MARKERS):
            return
        seen: set[str] = set()
        split, marker, counts = _SPLIT.split, _PATH_MARKER.search, self._counts
        for a in args:
            if not marker(a.lower()):
                continue
            for tok in split(a):
                if tok in seen or ("/" not in tok and tok[:1] != "."):
                    continue
                seen.add(tok)
                src = self._word_source(tok, cwd, pid)
                if src is not None and counts(src, names):
                    yield src, _clip(tok)

    def _script(self, script: str, cwd: str, pid: int, depth: int
                ) -> Iterator[tuple[Source, str]]:
        for _, cmd, _docs in parse_script(script, lambda _w: True).commands:
            if not cmd.words:
                continue
            first = unquote(cmd.words[0])
            name = _task_name(base_name(first))
            if name in _DUMP_WORDS and name not in ("env", "printenv"):
                if _builtin_dumps(name, [unquote(w) for w in cmd.words[1:]]):
                    yield ("env-dump", "", ""), name
                continue
            raw = " ".join((*cmd.words, *(t for _, t in cmd.redirs)))
            if "AKIA" not in raw:
                low = raw.lower()
                if _TRIGGER_RE.search(low) is None:
                    continue  # nothing in this command can count
            words = [first, *(unquote(w) for w in cmd.words[1:]),
                     *(unquote(t) for _, t in cmd.redirs)]
            yield from self._command(words, _names(first), cwd, pid, depth)

    def _word_source(self, tok: str, cwd: str, pid: int) -> Source | None:
        target = _environ_target(tok)
        if target is not None:
            if target in ("self", "thread-self", str(pid)):
                return ("env-dump", "", "")
            return ("environ", "", "*")
        if tok[:1] == "$" and tok.endswith("/environ"):
            return ("environ", "", "*")  # `for p in /proc/[0-9]*; do ... < $p/environ`
        return classify_path(tok, cwd=cwd, dirs=True)

    def _counts(self, src: Source, names: set[str]) -> bool:
        """Whether ``src`` read by a program of ``names`` counts (not an honest client)."""
        kind, home, _ = src
        if kind == "dotenv":
            return not self._in_workspace(home)
        clients = _CLIENT_TASKS.get(kind)
        return clients is None or clients.isdisjoint(names)

    def _in_workspace(self, directory: str) -> bool:
        if not directory.startswith("/"):
            return True  # relative to an unknown directory: give the project the benefit
        return directory in self._workspaces or directory.startswith(self._workspace_prefixes)

    # -- state

    def _box(self, container: str) -> _Box:
        box = self._boxes.touch(container)
        if box is None:
            box = _Box()
            self._boxes.put(container, box)
        return box

    def _add(self, box: _Box, src: Source, seen: _Seen, now_ns: int) -> None:
        kind, home, tail = src
        homes = box.homes.setdefault((kind, tail), set())
        if home == "~" and homes:
            src = (kind, next(iter(homes)), tail)  # the same file an absolute path named
        elif home != "~" and "~" in homes:
            self._drop(box, (kind, "~", tail))  # now known where "~" was
            homes = box.homes.setdefault((kind, tail), set())
        if src in box.sources:
            box.sources.move_to_end(src)
        box.sources[src] = seen
        homes.add(src[1])
        while len(box.sources) > MAX_SOURCES:
            self._drop(box, next(iter(box.sources)))

    def _drop(self, box: _Box, src: Source) -> None:
        del box.sources[src]
        key = (src[0], src[2])
        homes = box.homes.get(key)
        if homes is not None:
            homes.discard(src[1])
            if not homes:
                del box.homes[key]

    def _expire(self, box: _Box, now_ns: int) -> None:
        horizon = now_ns - self._window_ns
        sources = box.sources
        while sources:
            src, seen = next(iter(sources.items()))
            if seen.ts_ns >= horizon:
                break
            self._drop(box, src)

    # -- verdicts

    def _check(self, ev: FileAccess | ProcExec, box: _Box, now_ns: int) -> list[Verdict]:
        self._expire(box, now_ns)
        count = len(box.sources)
        if count < self._threshold:
            box.armed = True
            return []
        if not box.armed or self._scan_level is None:
            return []
        box.armed = False
        listed = list(box.sources.items())[-_EVIDENCE_SOURCES:]
        kinds = sorted({src[0] for src in box.sources})
        mitre = ["T1552.001"]
        if "ssh-key" in kinds:
            mitre.append("T1552.004")
        if "shadow" in kinds:
            mitre.append("T1003.008")
        evidence: dict[str, Any] = {
            "signal": "scan",
            "count": count,
            "threshold": self._threshold,
            "window_s": self._window_ns / 1e9,
            "kinds": kinds,
            "sources": [
                {"kind": src[0], "what": seen.what, "via": seen.via, "pid": seen.pid,
                 "comm": seen.comm}
                for src, seen in listed
            ],
        }
        return [Verdict(
            ts_ns=ev.ts_ns,
            wall_ns=ev.wall_ns,
            container=ev.container,
            detector=self.name,
            title=f"Credential sweep: {count} credential sources within "
                  f"{self._window_ns / 1e9:g} s ({', '.join(kinds)})",
            severity=self._scan_level,
            evidence=evidence,
            mitre=tuple(mitre),
            dedup_key=f"credentials:{ev.container}:scan",
            event_kind=ev.kind,
            pid=ev.pid,
        )]

    def _environ_verdict(self, ev: FileAccess, path: str, target: str) -> Verdict:
        assert self._environ_level is not None
        return Verdict(
            ts_ns=ev.ts_ns,
            wall_ns=ev.wall_ns,
            container=ev.container,
            detector=self.name,
            title=f"Environment of process {_clip(target, 32)} read by {ev.comm or ev.pid}",
            severity=self._environ_level,
            evidence={"signal": "environ", "path": _clip(path), "target_pid": _clip(target),
                      "pid": ev.pid, "comm": ev.comm, "op": ev.op},
            mitre=("T1552",),
            dedup_key=f"credentials:{ev.container}:environ",
            event_kind=ev.kind,
            pid=ev.pid,
        )


# ----------------------------------------------------------------------------- helpers


def _dumps(program: str, args: Sequence[str], start: int = 0) -> bool:
    """``env``/``printenv`` that print the environment (no command, no variable name):
    ``args[start:]`` holds only options (and, for ``env``, assignments)."""
    i, n = start, len(args)
    while i < n:
        a = args[i]
        if program == "env" and a in ("-u", "--unset"):
            i += 2
            continue
        if a.startswith("-") or (program == "env" and "=" in a):
            i += 1
            continue
        return False
    return True


def _builtin_dumps(name: str, args: Sequence[str]) -> bool:
    """Shell builtins that print every variable: ``set``, ``export [-p]``,
    ``declare``/``typeset`` with only ``-p``/``-x`` style options."""
    if name == "set":
        return not args
    if name == "export":
        return all(a == "-p" for a in args)
    return all(a.startswith("-") and ("p" in a or "x" in a) for a in args)


def _searches(program: str, args: Sequence[str]) -> bool:
    """A search for key material by content or by file name."""
    if program in _GREPS or (program == "git" and "grep" in args):
        for a in args:
            if "AKIA" in a:
                return True
            low = a.lower()
            if any(n in low for n in _CONTENT_NEEDLES):
                return True
        return False
    if program in _FINDERS:
        return any(n in a.lower() for a in args for n in _NAME_NEEDLES)
    return False


def _clip(text: str, limit: int = _EVIDENCE_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...(+{len(text) - limit} chars)"

