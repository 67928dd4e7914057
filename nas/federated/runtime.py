"""Flower's deployment runtime on loopback: a SuperLink, one SuperNode per client, `flwr run`.

Every process binds to 127.0.0.1 (explicit, distinct ports: Flower's defaults clash), runs in a
session of its own, and is recorded with every descendant (psutil, sampled while the run goes:
Flower starts `flower-superexec`, `flwr-serverapp` and `flwr-clientapp` by bare name, so the
environment's `bin` leads PATH, and some of them outlive their parents). When the run ends,
fails or is interrupted, each recorded process and anything left in our sessions gets SIGTERM,
then SIGKILL after a grace period. While it runs, a listener on any address beyond loopback
stops the run. Flower's reaching for the network is switched off (telemetry, update checks, a
per-run FLWR_HOME; the legacy gRPC variables that open servers on 0.0.0.0 are removed).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import tomli_w

from nas.core.files import read_json, write_text_atomic
from nas.federated.spec import FederatedSpec
from nas.federated.state import STATE_JSON

__all__ = ["DeploymentError", "DeploymentReport", "run_deployment"]

logger = logging.getLogger(__name__)

_APP_TOML = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "edgenasfederated"
version = "1.0.0"
description = "edge-nas federated run"
license = "MIT"
dependencies = []

[tool.flwr.app]
publisher = "edgenas"

[tool.flwr.app.components]
serverapp = "{module}:server_app"
clientapp = "{module}:client_app"

[tool.flwr.app.config]
spec = ""
out = ""
"""
_DROP_ENV = ("FLWR_INTERNAL_GRPC_FLEET_API", "FLWR_INTERNAL_GRPC_CONTROL_API")


class DeploymentError(RuntimeError):
    """The deployment run failed; the message names the log to read."""


@dataclass
class DeploymentReport:
    """What a deployment run started and saw."""

    pids: list[int] = field(default_factory=list)  # every process recorded, descendants too
    listeners: list[tuple[int, str, int]] = field(default_factory=list)  # (pid, address, port)
    wall_s: float = 0.0
    survivors: list[int] = field(default_factory=list)  # alive after the stop (should be none)


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands to outgoing connections (Linux; elsewhere IANA's range)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


def _free_port(taken: set[int] | None = None) -> int:
    """A loopback port free now, below the ephemeral range: a port the kernel hands out (bind
    to 0) can be taken by one of the run's own outgoing connections before the server that
    was promised it binds it, and then a SuperNode dies at start."""
    taken = set() if taken is None else taken
    low, _ = _ephemeral_range()
    candidates = list(range(max(1024, low - 12000), low)) if low > 2048 else []
    random.SystemRandom().shuffle(candidates)
    for port in candidates[:200]:
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    taken.add(port)
    return port


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class _Processes:
    """Started processes, their descendants as seen while they ran, and their sessions."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.roots: list[subprocess.Popen[bytes]] = []
        self.seen: dict[int, psutil.Process] = {}
        self.sessions: set[int] = set()
        self.listeners: set[tuple[int, str, int]] = set()
        self.lock = threading.Lock()

    def start(self, name: str, cmd: Sequence[str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                list(cmd),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.roots.append(proc)
        self.sessions.add(proc.pid)  # a new session's id is its leader's pid
        self.sample()
        return proc

    def sample(self) -> None:
        """Record the descendants alive now, and what every recorded process listens on."""
        with self.lock:
            for root in self.roots:
                try:
                    p = psutil.Process(root.pid)
                    self.seen.setdefault(p.pid, p)
                    for c in p.children(recursive=True):
                        self.seen.setdefault(c.pid, c)
                except psutil.NoSuchProcess:
                    continue
            for p in list(self.seen.values()):
                try:
                    conns = p.net_connections(kind="inet")
                except (psutil.NoSuchProcess, psutil.ZombieProcess):
                    continue
                for c in conns:
                    listening = c.status == psutil.CONN_LISTEN or (
                        c.type == socket.SOCK_DGRAM and not c.raddr
                    )
                    if c.laddr and listening:
                        self.listeners.add((p.pid, c.laddr.ip, c.laddr.port))

    def ours(self) -> list[psutil.Process]:
        """Recorded processes still alive, and any process in one of our sessions."""
        found = {pid: p for pid, p in self.seen.items() if p.is_running()}
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) in self.sessions:
                    found.setdefault(p.pid, p)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return [p for p in found.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    def stop(self, grace_s: float) -> list[int]:
        """SIGTERM every process of ours, SIGKILL what is left after `grace_s`; reap the roots.
        Returns the pids still alive after that (none, unless the system refuses)."""
        self.sample()
        alive = self.ours()
        for p in alive:
            _signal(p, signal.SIGTERM)
        _, alive = psutil.wait_procs(alive, timeout=grace_s)
        for p in alive + self.ours():
            _signal(p, signal.SIGKILL)
        psutil.wait_procs(self.ours(), timeout=grace_s)
        for root in self.roots:
            with contextlib.suppress(subprocess.TimeoutExpired):
                root.wait(timeout=grace_s)
        return [p.pid for p in self.ours()]


def _signal(p: psutil.Process, sig: int) -> None:
    with contextlib.suppress(psutil.Error):
        p.send_signal(sig)


def _environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    root = str(Path(__file__).resolve().parents[2])  # the apps load this very code
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", FLWR_HOME=str(home))
    return env


def _wait_listening(
    port: int, proc: subprocess.Popen[bytes], timeout_s: float, name: str, logs: Path
) -> None:
    """Until `proc` accepts connections on `port`; its exit or the time running out is an
    error that names its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeploymentError(
                f"the {name} exited with code {proc.returncode} at start; read "
                f"{logs / (name.lower() + '.log')}{_log_excerpt(logs)}"
            )
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise DeploymentError(
        f"the {name} did not listen on 127.0.0.1:{port} in {timeout_s:.0f} s; read "
        f"{logs / (name.lower() + '.log')}"
    )


def _prepare(spec: FederatedSpec, out: Path, work: Path, link_port: int, module: str) -> Path:
    for sub in ("app", "home", "logs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    write_text_atomic(work / "app" / "pyproject.toml", _APP_TOML.format(module=module))
    connection = {
        "superlink": {
            "default": "edge",
            "edge": {"address": f"127.0.0.1:{link_port}", "insecure": True},
        }
    }
    write_text_atomic(work / "home" / "config.toml", tomli_w.dumps(connection))
    config = work / "run_config.toml"
    write_text_atomic(config, tomli_w.dumps({"spec": spec.to_json(), "out": str(out.resolve())}))
    return config


def _start_nodes(procs: _Processes, count: int, link_port: int, ports: set[int]) -> None:
    """One SuperNode per client on a port of its own, each checked listening (a node that
    died at start would stall round 1 until the round timeout)."""
    nodes = []
    for i in range(count):
        node_config = f"partition-id={i} num-partitions={count}"
        node_port = _free_port(ports)
        node = procs.start(
            f"supernode-{i}",
            [
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{link_port}",
                "--host",
                "127.0.0.1",
                "--port",
                str(node_port),
                "--node-config",
                node_config,
            ],
        )
        nodes.append((i, node_port, node))
    for i, node_port, node in nodes:
        _wait_listening(node_port, node, 120.0, f"SuperNode-{i}", procs.logs)


def run_deployment(
    spec: FederatedSpec,
    out_dir: str | os.PathLike[str],
    *,
    module: str = "nas.app.federated_apps",
    timeout_s: float = 1800.0,
    grace_s: float = 10.0,
    watch: Callable[[list[int]], None] | None = None,
) -> DeploymentReport:
    """Run `spec` on Flower's deployment runtime (all on loopback); the server's state and
    round log land in `out_dir`, Flower's files and logs in `out_dir/flower`. `watch` is
    called about five times a second with the pids recorded so far (tests list sockets)."""
    out = Path(out_dir)
    work = out / "flower"
    ports: set[int] = set()
    link_port = _free_port(ports)
    config = _prepare(spec, out, work, link_port, module)
    procs = _Processes(_environment(work / "home"), work / "logs")
    report = DeploymentReport()
    began = time.perf_counter()
    done = threading.Event()

    def watcher() -> None:
        while not done.wait(0.2):
            procs.sample()
            if watch is not None:
                watch(sorted(procs.seen))

    thread = threading.Thread(target=watcher, name="flower-watch", daemon=True)
    try:
        link = procs.start(
            "superlink",
            [
                "flower-superlink",
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(link_port),
                "--disable-runtime-dependency-installation",
            ],
        )
        thread.start()
        _wait_listening(link_port, link, 120.0, "SuperLink", procs.logs)
        _start_nodes(procs, spec.num_clients, link_port, ports)
        run = procs.start(
            "flwr-run",
            ["flwr", "run", str(work / "app"), "edge", "--run-config", str(config), "--stream"],
        )
        _wait_run(run, out, spec, procs, timeout_s)
    finally:
        done.set()
        if thread.is_alive():
            thread.join()
        report.survivors = procs.stop(grace_s)
        report.pids = sorted(procs.seen)
        report.listeners = sorted(procs.listeners)
        report.wall_s = time.perf_counter() - began
    outside = [entry for entry in report.listeners if not _loopback(entry[1])]
    if outside:
        raise DeploymentError(f"processes listened beyond loopback: {outside}")
    return report


def _finished(out: Path, spec: FederatedSpec) -> bool:
    path = out / STATE_JSON
    if not path.exists():
        return False
    return (
        int(read_json(path, "a federated server state", "delete it to rerun").get("round", 0))
        >= spec.rounds
    )


def _wait_run(
    run: subprocess.Popen[bytes],
    out: Path,
    spec: FederatedSpec,
    procs: _Processes,
    timeout_s: float,
) -> None:
    """Until the server has saved its last round (the stream may lag), `flwr run` fails, or
    the time is up; a listener beyond loopback stops the run at once."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _finished(out, spec):
            return
        if any(not _loopback(addr) for _, addr, _ in procs.listeners):
            raise DeploymentError("a process listened beyond loopback; the run was stopped")
        if run.poll() is not None:
            if _finished(out, spec):
                return
            logs = procs.logs
            raise DeploymentError(
                f"the run ended after round {_round(out)} of {spec.rounds} (flwr run exit code "
                f"{run.returncode}); read {logs / 'flwr-run.log'} and the other logs in {logs}"
                f"{_log_excerpt(logs)}"
            )
        time.sleep(0.5)
    raise DeploymentError(f"the run did not finish in {timeout_s:.0f} s (logs in {procs.logs})")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# warnings every loopback run prints, by our choice (no TLS, no node authentication)
_CHOSEN_WARNINGS = ("insecure", "authentication is disabled")


def _log_excerpt(logs: Path, tail: int = 30, flagged: int = 10) -> str:
    """The end of the run's own log (the ServerApp's output, a traceback when it raised) and
    the last warnings and errors of the SuperLink and SuperNodes, for the error message: the
    log folder may be gone by the time someone reads it (a test's temporary folder)."""
    parts = []
    run_log = logs / "flwr-run.log"
    if run_log.exists():
        lines = _ANSI.sub("", run_log.read_text(errors="replace")).splitlines()
        parts.append(f"--- last {tail} lines of {run_log.name} ---")
        parts.extend(lines[-tail:])
    for path in sorted(logs.glob("*.log")):
        if path == run_log:
            continue
        lines = _ANSI.sub("", path.read_text(errors="replace")).splitlines()
        hits = [ln for ln in lines if re.search(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b", ln)]
        hits = [ln for ln in hits if not any(chosen in ln for chosen in _CHOSEN_WARNINGS)]
        if hits:
            parts.append(f"--- warnings and errors in {path.name} ---")
            parts.extend(hits[-flagged:])
    return "\n" + "\n".join(parts) if parts else ""


def _round(out: Path) -> int:
    path = out / STATE_JSON
    return int(read_json(path, "a server state", "rerun").get("round", 0)) if path.exists() else 0
