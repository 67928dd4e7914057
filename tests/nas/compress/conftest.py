"""Fixtures of the compression tests: a small `tiny` arch and a small learnable data set."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from nas.data import ImageDataset
from search_spaces.tiny import TinySpace

SMALL_ARCH: dict[str, Any] = {
    "s0.depth": 2, "s0.width": 16, "s0.b0.k": 3, "s0.b0.e": 2, "s0.b1.k": 3, "s0.b1.e": 2,
    "s1.depth": 1, "s1.width": 24, "s1.b0.k": 3, "s1.b0.e": 2, "s1.b1.k": 3, "s1.b1.e": 2,
    "s2.depth": 1, "s2.width": 32, "s2.b0.k": 3, "s2.b0.e": 2, "s2.b1.k": 3, "s2.b1.e": 2,
}  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: the CPU is shared, and two spinning OpenMP threads on a busy 2-core
    machine cost more than they give."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def space() -> TinySpace:
    return TinySpace()


@pytest.fixture(scope="session")
def arch() -> dict[str, Any]:
    """Two residual blocks in the first stage, so pruning must keep a residual stream coupled."""
    return dict(SMALL_ARCH)


def _split(n: int, rng: np.random.Generator) -> TensorDataset:
    """Images whose class sets which of 10 (row, colour) stripes is bright: learnable in a few
    steps, noisy enough that accuracy is not trivially 100 %."""
    y = rng.integers(0, 10, n)
    x = rng.normal(0.0, 0.6, (n, 3, 32, 32)).astype(np.float32)
    for i, c in enumerate(y):
        row = 3 * int(c)
        x[i, int(c) % 3, row : row + 3, :] += 1.5
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)))


@pytest.fixture(scope="session")
def data() -> ImageDataset:
    rng = np.random.default_rng(0)
    train, val, test = _split(512, rng), _split(128, rng), _split(160, rng)
    return ImageDataset(
        name="stripes",
        train=train,
        val=val,
        test=test,
        num_classes=10,
        input_shape=(3, 32, 32),
        class_names=tuple(str(i) for i in range(10)),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )


@pytest.fixture(scope="session")
def trained(space: TinySpace, arch: dict[str, Any], data: ImageDataset) -> torch.nn.Module:
    """The small arch trained briefly, so that logits have margins (parity means something)."""
    from nas.compress import FinetuneConfig, train_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = space.build(arch)
    train_model(model, data.train, FinetuneConfig(epochs=3, lr=0.1, batch_size=64), seed=0)
    return model.eval()
