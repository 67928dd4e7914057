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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeploymentError(f"the SuperLink exited with code {proc.returncode} at start")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise DeploymentError(f"the SuperLink did not listen on 127.0.0.1:{port} in {timeout_s:.0f} s")


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
    link_port = _free_port()
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
        _wait_listening(link_port, link, 120.0)
        for i in range(spec.num_clients):
            node_config = f"partition-id={i} num-partitions={spec.num_clients}"
            procs.start(
                f"supernode-{i}",
                [
                    "flower-supernode",
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{link_port}",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(_free_port()),
                    "--node-config",
                    node_config,
                ],
            )
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
            )
        time.sleep(0.5)
    raise DeploymentError(f"the run did not finish in {timeout_s:.0f} s (logs in {procs.logs})")


def _round(out: Path) -> int:
    path = out / STATE_JSON
    return int(read_json(path, "a server state", "rerun").get("round", 0)) if path.exists() else 0
