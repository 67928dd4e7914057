"""One client's local training of its sub-model, and the server's per-tier evaluation.

Local training is plain SGD over the client's partition for a few epochs, on one thread, with
its shuffling seeded by (run seed, round, partition): a client rerun in a resumed round makes
the same update bit for bit. The server scores each tier's sub-model on a test split no client
holds, after re-estimating its batch-norm statistics on a server-side split (the running
statistics of shared channels mix tiers, as in HeteroFL's static-BN argument).

Both run through `nas.supernet`'s device-and-precision helper; the default, fp32 on the CPU,
is the reproducible one (a node opts into a GPU or bf16 in its node config, see the apps).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.core.elastic import resize_to
from nas.federated.family import SubModelFamily, Tier
from nas.federated.sampling import step_tier
from nas.supernet import Precision, correct_mask, fits_memory, recalibrate_bn

__all__ = [
    "LocalSettings",
    "calibration_batches",
    "evaluate_tier",
    "one_thread",
    "round_seed",
    "train_local",
]


@dataclass(frozen=True)
class LocalSettings:
    """What each client does per round."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_batches: int | None = None  # per epoch; a cap for quick runs and tests

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"local epochs and batch size must be >= 1; got {self.epochs}, {self.batch_size}"
            )
        if not self.lr > 0:
            raise ValueError(f"the learning rate must be > 0; got {self.lr}")


def round_seed(seed: int, round_index: int, partition: int) -> int:
    """The seed of one client's work in one round (independent streams per client and round)."""
    return int(np.random.SeedSequence([seed, round_index, partition]).generate_state(1)[0])


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one intra-op thread (a reproducible update), then restore the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_local(
    family: SubModelFamily,
    model: nn.Module,
    tier: Tier,
    images: Tensor,
    labels: Tensor,
    settings: LocalSettings,
    seed: int,
    precision: Precision | None = None,
    smaller: Sequence[Tier] = (),
    every_step: bool = False,
) -> float:
    """Train `model` as `tier`'s sub-model on (images N x C x H x W, labels N); return the mean
    training loss. Only the sub-model's elements receive gradients. With `smaller` (sub-models
    nested in `tier`'s, `nas.federated.nested_tiers`), each step trains one of `tier` and
    `smaller`, drawn uniformly from (seed, step) (FjORD's sampling); with `every_step`, each
    step sums the gradients of `tier` and every one of `smaller` (a client-side sandwich).

    `precision` (default fp32 on the CPU, on one thread) is where and how the steps run; the
    model comes back on the CPU, where its parameters go back to Flower."""
    if len(images) == 0:
        raise ValueError("a client needs at least one training image")
    prec = precision or Precision("fp32", torch.device("cpu"))
    model.to(prec.device)
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(
        params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    choices = [tier, *smaller]
    losses: list[float] = []
    model.train()
    threads = one_thread() if prec.device.type == "cpu" else contextlib.nullcontext()
    step = 0
    with threads:
        for _ in range(settings.epochs):
            order = torch.randperm(len(images), generator=generator)
            starts = range(0, len(order), settings.batch_size)[: settings.max_batches]
            for i in starts:
                batch = order[i : i + settings.batch_size]
                if len(batch) < 2:  # batch norm needs two images to normalise over
                    continue
                subs = choices if every_step else [choices[step_tier(seed, step, len(choices))]]
                step += 1
                opt.zero_grad(set_to_none=True)
                for sub in subs:  # one sub-model, or the sandwich's (gradients summed)
                    x = resize_to(prec.to(images[batch]), family.input_shape(sub)[1:])
                    with (
                        family.activated(model, sub),
                        fits_memory(prec.device, len(batch)),
                        prec.autocast(),
                    ):
                        loss = F.cross_entropy(model(x), prec.to(labels[batch]))  # x: B x C x H x W
                    prec.backward(loss)
                    losses.append(loss.item())
                prec.step(opt)
    model.to("cpu")
    return float(np.mean(losses)) if losses else float("nan")


def calibration_batches(images: Tensor, batch_size: int) -> list[Tensor]:
    """`images` (N x C x H x W) in the fewest batches of at most `batch_size`, their sizes
    within one of each other. `recalibrate_bn` gives every batch's statistics equal weight, so
    cutting 269 images into 256 + 13 would weigh 13 images as much as 256 (up to 2 points of
    test accuracy on the benchmark's tiers); near-equal batches weigh the images near-equally."""
    if batch_size < 1:
        raise ValueError(f"the calibration batch size must be >= 1; got {batch_size}")
    if len(images) == 0:
        return []
    return list(torch.tensor_split(images, math.ceil(len(images) / batch_size)))


def evaluate_tier(
    family: SubModelFamily,
    model: nn.Module,
    tier: Tier,
    calibration: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    batch_size: int = 256,
    precision: Precision | None = None,
) -> np.ndarray:
    """Per test image, whether `tier`'s sub-model (batch norm re-estimated on `calibration`,
    server-side images) classifies it right. `model`'s batch-norm statistics change; it runs
    on `precision`'s device under its autocast (default fp32 on the CPU) and stays there."""
    size = family.input_shape(tier)[1:]
    prec = precision or Precision("fp32", torch.device("cpu"))
    model.to(prec.device)
    with family.activated(model, tier), torch.no_grad(), prec.autocast():
        recalibrate_bn(model, calibration_batches(calibration, batch_size), input_size=size)
        return correct_mask(model, test_images, test_labels, batch_size, input_size=size)
