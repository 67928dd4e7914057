"""Client partitions: by source image, disjoint, covering, seeded, skewed by Dirichlet alpha."""

from __future__ import annotations

import numpy as np
import pytest

from nas.federated import client_indices, partition_indices


def _data(
    n_sources: int = 200, copies: int = 3, classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    src_labels = rng.integers(0, classes, n_sources)
    groups = np.repeat(np.arange(100, 100 + n_sources), copies)
    order = rng.permutation(len(groups))  # copies of a source need not sit together
    return src_labels[groups - 100][order], groups[order]


@pytest.mark.parametrize("kind,alpha", [("iid", None), ("dirichlet", 0.5), ("dirichlet", 0.05)])
def test_partitions_split_sources_disjointly_and_cover_everything(kind: str, alpha) -> None:
    labels, groups = _data()
    parts = partition_indices(labels, groups, 12, kind, alpha, seed=1)
    together = np.concatenate(parts)
    assert len(together) == len(labels) and len(set(together.tolist())) == len(labels)
    assert all(len(p) > 0 for p in parts)
    owners = {}
    for client, part in enumerate(parts):
        for g in set(groups[part].tolist()):
            assert owners.setdefault(g, client) == client, "a source's copies crossed clients"
    again = partition_indices(labels, groups, 12, kind, alpha, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices(labels, groups, 12, kind, alpha, seed=2)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other, strict=True))
    assert np.array_equal(client_indices(labels, groups, 5, 12, kind, alpha, seed=1), parts[5])


def test_small_alpha_skews_labels_and_iid_does_not() -> None:
    labels, groups = _data(n_sources=600)

    def classes_per_client(kind: str, alpha) -> float:
        parts = partition_indices(labels, groups, 10, kind, alpha, seed=0)
        return float(np.mean([len(set(labels[p].tolist())) for p in parts]))

    assert classes_per_client("iid", None) == 10
    assert classes_per_client("dirichlet", 0.1) < 6
    sizes = [len(p) for p in partition_indices(labels, groups, 10, "iid", None, seed=0)]
    assert max(sizes) - min(sizes) <= 3  # whole sources of 3 copies, dealt evenly


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_clients": 201}, "only 200 source images"),
        ({"kind": "dirichlet", "alpha": 0.0}, "alpha > 0"),
        ({"kind": "dirichlet", "alpha": -1.0}, "alpha > 0"),
        ({"kind": "shards"}, "partition kind"),
        ({"num_clients": 0}, "num_clients"),
    ],
)
def test_bad_partitions_say_what_must_hold(kwargs, match: str) -> None:
    labels, groups = _data()
    args = {"num_clients": 4, "kind": "iid", "alpha": None, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        partition_indices(labels, groups, **args)


def test_a_client_index_outside_the_partitions_fails() -> None:
    labels, groups = _data()
    with pytest.raises(ValueError, match=r"partition index must be an int in \[0, 4\)"):
        client_indices(labels, groups, 4, 4)
