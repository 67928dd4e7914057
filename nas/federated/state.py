"""The server's state after each finished round: weights in safetensors, the rest in JSON.

Weights go to a new ``round-NNNN.safetensors`` first, then ``server_state.json`` (atomic) names
it with its checksum, so a run killed at any moment leaves the previous round's state or the new
one, never half of each; a resumed run starts at the round after the last one recorded. The
JSON holds the round, the run spec's digest (a resume with other settings is refused), the
per-round history and the seeds: every round's randomness derives from (seed, round, client),
so no random-generator state has to be carried. A server that steps with momentum (FedAvgM)
keeps its buffer in the same file, under names prefixed ``server-momentum/``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from nas.core.files import CheckpointError, read_json, sha256_file, write_json_atomic

__all__ = ["STATE_JSON", "ServerState", "load_server_state", "save_server_state"]

STATE_JSON = "server_state.json"
STATE_VERSION = 1
MOMENTUM_PREFIX = "server-momentum/"  # no state-dict name holds a "/"


@dataclass
class ServerState:
    """Where a federated run stands: `round` rounds are finished and folded into `weights`."""

    spec_digest: str
    round: int
    weights: dict[str, Tensor]
    history: list[dict[str, Any]] = field(default_factory=list)
    momentum: dict[str, Tensor] = field(default_factory=dict)  # FedAvgM's buffer, by name


def _redo(out_dir: Path) -> str:
    return f"delete {out_dir} to start the federated run again, or restore the folder from a copy"


def save_server_state(out_dir: str | os.PathLike[str], state: ServerState) -> Path:
    """Write `state` (tensors first, then the JSON naming them) and drop older weight files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"round-{state.round:04d}.safetensors"
    tmp = out / (name + ".tmp")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.weights.items()}
    tensors |= {
        MOMENTUM_PREFIX + k: v.detach().cpu().contiguous() for k, v in state.momentum.items()
    }
    save_file(tensors, str(tmp), metadata={"round": str(state.round)})
    os.replace(tmp, out / name)
    meta = {
        "version": STATE_VERSION,
        "spec_digest": state.spec_digest,
        "round": state.round,
        "tensors": name,
        "sha256": sha256_file(out / name),
        "history": state.history,
    }
    path = write_json_atomic(out / STATE_JSON, meta)
    for old in out.glob("round-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return path


def load_server_state(
    out_dir: str | os.PathLike[str], spec_digest: str, like: Mapping[str, Tensor]
) -> ServerState | None:
    """The saved state in `out_dir`, or None when there is none; `CheckpointError` when it is
    damaged, of another run spec, or does not fit the model `like` (its state dict)."""
    out = Path(out_dir)
    meta_path = out / STATE_JSON
    if not meta_path.exists():
        return None
    meta = read_json(meta_path, "a federated server state", _redo(out), error=CheckpointError)
    if meta.get("version") != STATE_VERSION:
        raise CheckpointError(
            meta_path, f"has version {meta.get('version')!r}, not {STATE_VERSION}", _redo(out)
        )
    if meta.get("spec_digest") != spec_digest:
        raise CheckpointError(
            meta_path,
            f"was written by a run with other settings (spec digest {meta.get('spec_digest')!r}, "
            f"this run's {spec_digest!r})",
            f"use another output folder, or {_redo(out)}",
        )
    path = out / str(meta.get("tensors"))
    if not path.is_file() or sha256_file(path) != meta.get("sha256"):
        raise CheckpointError(
            path, "is missing or does not match its recorded checksum", _redo(out)
        )
    try:
        weights = load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError
        raise CheckpointError(path, f"cannot be read as safetensors ({err})", _redo(out)) from None
    momentum = {
        k.removeprefix(MOMENTUM_PREFIX): weights.pop(k)
        for k in list(weights)
        if k.startswith(MOMENTUM_PREFIX)
    }
    if set(momentum) - set(like):
        raise CheckpointError(path, "holds a momentum buffer this run's model lacks", _redo(out))
    bad = sorted(
        k for k, v in like.items() if k not in weights or tuple(weights[k].shape) != tuple(v.shape)
    )
    if bad or set(weights) - set(like):
        raise CheckpointError(
            path, f"does not fit this run's model (entries {bad[:5]} differ)", _redo(out)
        )
    ordered = {k: weights[k].to(like[k].dtype) for k in like}
    history = list(meta.get("history", []))
    return ServerState(spec_digest, int(meta["round"]), ordered, history, momentum)
