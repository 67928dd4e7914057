"""Client partitions of a training split: IID, or label skew by Dirichlet(alpha) (Hsu et al., 2019).

Partitions are made of *source images*: the embedded data's augmented copies of one digit share
a source id (`ImageDataset.groups`), and all of them go to one client, so no client's test of
generalisation leaks through a sibling copy. Every partition is a pure function of the labels,
the groups, the client count, alpha and the seed, so each client recomputes the same split and
keeps only its own index's share (`client_indices`); the pooled data never leaves the loader.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PARTITION_KINDS", "client_indices", "partition_indices"]

PARTITION_KINDS = ("iid", "dirichlet")
_MAX_DRAWS = 1000  # redraws until every client holds a source (only tiny alpha needs many)


def _sources(labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct source ids, sorted, and each one's label (a source has one label)."""
    ids, first = np.unique(groups, return_index=True)
    src_labels = labels[first]
    pairs = np.unique(np.stack([groups, labels]), axis=1)
    if pairs.shape[1] != len(ids):
        raise ValueError("a source id carries more than one label; groups must name sources")
    return ids, src_labels


def _dirichlet_split(
    src_labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray] | None:
    """Per class, shares over clients drawn from Dirichlet(alpha); None when a client got none."""
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for cls in np.unique(src_labels):
        members = np.flatnonzero(src_labels == cls)
        rng.shuffle(members)
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
        for client, chunk in enumerate(np.split(members, cuts)):
            parts[client].extend(int(i) for i in chunk)
    if any(not p for p in parts):
        return None
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


def partition_indices(
    labels: np.ndarray,
    groups: np.ndarray,
    num_clients: int,
    kind: str = "iid",
    alpha: float | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """Sample indices of each client's partition (sorted; disjoint; covering every sample).

    `kind` "iid" deals the shuffled sources out evenly; "dirichlet" gives each class's sources
    to the clients in shares drawn from Dirichlet(`alpha`) (small alpha: each client sees few
    classes), redrawn until every client holds at least one source.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    if len(labels) != len(groups):
        raise ValueError(
            f"need one group per label; got {len(groups)} groups, {len(labels)} labels"
        )
    if kind not in PARTITION_KINDS:
        raise ValueError(f"partition kind must be one of {PARTITION_KINDS}; got {kind!r}")
    if not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(f"num_clients must be an int >= 1; got {num_clients!r}")
    ids, src_labels = _sources(labels, groups)
    if num_clients > len(ids):
        raise ValueError(
            f"{num_clients} clients but only {len(ids)} source images to share among them; "
            f"use at most {len(ids)} clients"
        )
    rng = np.random.default_rng(seed)
    if kind == "iid":
        order = rng.permutation(len(ids))
        src_parts = [np.sort(p) for p in np.array_split(order, num_clients)]
    else:
        if alpha is None or not alpha > 0 or not np.isfinite(alpha):
            raise ValueError(f"a Dirichlet partition needs alpha > 0 (finite); got {alpha!r}")
        for _ in range(_MAX_DRAWS):
            split = _dirichlet_split(src_labels, num_clients, float(alpha), rng)
            if split is not None:
                src_parts = split
                break
        else:
            raise ValueError(
                f"Dirichlet(alpha={alpha}) left a client without data in {_MAX_DRAWS} draws; "
                "raise alpha or use fewer clients"
            )
    position = {int(g): i for i, g in enumerate(ids)}
    owner = np.empty(len(ids), dtype=np.int64)
    for client, part in enumerate(src_parts):
        owner[part] = client
    sample_owner = owner[[position[int(g)] for g in groups]]
    return [np.flatnonzero(sample_owner == c) for c in range(num_clients)]


def client_indices(
    labels: np.ndarray,
    groups: np.ndarray,
    index: int,
    num_clients: int,
    kind: str = "iid",
    alpha: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """The sample indices of client `index` alone (what a client app keeps)."""
    if not isinstance(index, int) or not 0 <= index < num_clients:
        raise ValueError(f"partition index must be an int in [0, {num_clients}); got {index!r}")
    return partition_indices(labels, groups, num_clients, kind, alpha, seed)[index]
