"""The run config's `compute` section turned into what the training loops take: the supernet's
execution settings, the `Precision` (device and autocast) of evaluation, KD and QAT, and an
out-of-memory error that names the run config's keys to change.

Which of its keys stages fingerprint is decided here (`exempt_keys`): where a run executes is
not what it computes, so `device`, `channels_last`, `compile` and `workers` are in no stage's
fingerprint, while `precision` and `grad_accum` are the supernet stage's keys (builtin_stages),
left out of it at the values runs made before them used (`key_added`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from nas.app.errors import InputError
from nas.app.stages import exempt_keys, key_added

__all__ = ["handed_on", "memory_remedy", "run_precision", "supernet_execution"]

exempt_keys(
    {
        "compute.device": "where a run computes, not what: moving it from the CPU to a GPU "
        "keeps its finished stages (kernels round differently, within float noise)",
        "compute.channels_last": "the same arithmetic in another memory layout",
        "compute.compile": "the same arithmetic, compiled and fused",
        "compute.workers": "augmentation is seeded by (seed, epoch, image index): the batches "
        "are the same whatever the number of workers",
    }
)


# the supernet stage's keys since this section came: at these values a run trains as runs made
# before it did, so their folders keep the supernet and every stage after it
key_added("compute.precision", "fp32")
key_added("compute.grad_accum", 1)


def supernet_execution(compute: Any) -> dict[str, Any]:
    """The `train_supernet` settings of a `ComputeConfig` (keyword arguments)."""
    return {
        "device": compute.device,
        "precision": compute.precision,
        "channels_last": compute.channels_last,
        "compile": compute.compile,
        "num_workers": compute.workers,
        "accumulate": compute.grad_accum,
    }


def handed_on(supernet: Any) -> Any:
    """The trained supernet on the CPU, in the default memory layout, in eval mode: the stages
    after it export subnets from it (evaluation moves each to compute.device; the compression
    chain quantizes and exports on the CPU)."""
    import torch

    net = supernet.to("cpu")
    return net.to(memory_format=torch.contiguous_format).eval()


def run_precision(compute: Any) -> Any:
    """The `nas.supernet.Precision` (device and autocast) of evaluation, KD and QAT."""
    from nas.supernet import execution

    return execution(compute.device, compute.precision)


@contextlib.contextmanager
def memory_remedy(stage: str, compute: Any, batch_key: str) -> Iterator[None]:
    """Run the block; a batch that does not fit the device's memory (`OutOfMemory`) becomes bad
    input that names the run config's keys to change (`batch_key`, compute.grad_accum where it
    applies, compute.precision)."""
    from nas.supernet import OutOfMemory

    try:
        yield
    except OutOfMemory as err:
        smaller = max(1, err.batch_size // 2)
        known = f"; the largest that did was {err.fitted}" if err.fitted else ""
        accum = (
            f" and raise compute.grad_accum to {2 * compute.grad_accum} to keep the effective batch"
            if batch_key == "supernet.batch_size"
            else ""
        )
        bf16 = "" if compute.precision != "fp32" else ", or set compute.precision: bf16"
        raise InputError(
            f"{stage}: a batch of {err.batch_size} images does not fit the memory of "
            f"{err.device}{known}. In the run config, lower {batch_key} (e.g. {smaller}){accum}"
            f"{bf16}"
        ) from err
