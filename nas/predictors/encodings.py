"""The path encoding of archs (BANANAS, White et al. 2021; NASLib): counts of the op sequences
along input-to-output paths, for cell spaces and chain spaces alike."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from nas.core.space import Arch, SearchSpace

__all__ = ["PathEncoding", "arch_paths"]


def _cell_paths(edges: Sequence[tuple[int, int, str]]) -> list[tuple[str, ...]]:
    """Op sequences of every path from node 0 to the last node of a DAG given as live edges
    (to, from, op); `skip_connect` is an op like any other, as in BANANAS."""
    if not edges:
        return []
    out = max(j for j, _, _ in edges)
    by_source: dict[int, list[tuple[int, str]]] = {}
    for j, i, op in edges:
        by_source.setdefault(i, []).append((j, op))
    paths: list[tuple[str, ...]] = []
    stack: list[tuple[int, tuple[str, ...]]] = [(0, ())]
    while stack:
        node, ops = stack.pop()
        if node == out:
            paths.append(ops)
            continue
        for j, op in by_source.get(node, []):
            stack.append((j, (*ops, op)))
    return paths


def arch_paths(space: SearchSpace, arch: Arch, chain_length: int = 2) -> list[tuple[str, ...]]:
    """The paths an encoding counts. A cell space that names its live edges (`live_edges(arch)`
    -> (to, from, op), as NAS-Bench-201's) gives its input-to-output op paths. Any other space is
    read as a chain of its dimensions; a whole chain is one path that every arch has once, so
    its sub-paths of up to `chain_length` consecutive choices are counted instead, each labelled
    by where it starts (a truncated path encoding: one-hot for 1, adjacent pairs for 2)."""
    live = getattr(space, "live_edges", None)
    if callable(live):
        return _cell_paths(live(arch))
    dims = space.keys
    inactive = space.inactive_keys(arch)
    steps = [f"{d}={arch[d]}" for d in dims if d not in inactive and d in arch]
    return [
        (f"@{start}", *steps[start : start + n])
        for n in range(1, chain_length + 1)
        for start in range(len(steps) - n + 1)
    ]


class PathEncoding:
    """Archs as counts of their paths (`arch_paths`). The vocabulary is taken from the archs
    passed to `fit` (a candidate pool: free, no accuracy), the `max_features` most common paths
    that not every arch shares; a path outside it is not counted."""

    def __init__(self, space: SearchSpace, max_features: int = 512, chain_length: int = 2):
        if max_features < 1:
            raise ValueError(f"max_features must be >= 1, got {max_features}")
        self.space, self.max_features, self.chain_length = space, max_features, chain_length
        self.vocabulary: list[tuple[str, ...]] = []
        self._column: dict[tuple[str, ...], int] = {}

    @property
    def names(self) -> list[str]:
        return ["path:" + ">".join(p) for p in self.vocabulary]

    def fit(self, archs: Sequence[Arch]) -> PathEncoding:
        seen: Counter[tuple[str, ...]] = Counter()
        for a in archs:
            seen.update(set(arch_paths(self.space, a, self.chain_length)))
        n = len(archs)
        common = [p for p, c in seen.most_common() if c < n]  # a path every arch has says nothing
        self.vocabulary = sorted(common[: self.max_features])
        self._column = {p: j for j, p in enumerate(self.vocabulary)}
        return self

    def transform(self, archs: Sequence[Arch]) -> np.ndarray:
        x = np.zeros((len(archs), len(self.vocabulary)))
        for row, a in enumerate(archs):
            for p in arch_paths(self.space, a, self.chain_length):
                j = self._column.get(p)
                if j is not None:
                    x[row, j] += 1.0
        return x
