"""Supernet checkpoints: safetensors for tensors, JSON for everything else (nothing is
unpickled), written so that a kill at any moment leaves a whole checkpoint, and read back."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from nas.core.elastic import Supernet
from nas.core.files import CheckpointError, read_json, sha256_file, write_json_atomic
from nas.core.space import SearchSpace
from nas.supernet.config import SupernetConfig, _jsonable
from nas.supernet.device import resolve_device

__all__ = ["CHECKPOINT_JSON", "CHECKPOINT_VERSION", "load_supernet"]

CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_VERSION = 1


@dataclass
class _State:
    """Where a training run stands; saved in every checkpoint."""

    phase: int = 0
    epoch: int = 0  # within the phase
    batch: int = 0  # next batch within the epoch
    step: int = 0  # optimizer steps done
    images: int = 0
    done: bool = False
    epoch_loss_sum: float = 0.0  # of the steps done in the current epoch
    history: list[dict[str, Any]] = field(default_factory=list)


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    state: dict[str, dict[str, Any]] = {}
    for idx, entries in sd["state"].items():
        out: dict[str, Any] = {}
        for k, v in entries.items():
            if isinstance(v, Tensor):
                name = f"optim.{idx}.{k}"
                tensors[name] = v.detach().cpu().contiguous()
                out[k] = {"tensor": name}
            else:
                out[k] = v
        state[str(idx)] = out
    return tensors, {"state": state, "param_groups": sd["param_groups"]}


def _unflatten_optimizer(meta: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for idx, entries in meta["state"].items():
        state[int(idx)] = {
            k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
            for k, v in entries.items()
        }
    return {"state": state, "param_groups": meta["param_groups"]}


def _save_checkpoint(
    out_dir: Path,
    supernet: Supernet,
    teacher: nn.Module | None,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LambdaLR,
    rng: np.random.Generator,
    state: _State,
    config: SupernetConfig,
    optimizer_phase: int,
    scaler: Mapping[str, Any] | None = None,
) -> Path:
    """Tensors first (a new file), then the JSON that names them (atomic): a kill at any moment
    leaves the previous checkpoint or the new one, never half of each."""
    tensors = {
        f"model.{k}": v.detach().cpu().contiguous() for k, v in supernet.state_dict().items()
    }
    if teacher is not None:
        tensors.update(
            {f"teacher.{k}": v.detach().cpu().contiguous() for k, v in teacher.state_dict().items()}
        )
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    tensors.update(opt_tensors)
    tensors["torch_rng"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda_rng"] = torch.cuda.get_rng_state()  # of the current GPU (dropout on it)
    name = f"checkpoint-{state.step:08d}.safetensors"
    path = out_dir / name
    tmp = out_dir / (name + ".tmp")
    save_file(tensors, str(tmp), metadata={"step": str(state.step)})
    os.replace(tmp, path)
    meta = {
        "version": CHECKPOINT_VERSION,
        "space": supernet.space.name,
        "supernet": type(supernet).__name__,
        "config": config.to_json(),
        "state": dataclasses.asdict(state),
        "tensors": name,
        "sha256": sha256_file(path),
        "optimizer": opt_meta,
        "optimizer_phase": optimizer_phase,
        "scheduler": sched.state_dict(),
        "sampler_rng": rng.bit_generator.state,
        "has_teacher": teacher is not None,
        "scaler": dict(scaler or {}),  # fp16's gradient scaler (empty without one)
    }
    write_json_atomic(out_dir / CHECKPOINT_JSON, _jsonable(meta))
    for old in out_dir.glob("checkpoint-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    with (out_dir / "train_log.jsonl.tmp").open("w") as f:
        for record in state.history:
            f.write(json.dumps(record) + "\n")
    os.replace(out_dir / "train_log.jsonl.tmp", out_dir / "train_log.jsonl")
    return path


def _retrain(out_dir: Path) -> str:
    return f"delete {out_dir} to train the supernet again, or restore the folder from a copy"


def _read_checkpoint(out_dir: Path) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    meta_path = out_dir / CHECKPOINT_JSON
    if not (meta_path.exists() or meta_path.is_symlink()):
        return None
    meta = read_json(
        meta_path, "a supernet checkpoint description", _retrain(out_dir), error=CheckpointError
    )
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            meta_path,
            f"has checkpoint version {meta.get('version')!r}; this code reads version "
            f"{CHECKPOINT_VERSION} (a file of another kind, or of another edge-nas version?)",
            _retrain(out_dir),
        )
    missing = sorted({"tensors", "sha256", "space", "config", "state"} - set(meta))
    if missing:
        raise CheckpointError(meta_path, f"lacks the field(s) {missing}", _retrain(out_dir))
    path = out_dir / str(meta["tensors"])
    if not path.is_file():
        raise CheckpointError(path, f"is missing (named in {meta_path.name})", _retrain(out_dir))
    if sha256_file(path) != meta["sha256"]:
        raise CheckpointError(
            path,
            f"does not match the checksum recorded in {meta_path.name} (cut short or changed)",
            _retrain(out_dir),
        )
    try:
        return meta, load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError
        raise CheckpointError(
            path, f"cannot be read as safetensors ({err})", _retrain(out_dir)
        ) from None


def _config_differences(stored: Mapping[str, Any], config: SupernetConfig) -> list[str]:
    now = config.to_json()
    ignore = {"checkpoint_every", *SupernetConfig.EXECUTION}
    return [
        f"{k}: stored {stored.get(k)!r}, given {now.get(k)!r}"
        for k in sorted(set(now) | set(stored))
        if k not in ignore and _jsonable(stored.get(k)) != _jsonable(now.get(k))
    ]


def load_supernet(
    space: SearchSpace,
    run_dir: str | os.PathLike[str],
    supernet: Supernet | None = None,
    map_location: str | torch.device = "cpu",
) -> Supernet:
    """The supernet of the latest checkpoint in `run_dir` (weights only; no unpickling), on
    `map_location` (cpu, auto, cuda, cuda:N or mps; checked to be there), whatever device
    trained it."""
    device = resolve_device(map_location)
    found = _read_checkpoint(Path(run_dir))
    if found is None:
        raise CheckpointError(
            Path(run_dir) / CHECKPOINT_JSON,
            "is missing: the folder holds no trained supernet",
            "train one first (train_supernet, or nas run), or name the right folder",
        )
    meta, tensors = found
    if meta["space"] != space.name:
        raise CheckpointError(
            run_dir,
            f"holds a supernet of space {meta['space']!r}, not {space.name!r}",
            "name the folder of this space's supernet, or the space it was trained for",
        )
    net = supernet if supernet is not None else _as_supernet(space.supernet())
    net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    return net.to(device)


def _as_supernet(module: nn.Module) -> Supernet:
    if not isinstance(module, Supernet):
        raise TypeError(
            f"space.supernet() must return a nas.core.elastic.Supernet, got {type(module).__name__}"
        )
    return module
