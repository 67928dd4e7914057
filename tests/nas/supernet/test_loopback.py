"""Distributed training listens on loopback only: every socket of a 2-process DDP run (rank 0's
rendezvous store, gloo's sockets) and of the torchrun launch that docs/how-to/torchrun.md
recommends (torchrun's agent too) is on 127.0.0.0/8 or ::1, sampled while the run trains.

On many hosts gloo would pick loopback by itself (the host name resolves to 127.0.0.1, as in
most containers), so the DDP test leaves GLOO_SOCKET_IFNAME naming a network interface in the
workers' environment, as a cluster's login scripts may: the run must stay on loopback anyway."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nas.supernet import init_distributed, train_supernet
from nas.supernet.distributed import _rendezvous_store
from search_spaces import TinySpace
from tests.nas.supernet.test_ddp import CONFIG, _data, _free_port
from tests.sockets import Listener, assert_loopback_only, listening_sockets, watch_listeners

ROOT = Path(__file__).resolve().parents[3]
HOWTO = ROOT / "docs" / "how-to" / "torchrun.md"
HOLD_S = 300.0  # how long a trained worker keeps its sockets open for the test to look

pytestmark = pytest.mark.skipif(
    not dist.is_available(), reason="torch.distributed is not available"
)


def _train_and_hold(out: str, flags: str) -> None:
    """Train like a rank of a DDP run, then say so (pid and MASTER_PORT in flags/trained-RANK)
    and keep the process group, and so its sockets, open until the test writes flags/go."""
    torch.set_num_threads(1)
    try:
        train_supernet(TinySpace(), _data(), out, CONFIG, progress=False)
        folder = Path(flags)
        rank = dist.get_rank()
        (folder / f"trained-{rank}").write_text(f"{os.getpid()} {os.environ['MASTER_PORT']}")
        deadline = time.monotonic() + HOLD_S
        while not (folder / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _worker(rank: int, world: int, port: int, out: str, flags: str, iface: str | None) -> None:
    # what torchrun puts in the environment
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    if iface is not None:
        os.environ["GLOO_SOCKET_IFNAME"] = iface
    _train_and_hold(out, flags)


def _network_interface() -> str | None:
    """An interface that is up with an IPv4 address beyond loopback (eth0, en0, ...), if any."""
    stats = psutil.net_if_stats()
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        up = name in stats and stats[name].isup
        if up and any(
            a.family == socket.AF_INET and not a.address.startswith("127.") for a in addrs
        ):
            return name
    return None


def _check(seen: list[Listener], flags: Path) -> None:
    """Loopback only; and the sample saw the run (rank 0's store on MASTER_PORT, a socket in
    every rank), so the check cannot pass by looking at the wrong moment."""
    assert_loopback_only(seen)
    ranks = [f.read_text().split() for f in sorted(flags.glob("trained-*"))]
    assert len(ranks) == 2, ranks
    (pid0, port), (pid1, _) = ((int(p), int(q)) for p, q in ranks)
    assert any(s.pid == pid0 and s.port == port for s in seen), (port, seen)
    assert any(s.pid == pid1 for s in seen), seen


def test_ddp_listens_on_loopback_only(tmp_path: Path) -> None:
    flags = tmp_path / "flags"
    flags.mkdir()
    args = (2, _free_port(), str(tmp_path / "ddp"), str(flags), _network_interface())
    context = mp.start_processes(_worker, args=args, nprocs=2, join=False, start_method="spawn")

    def trained() -> bool:
        ended = any(not p.is_alive() for p in context.processes)
        return ended or len(list(flags.glob("trained-*"))) == 2

    try:
        seen = watch_listeners(context.pids(), done=trained)
    finally:
        (flags / "go").touch()
        while not context.join(timeout=HOLD_S):
            pass
    _check(seen, flags)


def _howto_launch() -> list[str]:
    """The one-machine torchrun command of docs/how-to/torchrun.md, as words."""
    section = HOWTO.read_text().split("## One machine", 1)[1].split("\n## ", 1)[0]
    lines = re.findall(r"^(.*\btorchrun\b.*)$", section.split("```bash", 1)[1], re.MULTILINE)
    return shlex.split(lines[0])


def test_recommended_torchrun_launch_listens_on_loopback_only(tmp_path: Path) -> None:
    words = _howto_launch()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    while "=" in words[0]:
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words[0] == "torchrun" and words[-1] == "train.py", words
    path = os.environ.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
    flags = tmp_path / "flags"
    flags.mkdir()
    script = tmp_path / "train.py"
    script.write_text(
        "import sys\n"
        "from tests.nas.supernet.test_loopback import _train_and_hold\n"
        "_train_and_hold(sys.argv[1], sys.argv[2])\n"
    )
    argv = [sys.executable, "-m", "torch.distributed.run", *words[1:-1]]
    proc = subprocess.Popen([*argv, str(script), str(tmp_path / "ddp"), str(flags)], env=env)

    def trained() -> bool:
        return proc.poll() is not None or len(list(flags.glob("trained-*"))) == 2

    try:
        seen = watch_listeners([proc.pid], done=trained)
    finally:
        (flags / "go").touch()
        code = proc.wait(timeout=HOLD_S)
    assert code == 0
    _check(seen, flags)


def test_ranks_on_several_machines_need_an_interface_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_NAS_DIST_IFACE", raising=False)
    env = {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(RuntimeError, match="EDGE_NAS_DIST_IFACE names the network interface"):
        init_distributed("gloo")
    assert not dist.is_initialized()


def test_across_machines_the_store_listens_on_master_addr(monkeypatch: pytest.MonkeyPatch) -> None:
    """With an interface named, rank 0's store listens on MASTER_ADDR alone, not on `::`."""
    port = _free_port()
    try:
        socket.create_server(("127.0.0.2", 0)).close()
    except OSError:
        pytest.skip("127.0.0.2 is not on this host's loopback (only 127.0.0.1 is, as on macOS)")
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.2")  # stands for this machine's address
    monkeypatch.setenv("MASTER_PORT", str(port))
    store = _rendezvous_store(0, 1, on_loopback=False)
    store.set("key", "value")
    seen = [s for s in listening_sockets([os.getpid()], children=False) if s.port == port]
    assert [(s.address, s.port) for s in seen] == [("127.0.0.2", port)]
    del store
