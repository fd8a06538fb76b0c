"""The proc source against a real Incus container: a loopback reverse shell, seen from the host.

No network leaves the container: it has no NIC; the test brings its ``lo`` up and connects
``nc`` to ``127.0.0.1`` inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from coi_watch.events import Event, ProcComm, ProcExec, ProcExit
from coi_watch.protocols import SourceContext
from coi_watch.sources.proc import ProcSource

IMAGE = os.environ.get("COI_TESTBED_IMAGE", "coi-bb")
SCRIPT = (
    "ip link set lo up; nc -l -p 4444 -e /bin/sh & sleep 0.3; "
    "(echo id; sleep 1) | nc 127.0.0.1 4444"
)


@pytest.fixture
def container() -> Iterator[str]:
    name = f"coi-t-proc-{secrets.token_hex(3)}"
    try:
        subprocess.run(["incus", "launch", IMAGE, name], check=True, capture_output=True,
                       timeout=120)
        yield name
    finally:
        subprocess.run(["incus", "delete", "--force", name], capture_output=True, timeout=120)


@pytest.mark.incus
async def test_reverse_shell_in_a_container_is_seen_with_its_socket(container: str) -> None:
    events: list[Event] = []
    systems: list[tuple[str, str, Mapping[str, Any]]] = []
    ctx = SourceContext(
        publish=events.append,
        watched=lambda name: name == container,
        system=lambda c, k, d: systems.append((c, k, d)),
        count_drop=lambda *a: None,
    )
    src = ProcSource()
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    task = asyncio.create_task(src.run(ctx, ready))
    try:
        await asyncio.wait_for(asyncio.shield(ready), 5)
        proc = await asyncio.create_subprocess_exec(
            "incus", "exec", container, "--", "sh", "-c", SCRIPT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        await asyncio.sleep(0.2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    assert b"uid=0(root)" in out, (out, err)
    assert all(e.container == container for e in events)
    execs = [e for e in events if isinstance(e, ProcExec)]
    # The shell nc -e started: /bin/sh in the nc process itself, stdio on a TCP connection.
    shells = [e for e in execs if e.argv == ("/bin/sh",)]
    assert shells, [e.argv for e in execs]
    shell = shells[0]
    assert not shell.partial
    assert shell.exe.endswith("busybox") and shell.uid >= 1_000_000  # unprivileged container
    sock = [fd for fd in shell.stdio if fd.connected_inet]
    assert {fd.fd for fd in sock} >= {0, 1}
    assert sock[0].proto in ("tcp", "tcp6") and sock[0].state == "ESTABLISHED"
    assert sock[0].local.endswith(":4444")
    assert "127.0.0.1" in sock[0].remote
    # The nc processes, with their arguments.
    argvs = {e.argv for e in execs}
    assert ("nc", "-l", "-p", "4444", "-e", "/bin/sh") in argvs
    assert ("nc", "127.0.0.1", "4444") in argvs
    listener = next(e for e in execs if e.argv[:2] == ("nc", "-l"))
    assert listener.pid == shell.pid  # nc -e execs the shell in place
    # Ancestry stays inside the container: incus exec's sh -c is the top.
    assert shell.ancestry and shell.ancestry[-1].cmdline.startswith("sh -c ip link set lo up")
    # busybox applets: exec shows comm "exe" or the applet; a comm event names the applet.
    assert any(isinstance(e, ProcComm) and e.comm == "nc" for e in events) or any(
        e.comm == "nc" for e in execs)
    assert any(isinstance(e, ProcExit) and e.pid == shell.pid for e in events)
    assert not [s for s in systems if s[1] in ("wire_error", "enobufs", "seq_gap")]
