"""What a process tree listens on, and a check that it listens on loopback only.

Every server this project starts (distributed training's rendezvous store and gloo sockets
today, the federated-learning servers and clients of Flower later) must listen on loopback
only, unless the user names a network interface on purpose. A test starts the processes and
hands their ids to these helpers:

    listeners = listening_sockets([proc.pid])      # now: proc and all its descendants
    assert_loopback_only(listeners)                # fails naming process, address and port

Servers that live only as long as a run are caught by sampling while it runs:

    seen = watch_listeners([proc.pid], done=lambda: proc.poll() is not None)
    assert_loopback_only(seen)

"Listening" means a TCP socket in the LISTEN state or a UDP socket bound without a peer (it
receives from anyone). Loopback is 127.0.0.0/8 and ::1 (also as ::ffff:127.x.y.z); `0.0.0.0`
and `::` (every interface) and any other address fail. Needs psutil (the `dev` extra).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

__all__ = ["Listener", "assert_loopback_only", "listening_sockets", "watch_listeners"]


@dataclass(frozen=True, order=True)
class Listener:
    """One listening socket of one process."""

    pid: int
    command: str  # the process's command line, shortened, to say which process it is
    protocol: str  # "tcp" or "udp"
    address: str
    port: int

    @property
    def on_loopback(self) -> bool:
        ip = ipaddress.ip_address(self.address.split("%", 1)[0])  # drop an IPv6 zone
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.protocol} {host}:{self.port} in process {self.pid} ({self.command})"


def _tree(pids: Iterable[int], children: bool) -> list[psutil.Process]:
    """The processes still alive among `pids`, with all their descendants when `children`."""
    found: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            found[pid] = proc
            if children:
                found.update((c.pid, c) for c in proc.children(recursive=True))
        except psutil.NoSuchProcess:
            continue  # it has ended: it listens on nothing
    return list(found.values())


def _command(proc: psutil.Process) -> str:
    try:
        text = " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        return "?"
    return text if len(text) <= 100 else text[:97] + "..."


def listening_sockets(pids: Iterable[int], children: bool = True) -> list[Listener]:
    """The TCP and UDP sockets that the processes `pids` (and, with `children`, every process
    they started) listen on right now. A process that ends while it is read is skipped; one
    this user may not inspect raises psutil.AccessDenied rather than pass unchecked."""
    found: set[Listener] = set()
    for proc in _tree(pids, children):
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        command = _command(proc)
        for c in conns:
            if not c.laddr:
                continue
            tcp = c.type == socket.SOCK_STREAM
            if (tcp and c.status == psutil.CONN_LISTEN) or (not tcp and not c.raddr):
                protocol = "tcp" if tcp else "udp"
                found.add(Listener(proc.pid, command, protocol, c.laddr.ip, c.laddr.port))
    return sorted(found)


def watch_listeners(
    pids: Iterable[int],
    done: Callable[[], bool],
    interval: float = 0.02,
    timeout: float = 600.0,
    children: bool = True,
) -> list[Listener]:
    """Every listening socket seen in the process tree of `pids`, sampled every `interval`
    seconds until `done()` is true (then once more), for servers that live only while a run
    does. Raises TimeoutError after `timeout` seconds."""
    pids = list(pids)
    seen: set[Listener] = set()
    deadline = time.monotonic() + timeout
    while True:
        finished = done()
        seen.update(listening_sockets(pids, children))
        if finished:
            return sorted(seen)
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes {pids} still running after {timeout:.0f} s")
        time.sleep(interval)


def assert_loopback_only(listeners: Iterable[Listener]) -> None:
    """Fail, naming each process, address and port, if any socket listens beyond loopback."""
    outside = [str(s) for s in listeners if not s.on_loopback]
    assert not outside, "listening beyond loopback (127.0.0.0/8, ::1):\n  " + "\n  ".join(outside)
