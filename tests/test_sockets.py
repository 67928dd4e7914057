"""The loopback check of tests/sockets.py sees listeners beyond loopback, in a process and its
children, and names them."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.sockets import assert_loopback_only, listening_sockets, watch_listeners


def _listen(
    family: socket.AddressFamily, host: str, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    s = socket.socket(family, kind)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, 0))
    if kind == socket.SOCK_STREAM:
        s.listen()
    return s


@pytest.fixture
def opened() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for s in sockets:
        s.close()


def test_loopback_listeners_pass(opened: list[socket.socket]) -> None:
    opened.append(_listen(socket.AF_INET, "127.0.0.1"))
    with contextlib.suppress(OSError):  # 127.0.0.0/8 is loopback; macOS sets up only .1
        opened.append(_listen(socket.AF_INET, "127.0.0.2"))
    opened.append(_listen(socket.AF_INET, "127.0.0.1", socket.SOCK_DGRAM))
    if socket.has_ipv6:
        opened.append(_listen(socket.AF_INET6, "::1"))
    mine = {s.getsockname()[1] for s in opened}
    seen = [s for s in listening_sockets([os.getpid()], children=False) if s.port in mine]
    assert {s.port for s in seen} == mine
    assert_loopback_only(seen)


@pytest.mark.parametrize(
    ("family", "host", "kind"),
    [
        (socket.AF_INET, "0.0.0.0", socket.SOCK_STREAM),
        (socket.AF_INET6, "::", socket.SOCK_STREAM),
        (socket.AF_INET, "0.0.0.0", socket.SOCK_DGRAM),
    ],
)
def test_a_listener_on_every_interface_fails_with_its_process_and_port(
    opened: list[socket.socket], family: socket.AddressFamily, host: str, kind: int
) -> None:
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6")
    opened.append(_listen(family, host, kind))
    port = opened[0].getsockname()[1]
    with pytest.raises(AssertionError) as failed:
        assert_loopback_only(listening_sockets([os.getpid()], children=False))
    assert f"{port} in process {os.getpid()}" in str(failed.value)
    assert host in str(failed.value)


def test_a_child_listening_beyond_loopback_is_seen() -> None:
    """A server in a child process (as torchrun's workers are) is found from the parent's id."""
    code = (
        "import socket, sys\n"
        "s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen()\n"
        "print(s.getsockname()[1], flush=True); sys.stdin.read()\n"
    )
    shell = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; subprocess.run([sys.executable, '-c', {code!r}])",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert shell.stdout is not None
        port = int(shell.stdout.readline())
        seen = watch_listeners([shell.pid], done=lambda: True)
    finally:
        assert shell.stdin is not None
        shell.stdin.close()
        shell.wait(timeout=60)
    assert [s.port for s in seen] == [port]
    assert seen[0].pid != shell.pid  # the grandchild, found through the tree
    with pytest.raises(AssertionError, match=f"0.0.0.0:{port} in process {seen[0].pid}"):
        assert_loopback_only(seen)
