"""Differentiable expectations of an arch's cost (latency on a device, parameters, peak memory)
under the architecture distribution, and their Monte-Carlo check.

Two ways, chosen by size:

- **enumerated** (exact): every genotype of the distribution's support (nb201's 15,625 cells:
  a cell's price already has its dead branches removed, so edges couple exactly), deduplicated
  by arch key; E = sum_a P(a) f(a) with P(a) the product over the arch's active dims.
- **grouped** (exact when the cost is a sum of terms that each see at most two groups): dims are
  grouped by the first part of their name ("s1.b0.k" -> "s1"), a group too large to enumerate is
  split by its block prefix ("s1.b0"); each group's configs are enumerated jointly (an expand
  ratio with its kernel, a width with its depth), and every pair of groups that interacts (a
  width and the next stage's input channels) is enumerated jointly too:
  E = f(r) + sum_g E_g[f(r+c_g) - f(r)] + sum_{g,h} E_gh[interaction]. Pairs are screened for
  interaction on a few random configs; a term that sees three groups is missed, which is why
  `monte_carlo_check` measures every expectation against sampled archs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nas.core.protocols import ArchPricer
from nas.core.space import Arch, SearchSpace
from nas.hwtrain.logits import ArchLogits

__all__ = ["ExpectedCost", "arch_cost_fn", "monte_carlo_check", "price_fn"]

ValueFn = Callable[[Arch], float]


def price_fn(pricer: ArchPricer, space: SearchSpace) -> ValueFn:
    """An arch's price (ms) by `pricer`, remembered per arch key."""
    memo: dict[str, float] = {}

    def value(arch: Arch) -> float:
        key = space.key(arch)
        if key not in memo:
            memo[key] = float(pricer.arch_ms(space, arch))
        return memo[key]

    return value


def arch_cost_fn(space: SearchSpace, what: str) -> ValueFn:
    """`params` (millions) or `peak_memory` (activation MB, batch 1) of an arch."""
    if what not in ("params", "peak_memory"):
        raise ValueError(f"a cost term is 'params' or 'peak_memory', got {what!r}")

    def value(arch: Arch) -> float:
        cost = space.cost(arch)
        return cost.params / 1e6 if what == "params" else cost.peak_activation_bytes / 2**20

    return value


class ExpectedCost:
    """E[value(arch)] under `logits`' distributions; calling it returns a 0-d tensor with
    gradients to the logits. `exact` says whether the way chosen is exact for every cost."""

    def __init__(
        self,
        logits: ArchLogits,
        value: ValueFn,
        *,
        max_enumerate: int = 20_000,
        max_group: int = 256,
        seed: int = 0,
    ) -> None:
        self.logits, self.value, self.space = logits, value, logits.space
        dims = list(logits.choices)
        self._col = {d: i for i, d in enumerate(dims)}
        self._width = max(len(c) for c in logits.choices.values())
        n = math.prod(len(logits.support(d)) for d in dims)
        self.enumerated = n <= max_enumerate
        if self.enumerated:
            self._build_enumerated(dims)
        else:
            self._build_grouped(dims, max_group, np.random.default_rng(seed))

    @property
    def exact(self) -> bool:
        return self.enumerated

    @property
    def method(self) -> str:
        return "enumerated" if self.enumerated else f"grouped ({len(self.groups)} groups)"

    def _flat(self) -> Tensor:
        lp = self.logits.log_probs()
        rows = [
            torch.nn.functional.pad(v, (0, self._width - len(v)), value=0.0) for v in lp.values()
        ]
        return torch.cat([torch.stack(rows).flatten(), torch.zeros(1)])  # last: the pad slot

    def _index(self, dim: str, i: int) -> int:
        return self._col[dim] * self._width + i

    # -- enumerated ----------------------------------------------------------------------------
    def _build_enumerated(self, dims: list[str]) -> None:
        space = self.space
        seen: dict[str, list[int]] = {}
        archs: list[Arch] = []
        supports = [self.logits.support(d) for d in dims]
        for combo in itertools.product(*supports):
            arch = {d: self.logits.choices[d].values[i] for d, i in zip(dims, combo, strict=True)}
            key = space.key(arch)
            if key in seen:
                continue
            inactive = space.inactive_keys(arch)
            seen[key] = [
                self._index(d, i) for d, i in zip(dims, combo, strict=True) if d not in inactive
            ]
            archs.append(arch)
        pad = len(self._col) * self._width
        cols = np.full((len(archs), len(dims)), pad, dtype=np.int64)
        for r, idx in enumerate(seen.values()):
            cols[r, : len(idx)] = idx
        self._cols = torch.from_numpy(cols)
        self._values = torch.tensor([self.value(a) for a in archs], dtype=torch.float64)
        self.archs = archs

    # -- grouped -------------------------------------------------------------------------------
    def _build_grouped(self, dims: list[str], max_group: int, rng: np.random.Generator) -> None:
        groups = _groups(dims, lambda d: len(self.logits.support(d)), max_group)
        self.groups = groups
        self.ref = {d: self.logits.choices[d].values[self.logits.support(d)[0]] for d in dims}
        f0 = self.value(self.ref)
        self._f0 = f0
        configs = [list(itertools.product(*(self.logits.support(d) for d in g))) for g in groups]
        self._gcols = [
            torch.tensor([[self._index(d, i) for d, i in zip(g, c, strict=True)] for c in cs])
            for g, cs in zip(groups, configs, strict=True)
        ]
        single = [
            np.array([self.value(self._with(g, c)) - f0 for c in cs])
            for g, cs in zip(groups, configs, strict=True)
        ]
        self._single = [torch.from_numpy(s) for s in single]
        self._pairs: list[tuple[int, int, Tensor]] = []
        scale = max(abs(f0), 1e-12)
        for a, b in itertools.combinations(range(len(groups)), 2):
            if not self._interacts(a, b, configs, single, rng, scale):
                continue
            table = np.array(
                [
                    [
                        self.value(self._with(groups[a], ca, groups[b], cb))
                        - f0
                        - single[a][i]
                        - single[b][j]
                        for j, cb in enumerate(configs[b])
                    ]
                    for i, ca in enumerate(configs[a])
                ]
            )
            self._pairs.append((a, b, torch.from_numpy(table)))

    def _with(self, *parts: Any) -> Arch:
        arch = dict(self.ref)
        for g, c in zip(parts[::2], parts[1::2], strict=True):
            for d, i in zip(g, c, strict=True):
                arch[d] = self.logits.choices[d].values[i]
        return arch

    def _interacts(
        self,
        a: int,
        b: int,
        configs: list[list[tuple[int, ...]]],
        single: list[np.ndarray],
        rng: np.random.Generator,
        scale: float,
    ) -> bool:
        for _ in range(4):
            i, j = int(rng.integers(len(configs[a]))), int(rng.integers(len(configs[b])))
            both = self.value(
                self._with(self.groups[a], configs[a][i], self.groups[b], configs[b][j])
            )
            if abs(both - self._f0 - single[a][i] - single[b][j]) > 1e-9 * scale:
                return True
        return False

    def value_range(self) -> tuple[float, float]:
        """The lowest and highest cost: exact when enumerated; grouped, each group's extremes
        around the reference added (exact when the cost is additive over groups)."""
        if self.enumerated:
            return float(self._values.min()), float(self._values.max())
        low = self._f0 + sum(float(s.min()) for s in self._single)
        high = self._f0 + sum(float(s.max()) for s in self._single)
        return low, high

    # -- the expectation -----------------------------------------------------------------------
    def __call__(self) -> Tensor:
        flat = self._flat().double()
        if self.enumerated:
            p = torch.exp(flat[self._cols].sum(dim=1))
            return (p * self._values).sum()
        probs = [torch.exp(flat[c].sum(dim=1)) for c in self._gcols]
        total = torch.tensor(self._f0, dtype=torch.float64)
        for p, s in zip(probs, self._single, strict=True):
            total = total + (p * s).sum()
        for a, b, table in self._pairs:
            total = total + probs[a] @ table @ probs[b]
        return total


def _groups(dims: list[str], size: Callable[[str], int], max_group: int) -> list[list[str]]:
    """Dims by the first part of their name; a group over `max_group` configs split by block."""
    out: list[list[str]] = []
    for _, members in itertools.groupby(dims, key=lambda d: d.split(".")[0]):
        group = list(members)
        if math.prod(size(d) for d in group) <= max_group:
            out.append(group)
            continue
        for _, sub in itertools.groupby(group, key=lambda d: d.rsplit(".", 1)[0]):
            out.append(list(sub))
    return [g for g in out if math.prod(size(d) for d in g) > 1]


def monte_carlo_check(
    cost: ExpectedCost, n: int = 2000, seed: int = 0, rel: float = 0.02
) -> dict[str, Any]:
    """The expectation against the mean of `n` archs sampled from the same logits, priced by the
    same function: within max(`rel`, 3 standard errors) when `ratio` <= 1."""
    rng = np.random.default_rng(seed)
    values = np.array([cost.value(cost.logits.sample_arch(rng)) for _ in range(n)])
    mean = float(values.mean())
    se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    with torch.no_grad():
        expected = float(cost())
    tolerance = max(rel * abs(mean), 3 * se)
    return {
        "expected": expected,
        "mc_mean": mean,
        "mc_se": se,
        "n": n,
        "tolerance": tolerance,
        "ratio": abs(expected - mean) / tolerance if tolerance > 0 else math.inf,
        "method": cost.method,
    }
