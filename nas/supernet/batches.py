"""The supernet loop's batches: a seeded order per epoch, each rank's micro-batches of it, read
from memory or decoded by DataLoader workers (streamed image folders)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from nas.data import StreamedImages, StreamLoader, collate_images

__all__: list[str] = []


class _Images:
    """Random access to (images, labels) batches of a dataset, fast for TensorDatasets; a
    streamed dataset (or any, with workers) is read by DataLoader workers instead."""

    def __init__(self, data: Any) -> None:
        train = getattr(data, "train", None)
        if isinstance(train, Dataset):
            data = train  # an ImageDataset: train on its train split
        if (
            isinstance(data, tuple | list)
            and len(data) == 2
            and all(isinstance(t, Tensor) for t in data)
        ):
            data = TensorDataset(*data)
        if not isinstance(data, Dataset):
            raise TypeError(
                "data must be an ImageDataset (its train split is used), a torch Dataset of "
                f"(image, label) pairs or an (images, labels) tuple, got {type(data).__name__}"
            )
        self.dataset = data
        self.tensors = data.tensors if isinstance(data, TensorDataset) else None
        self.n = len(data)  # type: ignore[arg-type]
        self.on_bad = str(getattr(data, "on_bad", "error"))

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        if self.tensors is not None:
            return self.tensors[0][idx], self.tensors[1][idx]  # B x C x H x W, B
        items = [self.dataset[int(i)] for i in idx]
        return torch.stack([it[0] for it in items]), torch.as_tensor([int(it[1]) for it in items])


def _epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)  # n


def _index_lists(
    order: Tensor, steps: range, batch_size: int, accumulate: int, rank: int, world: int
) -> list[list[int]]:
    """The sample indices of this rank's micro-batches for `steps`, in order: a step takes the
    next `batch_size * accumulate * world` of `order`, and rank r its r-th share of them."""
    gb = batch_size * accumulate * world
    return [
        order[step * gb + j * batch_size : step * gb + (j + 1) * batch_size].tolist()
        for step in steps
        for j in range(rank * accumulate, (rank + 1) * accumulate)
    ]


def _micro_batches(
    images: _Images,
    index_lists: list[list[int]],
    epoch: int,
    num_workers: int,
    pin_memory: bool,
    on_skip: Callable[[int], None],
) -> Generator[tuple[Tensor, Tensor], None, None]:
    """(images, labels) of each index list, in order: indexed from memory (tensors), or read
    by `num_workers` DataLoader workers (streamed data, any Dataset), whose augmentation is seeded by
    (seed, epoch, index) so the batches do not depend on them. Images a worker could not read
    are left out and counted (`on_skip`) or named in a FileProblem, as the data says."""
    if images.tensors is not None:  # in memory already: workers would only copy it
        for idx in index_lists:
            yield images.batch(torch.as_tensor(idx))
        return
    streamed = isinstance(images.dataset, StreamedImages)
    if isinstance(images.dataset, StreamedImages):
        images.dataset.set_epoch(epoch)  # the workers copy it when the loader starts
    loader = DataLoader(
        images.dataset,
        batch_sampler=index_lists,
        num_workers=num_workers,
        collate_fn=collate_images if streamed else None,
        pin_memory=pin_memory,
    )
    checker = StreamLoader(loader, images.on_bad)
    for batch in loader:
        if not streamed:
            yield batch[0], batch[1]
            continue
        x, y, bad = batch
        if len(y) == 0:  # every image of the micro-batch unreadable: nothing to train on
            checker.on_bad = "error"
        checker.check(bad)
        on_skip(len(bad))
        yield x, y
