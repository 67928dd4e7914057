"""Model checkpoints for the compression chain: safetensors weights plus a JSON description.

A checkpoint is two files side by side: ``<name>.safetensors`` (tensors only; reading it cannot
run code, unlike a pickle) and ``<name>.json`` (format, version, the SHA-256 of the tensor file,
the *structure* of the model and free-form info). The structure lists the channel counts of
every convolution, batch norm and linear layer, so a model whose channels were removed by
pruning is rebuilt from the plain architecture (``space.build(arch)``) by resizing those layers
before the weights are loaded. Loading is strict: a missing file, a changed or truncated tensor
file, another architecture or another tensor layout raises :class:`CheckpointError` saying what
was expected and what was found.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.core.files import CheckpointError, read_json, sha256_file

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "apply_structure",
    "load_model",
    "load_state_strict",
    "meta_path",
    "module_structure",
    "read_checkpoint",
    "save_model",
    "save_state",
    "sha256_file",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "edge-nas/compress-checkpoint"
CHECKPOINT_VERSION = 1
_MAX_LISTED = 6  # names listed in an error before "and N more"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read from disk: its tensors (verified against the recorded hash) and meta."""

    path: Path
    tensors: dict[str, torch.Tensor]
    kind: str
    structure: dict[str, dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""


def meta_path(path: str | os.PathLike[str]) -> Path:
    """The JSON file that describes the tensor file ``path``."""
    return Path(path).with_suffix(".json")


def _listed(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


# -- structure: the channel counts that pruning changes ------------------------------------------


def module_structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Channel counts of every conv, batch norm and linear layer, by module name."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = {
                "type": type(m).__name__,
                "in_channels": int(m.in_channels),
                "out_channels": int(m.out_channels),
                "groups": int(m.groups),
                "kernel_size": [int(k) for k in m.kernel_size],
                "bias": m.bias is not None,
            }
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            out[name] = {"type": type(m).__name__, "num_features": int(m.num_features)}
        elif isinstance(m, nn.Linear):
            out[name] = {
                "type": "Linear",
                "in_features": int(m.in_features),
                "out_features": int(m.out_features),
                "bias": m.bias is not None,
            }
    return out


_OTHER_ARCH = "name the checkpoint of this architecture, or delete it to redo the step"


def apply_structure(
    model: nn.Module,
    structure: Mapping[str, Mapping[str, Any]],
    source: str | os.PathLike[str] = "the checkpoint",
) -> nn.Module:
    """Resize ``model``'s layers in place to the channel counts of ``structure``.

    Resized layers get uninitialised weights: load a state dict afterwards. Raises
    :class:`CheckpointError` naming ``source`` (the checkpoint file) when the model lacks a
    module the structure names, or a module has another type or kernel (the checkpoint came
    from another architecture).
    """
    modules = dict(model.named_modules())
    missing = [n for n in structure if n not in modules]
    if missing:
        raise CheckpointError(
            source,
            f"describes modules that the built model does not have: {_listed(missing)}; the "
            f"checkpoint was made from another architecture (the built model is a "
            f"{type(model).__name__})",
            _OTHER_ARCH,
        )
    for name, spec in structure.items():
        m = modules[name]
        kind = str(spec.get("type", ""))
        if type(m).__name__ != kind:
            raise CheckpointError(
                source,
                f"module {name!r} is a {type(m).__name__} in the built model but a {kind} in "
                "the checkpoint; the checkpoint was made from another architecture",
                _OTHER_ARCH,
            )
        with torch.no_grad():
            if isinstance(m, nn.modules.conv._ConvNd):
                _resize_conv(name, m, spec, source)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                _resize_bn(m, int(spec["num_features"]))
            elif isinstance(m, nn.Linear):
                _resize_linear(m, int(spec["in_features"]), int(spec["out_features"]))
    return model


def _resize_conv(
    name: str, m: nn.modules.conv._ConvNd, spec: Mapping[str, Any], source: str | os.PathLike[str]
) -> None:
    kernel = tuple(int(k) for k in spec["kernel_size"])
    if kernel != tuple(m.kernel_size):
        raise CheckpointError(
            source,
            f"conv {name!r} has kernel {tuple(m.kernel_size)} in the built model but {kernel} in "
            "the checkpoint; the checkpoint was made from another architecture",
            _OTHER_ARCH,
        )
    cin, cout, groups = int(spec["in_channels"]), int(spec["out_channels"]), int(spec["groups"])
    if (cin, cout, groups) == (m.in_channels, m.out_channels, m.groups):
        return
    if groups < 1 or cin % groups or cout % groups:
        raise CheckpointError(
            source,
            f"conv {name!r}: in_channels={cin} and out_channels={cout} must be multiples of "
            f"groups={groups}",
            "the description was changed by hand: delete the checkpoint to redo the step",
        )
    m.in_channels, m.out_channels, m.groups = cin, cout, groups
    m.weight = nn.Parameter(torch.empty((cout, cin // groups, *kernel)))
    if m.bias is not None:
        m.bias = nn.Parameter(torch.empty(cout))


def _resize_bn(m: nn.modules.batchnorm._BatchNorm, n: int) -> None:
    if n == m.num_features:
        return
    m.num_features = n
    if m.affine:
        m.weight = nn.Parameter(torch.ones(n))
        m.bias = nn.Parameter(torch.zeros(n))
    if m.track_running_stats:
        m.running_mean = torch.zeros(n)
        m.running_var = torch.ones(n)


def _resize_linear(m: nn.Linear, n_in: int, n_out: int) -> None:
    if (n_in, n_out) == (m.in_features, m.out_features):
        return
    m.in_features, m.out_features = n_in, n_out
    m.weight = nn.Parameter(torch.empty((n_out, n_in)))
    if m.bias is not None:
        m.bias = nn.Parameter(torch.empty(n_out))


# -- writing and reading ---------------------------------------------------------------------


def save_state(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    *,
    kind: str,
    structure: Mapping[str, Mapping[str, Any]],
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``tensors`` to ``path`` (safetensors) and the description beside it (JSON).

    Both files are written to temporary names and renamed, the JSON last, so a reader never
    sees a description of a half-written tensor file.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint path must end in .safetensors; got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Cloned so that tied or strided tensors save as independent, contiguous ones.
    clean = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(clean, str(tmp), metadata={"format": CHECKPOINT_FORMAT, "kind": kind})
    os.replace(tmp, path)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "kind": kind,
        "tensor_file": path.name,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        "n_tensors": len(clean),
        "structure": {k: dict(v) for k, v in structure.items()},
        "info": dict(info or {}),
    }
    mpath = meta_path(path)
    tmp_meta = mpath.with_name(f".{mpath.name}.{os.getpid()}.tmp")
    tmp_meta.write_text(json.dumps(meta, indent=1, sort_keys=True, default=_json_default))
    os.replace(tmp_meta, mpath)
    return path


def _json_default(obj: object) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def save_model(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    kind: str = "fp32",
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Save a plain ``nn.Module``: its state dict and its structure (channel counts)."""
    return save_state(
        path, model.state_dict(), kind=kind, structure=module_structure(model), info=info
    )


def read_checkpoint(path: str | os.PathLike[str], kind: str | None = None) -> Checkpoint:
    """Read and verify a checkpoint; tensors are loaded by safetensors (no unpickling)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    mpath = meta_path(path)
    redo = f"delete {path.name} and {mpath.name} to redo the step that wrote them"
    if not mpath.is_file() and not mpath.is_dir():
        raise CheckpointError(
            mpath,
            f"the checkpoint description {mpath.name} is missing (a checkpoint is a "
            ".safetensors file with a .json file beside it, written by "
            "nas.compress.save_model / save_state)",
            "name a checkpoint written by edge-nas, or " + redo,
        )
    meta = read_json(mpath, "a checkpoint description (JSON)", redo, error=CheckpointError)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            mpath,
            f"is not a {CHECKPOINT_FORMAT!r} description (format field: {meta.get('format')!r})",
            redo,
        )
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            mpath,
            f"has checkpoint version {meta.get('version')!r}; this code reads version "
            f"{CHECKPOINT_VERSION}",
            redo,
        )
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(
            path,
            f"holds a {meta.get('kind')!r} checkpoint; expected a {kind!r} one",
            "name the checkpoint of that kind",
        )
    if not path.is_file():
        raise CheckpointError(
            path, f"the checkpoint tensor file is missing (its {mpath.name} exists)", redo
        )
    digest = sha256_file(path)
    if digest != meta.get("sha256"):
        raise CheckpointError(
            path,
            f"is corrupt: its SHA-256 is {digest[:16]}..., but {mpath.name} recorded "
            f"{str(meta.get('sha256'))[:16]}... (the file was changed or truncated after it "
            "was written)",
            "delete the step folder to recompute it",
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(path, f"cannot be read as safetensors ({err})", redo) from err
    structure = meta.get("structure")
    if not isinstance(structure, dict):
        raise CheckpointError(mpath, "has no 'structure' mapping", redo)
    return Checkpoint(
        path=path,
        tensors=tensors,
        kind=str(meta.get("kind")),
        structure=structure,
        info=dict(meta.get("info") or {}),
        sha256=digest,
    )


def load_state_strict(module: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what differs."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in tensors)
    unexpected = sorted(k for k in tensors if k not in own)
    resizing = _self_resizing_prefixes(module)
    shapes = sorted(
        f"{k}: model {tuple(own[k].shape)} vs checkpoint {tuple(tensors[k].shape)}"
        for k in own
        if k in tensors
        and own[k].shape != tensors[k].shape
        and k.rpartition(".")[0] not in resizing
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint: {_listed(missing)}")
        if unexpected:
            parts.append(f"not in the model: {_listed(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {_listed(shapes)}")
        raise CheckpointError(
            source,
            f"does not fit the model ({type(module).__name__}): "
            + "; ".join(parts)
            + ". The checkpoint was made from another architecture or another step",
            _OTHER_ARCH,
        )
    module.load_state_dict(dict(tensors), strict=True)


def _self_resizing_prefixes(module: nn.Module) -> set[str]:
    """Names of observer and fake-quantize submodules: their ranges, scales and zero points take
    their shape from the data they saw (per channel after calibration) and they resize
    themselves on loading."""
    return {
        name
        for name, m in module.named_modules()
        if any(c.__name__ in ("ObserverBase", "FakeQuantizeBase") for c in type(m).__mro__)
    }


def load_model(
    path: str | os.PathLike[str],
    build: Callable[[], nn.Module],
    *,
    kind: str | None = "fp32",
) -> tuple[nn.Module, Checkpoint]:
    """Rebuild a model saved by :func:`save_model`: ``build()``, resize to the saved structure,
    load the weights strictly. Returns the model (eval mode) and the checkpoint read."""
    ckpt = read_checkpoint(path, kind)
    model = build()
    apply_structure(model, ckpt.structure, path)
    load_state_strict(model, ckpt.tensors, str(path))
    return model.eval(), ckpt
