"""Small federated runs for the tests: `tiny` on one augmented copy of the digits."""

from __future__ import annotations

from typing import Any

import pytest

import nas
from nas.federated import FederatedSpec, LocalSettings, TierSpec

SMALL_DATA = {"copies_train": 1, "copies_val": 1, "copies_test": 1}


def small_spec(**changes: Any) -> FederatedSpec:
    """Two tiers (largest and smallest `tiny` subnet), two clients each, two quick rounds."""
    supernet = nas.get_space("tiny").supernet()
    settings: dict[str, Any] = {
        "tiers": (
            TierSpec("fast", 2, arch=supernet.largest_arch()),
            TierSpec("slow", 2, arch=supernet.smallest_arch()),
        ),
        "rounds": 2,
        "dataset_options": SMALL_DATA,
        "local": LocalSettings(batch_size=16, max_batches=2),
        "calibration_images": 32,
        "test_images": 64,
    }
    settings.update(changes)
    return FederatedSpec(**settings)


@pytest.fixture
def spec() -> FederatedSpec:
    return small_spec()
