"""Tests for coi_watch.sources.procfs: pure parsers, then real processes and sockets."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coi_watch.events import ProcExec, event_from_json, event_to_json
from coi_watch.sources.procfs import (
    ARGV_CAP,
    NetTables,
    classify_fd,
    decode_inet_addr,
    enrich_exec,
    parse_inet_table,
    parse_unix_table,
    read_ancestry,
    read_argv,
    read_comm,
    read_stat,
    read_stdio,
    split_argv,
)

SLEEPER = "import sys, time; sys.stdout.write('up\\n'); sys.stdout.flush(); time.sleep(30)"


def spawn(*extra: str | bytes, **kw: object) -> subprocess.Popen[bytes]:
    """A Python child that sleeps after printing 'up' (extra args are ignored by it)."""
    kw.setdefault("stdout", subprocess.PIPE)
    proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
        [sys.executable, "-c", SLEEPER, *extra], **kw)
    if proc.stdout is not None:
        assert proc.stdout.readline() == b"up\n"
    return proc


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = spawn()
    yield proc
    proc.kill()
    proc.wait()


def gone_pid() -> int:
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 7


# --------------------------------------------------------------------------- pure parsers


@pytest.mark.parametrize(
    ("raw", "truncated", "want"),
    [
        (b"", False, ()),
        (b"ls\0-l\0", False, ("ls", "-l")),
        (b"ls\0\0x\0", False, ("ls", "", "x")),  # an empty argument survives
        (b"setproctitle style", False, ("setproctitle style",)),
        (b"a\0bc", True, ("a", "bc")),
        (b"a\0", True, ("a", "")),
        (b"\xff\xfe\0caf\xc3\xa9\0", False, ("\\xff\\xfe", "caf\u00e9")),
        (b"\xed\xa0\x80\0", False, ("\\xed\\xa0\\x80",)),  # a lone surrogate, UTF-8 encoded
    ],
)
def test_split_argv(raw: bytes, truncated: bool, want: tuple[str, ...]) -> None:
    assert split_argv(raw, truncated=truncated) == want


@given(st.binary(max_size=200), st.booleans())
def test_split_argv_is_always_serialisable(raw: bytes, truncated: bool) -> None:
    argv = split_argv(raw, truncated=truncated)
    assert orjson.loads(orjson.dumps(argv)) == list(argv)


@pytest.mark.parametrize(
    ("field", "v6", "want"),
    [
        ("0100007F:115C", False, "127.0.0.1:4444"),
        ("00000000:0035", False, "0.0.0.0:53"),
        ("0A0012C6:01BB", False, "198.18.0.10:443"),
        ("0000000000000000FFFF00000100007F:115C", True, "[::ffff:127.0.0.1]:4444"),
        ("00000000000000000000000001000000:0016", True, "[::1]:22"),
        ("000080FE000000000000000001000000:0000", True, "[fe80::1]:0"),
    ],
)
def test_decode_inet_addr(field: str, v6: bool, want: str) -> None:
    # The expected values assume a little-endian host (the kernel prints native u32 words).
    if sys.byteorder != "little":  # pragma: no cover
        pytest.skip("vectors are little-endian")
    assert decode_inet_addr(field, v6) == want


@pytest.mark.parametrize("field", ["", "0100007F", "0100007:115C", "XYZ0007F:115C", "01:02"])
def test_decode_inet_addr_rejects(field: str) -> None:
    with pytest.raises(ValueError):
        decode_inet_addr(field, False)


TCP_TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:115C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0
   1: 0100007F:115C 0100007F:B2F2 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0
   2: broken line
   3: 0100007F:9999 0100007F:B2F3 06 00000000:00000000 03:00001000 00000000     0        0 0 3 0
   4: 0100007F:9999 0100007F:B2F4 63 00000000:00000000 00:00000000 00000000     0        0 4444 1 0
"""

UNIX_TABLE = """\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 100 /run/a socket with spaces
0000000000000000: 00000003 00000000 00000000 0001 03 101
0000000000000000: 00000002 00000000 00000000 0002 01 102 @abstract
junk
"""


def test_parse_inet_table() -> None:
    rows = parse_inet_table(TCP_TABLE, "tcp", False)
    assert set(rows) == {4242, 4343, 4444}  # inode 0 (TIME_WAIT) and junk skipped
    assert rows[4242].state == "LISTEN" and rows[4242].remote == "0.0.0.0:0"
    assert rows[4343] == ("tcp", "ESTABLISHED", "127.0.0.1:4444", "127.0.0.1:45810")
    assert rows[4444].state == "99"  # an unknown state number stays visible


def test_parse_unix_table() -> None:
    rows = parse_unix_table(UNIX_TABLE)
    assert rows[100] == ("unix", "LISTEN", "/run/a socket with spaces", "")
    assert rows[101] == ("unix", "CONNECTED", "", "")
    assert rows[102].local == "@abstract"
    assert len(rows) == 3


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ("socket:[123]", "socket"),
        ("pipe:[9]", "pipe"),
        ("anon_inode:[eventfd]", "anon"),
        ("anon_inode:inotify", "anon"),
        ("/dev/pts/3", "tty"),
        ("/dev/tty1", "tty"),
        ("/dev/console", "tty"),
        ("/dev/null", "file"),
        ("/tmp/x (deleted)", "file"),
        ("net:[4026531840]", "other"),
        (None, "gone"),
    ],
)
def test_classify_fd(target: str | None, kind: str) -> None:
    fd = classify_fd(2, target)
    assert fd.type == kind and fd.fd == 2 and fd.target == (target or "")


def test_fake_proc_root(tmp_path: Path) -> None:
    root = tmp_path / "proc"
    d = root / "77"
    (d / "fd").mkdir(parents=True)
    (d / "net").mkdir()
    (d / "net" / "tcp").write_text(TCP_TABLE)
    (d / "net" / "unix").write_text(UNIX_TABLE)
    (d / "fd" / "0").symlink_to("socket:[4343]")
    (d / "fd" / "1").symlink_to("socket:[101]")
    (d / "fd" / "2").symlink_to("socket:[999]")  # in no table (e.g. netlink)
    (d / "cmdline").write_bytes(b"sh\0-c\0x\0")
    (d / "comm").write_bytes(b"sh\n")
    (d / "stat").write_bytes(b"77 (a) b (c)) S 5 77 77 0 -1 4194560 0 0\n")
    stdio, ok = read_stdio(77, str(root))
    assert ok  # missing tables (no tcp6/udp in a netns) are normal, not a vanished process
    assert [(f.fd, f.proto, f.state) for f in stdio] == [
        (0, "tcp", "ESTABLISHED"), (1, "unix", "CONNECTED"), (2, "", "")]
    assert stdio[0].connected_inet and not stdio[1].connected_inet
    assert read_argv(77, proc=str(root)).argv == ("sh", "-c", "x")
    assert read_comm(77, str(root)) == "sh"
    assert read_stat(77, str(root)) == ("a) b (c)", 5)
    (d / "stat").write_bytes(b"77 (x S")
    assert read_stat(77, str(root)) is None


def test_net_tables_read_lazily(tmp_path: Path) -> None:
    d = tmp_path / "5" / "net"
    d.mkdir(parents=True)
    (d / "tcp").write_text(TCP_TABLE)
    (d / "tcp6").write_text("header\n")
    tables = NetTables(5, str(tmp_path))
    assert tables.lookup(4242) is not None
    (d / "tcp").unlink()  # already read: not needed again
    assert tables.lookup(4343) is not None
    assert tables.ok


# --------------------------------------------------------------------------- real processes


def test_read_argv_of_a_huge_cmdline() -> None:
    # 16 arguments of 64 KiB (MAX_ARG_STRLEN is 128 KiB): 1 MiB of argv in all.
    big = [chr(ord("a") + i) * 65536 for i in range(16)]
    proc = spawn(*big)
    try:
        args = read_argv(proc.pid)
        assert args.ok and args.truncated
        assert sum(len(a.encode()) + 1 for a in args.argv) - 1 == ARGV_CAP
        assert args.argv[:2] == (sys.executable, "-c")
        assert args.argv[3] == big[0]
        ev = enrich_exec(proc.pid, container="t", ts_ns=time.monotonic_ns(),
                         attribute=lambda pid: "t")
        assert ev.argv_truncated and not ev.partial
        assert len(event_to_json(ev)) < ARGV_CAP + 64 * 1024
    finally:
        proc.kill()
        proc.wait()


def test_binary_argv_is_escaped_and_serialisable() -> None:
    proc = spawn(b"\xff\xfe\x80", b"ok\xed\xa0\x80", "caf\u00e9")
    try:
        ev = enrich_exec(proc.pid, container="t", ts_ns=1, attribute=lambda pid: "t")
        assert ev.argv[3:] == ("\\xff\\xfe\\x80", "ok\\xed\\xa0\\x80", "caf\u00e9")
        assert not ev.argv_truncated and not ev.partial
        assert event_from_json(event_to_json(ev)) == ev
    finally:
        proc.kill()
        proc.wait()


def test_vanished_pid_is_partial_not_an_error() -> None:
    pid = gone_pid()
    ev = enrich_exec(pid, container="c", ts_ns=123, attribute=lambda p: "c")
    assert ev.partial and ev.pid == pid and ev.ts_ns == 123
    assert (ev.argv, ev.exe, ev.cwd, ev.comm, ev.ancestry) == ((), "", "", "", ())
    assert [(f.fd, f.type) for f in ev.stdio] == [(0, "gone"), (1, "gone"), (2, "gone")]
    assert ev.ppid == 0 and ev.uid == -1
    assert read_argv(pid) == ((), False, False)
    assert read_stdio(pid)[1] is False


def test_zombie_is_partial() -> None:
    proc = subprocess.Popen(["/bin/true"])
    deadline = time.monotonic() + 5
    while Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1][0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.005)
    try:
        ev = enrich_exec(proc.pid, container="c", ts_ns=1, attribute=lambda p: "c")
        assert ev.partial and ev.exe == "" and ev.argv == ()
        assert ev.ppid == os.getpid()  # stat is still there
    finally:
        proc.wait()


def test_enrich_live_child(child: subprocess.Popen[bytes], tmp_path: Path) -> None:
    ev = enrich_exec(child.pid, container="t", ts_ns=5, attribute=lambda p: "t")
    assert isinstance(ev, ProcExec) and not ev.partial
    assert ev.ppid == os.getpid() and ev.uid == os.geteuid()
    assert ev.exe == os.path.realpath(sys.executable)
    assert ev.cwd == os.getcwd()
    assert ev.argv == (sys.executable, "-c", SLEEPER)
    assert ev.comm == Path(f"/proc/{child.pid}/comm").read_text().strip()
    assert ev.container == "t" and ev.ts_ns == 5
    # stdout is a pipe to us; stdin/stderr are inherited from pytest.
    out = {fd.fd: fd for fd in ev.stdio}
    assert out[1].type == "pipe" and out[1].target.startswith("pipe:[")
    # Ancestry: pytest is the first ancestor, then its parents, at most 8, never pid 1.
    assert ev.ancestry[0].pid == os.getpid()
    assert ev.ancestry[0].exe == os.path.realpath(sys.executable)
    assert 1 <= len(ev.ancestry) <= 8 and all(a.pid > 1 for a in ev.ancestry)
    assert all(len(a.cmdline) <= 1024 for a in ev.ancestry)
    assert orjson.loads(event_to_json(ev))["kind"] == "proc.exec"


def test_ancestry_stops_at_the_container_border(child: subprocess.Popen[bytes]) -> None:
    inside = {child.pid, os.getpid()}
    got = read_ancestry(os.getpid(), container="c",
                        attribute=lambda p: "c" if p in inside else None)
    assert [a.pid for a in got] == [os.getpid()]
    assert read_ancestry(os.getpid(), container="c", attribute=lambda p: None) == ()
    assert len(read_ancestry(os.getpid(), container="c", attribute=lambda p: "c", depth=1)) == 1


def test_deleted_executable_keeps_its_suffix(tmp_path: Path) -> None:
    exe = tmp_path / "sleepy"
    shutil.copy("/bin/sleep", exe)
    proc = subprocess.Popen([str(exe), "30"])
    try:
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{proc.pid}/exe") != str(exe):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        exe.unlink()
        ev = enrich_exec(proc.pid, container="t", ts_ns=1, attribute=lambda p: "t")
        assert ev.exe == f"{exe} (deleted)"
    finally:
        proc.kill()
        proc.wait()


def _stdio_child(sock: socket.socket) -> subprocess.Popen[bytes]:
    return spawn(stdin=sock.fileno(), stdout=subprocess.PIPE, stderr=sock.fileno())


def test_stdio_tcp_socket_in_own_netns_view() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        cli = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
        proc = _stdio_child(conn)
        try:
            stdio, ok = read_stdio(proc.pid)
            assert ok
            by_fd = {f.fd: f for f in stdio}
            sock0 = by_fd[0]
            assert sock0.type == "socket" and sock0.proto == "tcp"
            assert sock0.state == "ESTABLISHED" and sock0.connected_inet
            assert sock0.local == f"127.0.0.1:{conn.getsockname()[1]}"
            assert sock0.remote == f"127.0.0.1:{cli.getsockname()[1]}"
            assert by_fd[2] == sock0.__class__(
                fd=2, type="socket", target=sock0.target, proto="tcp", state="ESTABLISHED",
                local=sock0.local, remote=sock0.remote)
            assert by_fd[1].type == "pipe"
        finally:
            proc.kill()
            proc.wait()
            cli.close()
            conn.close()


def test_stdio_ipv6_udp_and_unix_sockets() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp, \
         socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as lis:
        try:
            udp.bind(("::1", 0))
            lis.bind(("::1", 0))
        except OSError:  # pragma: no cover - no IPv6 loopback here
            pytest.skip("no ::1")
        lis.listen()
        udp.connect(("::1", 9))
        a, b = socket.socketpair()
        proc = spawn(stdin=udp.fileno(), stderr=lis.fileno())
        proc2 = spawn(stdin=a.fileno())
        try:
            stdio, _ = read_stdio(proc.pid)
            by_fd = {f.fd: f for f in stdio}
            assert by_fd[0].proto == "udp6" and by_fd[0].remote == "[::1]:9"
            assert by_fd[0].connected_inet
            assert by_fd[2].proto == "tcp6" and by_fd[2].state == "LISTEN"
            assert not by_fd[2].connected_inet
            assert by_fd[2].local == f"[::1]:{lis.getsockname()[1]}"
            (u0, *_) = read_stdio(proc2.pid)[0]
            assert (u0.fd, u0.type, u0.proto, u0.state) == (0, "socket", "unix", "CONNECTED")
        finally:
            for p in (proc, proc2):
                p.kill()
                p.wait()
            a.close()
            b.close()


def test_closed_stdio_is_left_out() -> None:
    proc = spawn(stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)
    try:
        stdio, ok = read_stdio(proc.pid, fds=(0, 1, 2, 9))
        assert ok and [f.fd for f in stdio] == [0, 1, 2]
        assert stdio[0].target == "/dev/null" and stdio[0].type == "file"
    finally:
        proc.kill()
        proc.wait()
