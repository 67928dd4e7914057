"""Distributed data parallel training: join torchrun's process group on loopback, check ranks."""

from __future__ import annotations

import json
import os
import socket
import warnings
import zlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nas.core.space import Arch

__all__ = ["DistInfo", "init_distributed"]

#: names the network interface of a run across machines (e.g. eth0); unset, the run stays on
#: this machine and every socket it opens listens on loopback only
_IFACE_ENV = "EDGE_NAS_DIST_IFACE"
_LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str | None = None, interface: str | None = None) -> DistInfo:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_PORT); gloo on CPU, nccl on GPU. Without it, one process.

    Every socket listens on loopback: rank 0 hosts the rendezvous store on 127.0.0.1:MASTER_PORT
    (torch's own store would listen on every interface) and gloo / NCCL are pinned to the
    loopback interface, so all ranks must run on this machine. A run across machines names the
    network interface to use, with `interface` or the environment variable EDGE_NAS_DIST_IFACE
    (e.g. `eth0`), on every machine: then gloo / NCCL use that interface and rank 0's store
    listens on MASTER_ADDR, the address the other machines are told to reach.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    rank = int(_env("RANK"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    interface = interface or os.environ.get(_IFACE_ENV) or None
    if interface is None:
        _check_one_machine(world)
    # gloo and NCCL read these when the group is made: their listening sockets go on this
    # interface, not on the one the host name resolves to (gloo) or the first non-loopback
    # one (NCCL)
    os.environ["GLOO_SOCKET_IFNAME"] = os.environ["NCCL_SOCKET_IFNAME"] = (
        interface or _loopback_interface()
    )
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    store = _rendezvous_store(rank, world, on_loopback=interface is None)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set; start the processes with torchrun")
    return value


def _check_one_machine(world: int) -> None:
    """Without an interface named, every rank must be on this machine (torchrun says how many
    are in LOCAL_WORLD_SIZE)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if local < world:
        raise RuntimeError(
            f"WORLD_SIZE={world} processes run on more than this machine "
            f"(LOCAL_WORLD_SIZE={local}), but distributed runs listen on loopback only unless "
            f"{_IFACE_ENV} names the network interface to use (e.g. {_IFACE_ENV}=eth0) on "
            "every machine"
        )


def _loopback_interface() -> str:
    """The loopback interface's name: `lo` on Linux, `lo0` on macOS and the BSDs."""
    names = {name for _, name in socket.if_nameindex()}
    for name in ("lo", "lo0"):
        if name in names:
            return name
    raise RuntimeError(
        f"no loopback interface (lo or lo0) among {sorted(names)}; set {_IFACE_ENV} to the "
        "interface the processes of this run should use"
    )


def _rendezvous_store(rank: int, world: int, on_loopback: bool) -> dist.Store:
    """The store the ranks meet on: torchrun's agent store when torchrun shares it, else one
    that rank 0 hosts on 127.0.0.1 (or on MASTER_ADDR, for a run across machines)."""
    port = int(_env("MASTER_PORT"))
    timeout = dist.constants.default_pg_timeout
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchrun opened this store before we ran, on every interface (torch cannot bind it to
        # one address); joining it opens no socket here
        if on_loopback and rank == 0:
            warnings.warn(
                "torchrun's own rendezvous store listens on every network interface; launch "
                "as docs/how-to/torchrun.md shows (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, "
                "--rdzv-conf store_type=file) to keep the run on loopback",
                RuntimeWarning,
                stacklevel=3,
            )
        agent = dist.TCPStore(_env("MASTER_ADDR"), port, world, is_master=False, timeout=timeout)
        return dist.PrefixStore("default_pg", agent)  # as torch's env:// rendezvous does
    host = _LOOPBACK if on_loopback else _env("MASTER_ADDR")
    if rank != 0:
        return dist.TCPStore(host, port, world, is_master=False, timeout=timeout)
    # TCPStore binds its own listener to every interface; one we bound to `host` is used as is
    return dist.TCPStore(
        host, port, world, is_master=True, timeout=timeout, master_listen_fd=_listen(host, port)
    )


def _listen(host: str, port: int) -> int:
    """A TCP socket listening on host:port, as a descriptor the store then owns."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        # as TCPStore's own listener does: a port left in TIME_WAIT by the last run is free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen()
    except OSError as e:
        sock.close()
        hint = "choose another MASTER_PORT" if host == _LOOPBACK else "is MASTER_ADDR this machine?"
        raise RuntimeError(
            f"cannot listen on {host}:{port} for the rendezvous store ({e}); {hint}"
        ) from e
    return sock.detach()


def _check_same_archs(archs: list[Arch], device: torch.device) -> None:
    """Every rank must train the same subnets; a cheap all-reduce of a hash checks it."""
    h = zlib.crc32(json.dumps(archs, sort_keys=True).encode())
    t = torch.tensor([h, -h], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if int(t[0]) != h or int(t[1]) != -h:
        raise RuntimeError(
            "ranks sampled different subnets in one step; every rank must run the same config "
            "(seed) and code"
        )
