"""The frontier sampler's candidates: archs with their cheap metrics, canonical keys and predictor
features, each arch priced once; a fixed pool (given or enumerated) or one drawn and refreshed."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from nas.core.space import Arch
from nas.predictors import ArchFeatures
from nas.search.objectives import SearchProblem
from nas.search.pareto import pareto_mask

__all__ = [
    "Candidates",
    "Pool",
]

log = logging.getLogger(__name__)


class Pool:
    """Candidates with their cheap metric values, canonical keys and features."""

    def __init__(
        self,
        archs: list[Arch],
        keys: list[str],
        canon: list[str],
        cheap: np.ndarray,
        feasible: np.ndarray,
    ) -> None:
        self.archs, self.keys, self.canon = archs, keys, canon
        self.cheap, self.feasible = cheap, feasible
        self.index = {k: i for i, k in enumerate(keys)}
        self.x = np.zeros((len(archs), 0))


class Candidates:
    """The pool a frontier sampler chooses from, and its per-arch caches.

    The arguments are the sampler's (`FrontierSampler` explains them); `features` are the extra
    free cost features. The pool is fixed when `candidates` are given or the space has at most
    `pool_limit` genotypes; otherwise it is drawn with the sampler's generator, and a share
    `pool_refresh` of it is replaced before each batch.
    """

    def __init__(
        self,
        problem: SearchProblem,
        candidates: Sequence[Arch] | None,
        pool_limit: int,
        pool_size: int,
        pool_refresh: float,
        one_per_class: bool,
        features: Mapping[str, Callable[[Sequence[Arch]], np.ndarray]],
        encoding: str = "onehot",
    ) -> None:
        self.problem = problem
        self.cheap_names = problem.cheap_used
        self.extra_features = dict(features)
        self.encoding = encoding
        self.candidates = list(candidates) if candidates is not None else None
        self.pool_limit, self.pool_size, self.one_per_class = pool_limit, pool_size, one_per_class
        self.pool_refresh = pool_refresh
        self._drawn: list[tuple[str, Arch]] = []  # the drawn pool (key, arch), newest first
        # per arch key: canonical key, cheap metric row, feature row (filled on first pricing)
        self._canon_of: dict[str, str] = {}
        self._cheap_of: dict[str, np.ndarray] = {}
        self._x_of: dict[str, np.ndarray] = {}
        self.pool: Pool | None = None
        self.features: ArchFeatures | None = None
        self.static = False
        # pricing and featurizing a fixed pool, once per sampler: wall and CPU seconds
        self.setup_s = self.setup_cpu_s = 0.0

    def price(self, archs: list[Arch], keys: list[str]) -> tuple[list[str], np.ndarray]:
        """Canonical keys and cheap metric rows of archs, each arch priced once per sampler."""
        if len(self._cheap_of) > 50 * max(self.pool_size, 1000):  # bound the caches' memory
            self._canon_of.clear()
            self._cheap_of.clear()
            self._x_of.clear()
        new = [i for i, k in enumerate(keys) if k not in self._cheap_of]
        if new:
            fresh = [archs[i] for i in new]
            cheap = self.problem.cheap_matrix(fresh, self.cheap_names)
            space = self.problem.space
            for row, i in enumerate(new):
                self._cheap_of[keys[i]] = cheap[row]
                self._canon_of[keys[i]] = space.canonical_key(archs[i])
        canon = [self._canon_of[k] for k in keys]
        rows = [self._cheap_of[k] for k in keys]
        cheap_all = np.array(rows).reshape(len(keys), len(self.cheap_names))
        return canon, cheap_all

    def make_pool(self, archs: list[Arch], keys: list[str] | None = None) -> Pool:
        p, space = self.problem, self.problem.space
        if keys is None:
            keys = [space.key(a) for a in archs]
        uniq = dict(zip(keys, archs, strict=True))  # first of duplicated genotypes
        keys, archs = list(uniq), list(uniq.values())
        canon, cheap = self.price(archs, keys)
        values = {n: cheap[:, j] for j, n in enumerate(self.cheap_names)}
        feasible = np.broadcast_to(np.asarray(p.feasible_cheap(values), bool), (len(archs),))
        feasible = feasible.copy()
        if self.one_per_class:
            keep = self._class_representatives(canon, cheap)
            archs = [a for a, k in zip(archs, keep, strict=True) if k]
            keys = [a for a, k in zip(keys, keep, strict=True) if k]
            canon = [a for a, k in zip(canon, keep, strict=True) if k]
            cheap, feasible = cheap[keep], feasible[keep]
        return Pool(archs, keys, canon, cheap, feasible)

    def _class_representatives(self, canon: list[str], cheap: np.ndarray) -> np.ndarray:
        objs = np.array(
            [self.cheap_names.index(n) for n in self.problem.cheap_objectives], dtype=np.int64
        )
        signs = np.array([self.problem.metrics[self.cheap_names[j]].sign for j in objs])
        keep = np.zeros(len(canon), dtype=bool)
        groups: dict[str, list[int]] = {}
        for i, c in enumerate(canon):
            groups.setdefault(c, []).append(i)
        for members in groups.values():
            if len(members) == 1 or not len(objs):
                keep[members[0]] = True
                continue
            idx = np.array(members)
            v = cheap[np.ix_(idx, objs)] * signs
            # one arch per distinct cost vector among the non-dominated members
            nd = idx[pareto_mask(v)]
            _, first = np.unique(cheap[np.ix_(nd, objs)], axis=0, return_index=True)
            keep[nd[first]] = True
        return keep

    def _ensure_features(self, pool: Pool) -> ArchFeatures:
        if self.features is None:
            costs: dict[str, Callable[[Sequence[Arch]], np.ndarray]] = {
                n: self.problem.metrics[n].many for n in self.cheap_names
            }
            costs.update(self.extra_features)
            feats = ArchFeatures(self.problem.space, self.encoding, costs)
            self.features = feats.fit(pool.archs, self._cost_block(pool))
        return self.features

    def _cost_block(self, pool: Pool) -> np.ndarray:
        extra = [
            np.asarray(fn(pool.archs), dtype=np.float64) for fn in self.extra_features.values()
        ]
        return np.column_stack([pool.cheap, *extra]) if extra else pool.cheap

    def featurize(self, pool: Pool) -> None:
        feats = self._ensure_features(pool)
        new = [i for i, k in enumerate(pool.keys) if k not in self._x_of]
        if new:
            sub = Pool(
                [pool.archs[i] for i in new],
                [pool.keys[i] for i in new],
                [],
                pool.cheap[new],
                pool.feasible[new],
            )
            x_new = feats.transform(sub.archs, self._cost_block(sub))
            for row, k in zip(x_new, sub.keys, strict=True):
                self._x_of[k] = row
        pool.x = np.array([self._x_of[k] for k in pool.keys]).reshape(len(pool.keys), -1)

    def get(self, front_archs: list[Arch], rng: np.random.Generator) -> Pool:
        """The pool for the next batch, priced and featurized; `front_archs` (the found front)
        seed the mutants of a drawn pool, `rng` draws it."""
        space = self.problem.space
        if self.static and self.pool is not None:
            return self.pool
        t0, c0 = time.perf_counter(), time.process_time()
        if self.candidates is not None:
            archs, self.static = list(self.candidates), True
        elif space.n_genotypes <= self.pool_limit:
            archs, self.static = list(space.enumerate()), True
        pool = self.make_pool(archs) if self.static else self._draw(front_archs, rng)
        self.featurize(pool)
        self.pool = pool
        if self.static:
            self.setup_s += time.perf_counter() - t0
            self.setup_cpu_s += time.process_time() - c0
        log.debug(
            "frontier pool: %d candidates (%d feasible)", len(pool.archs), pool.feasible.sum()
        )
        return pool

    def _draw(self, front_archs: list[Arch], rng: np.random.Generator) -> Pool:
        # a share `pool_refresh` of the pool is drawn afresh (half random archs, half
        # mutants and crossovers of the found front), the rest kept from the last batch
        space = self.problem.space
        n_new = self.pool_size
        if self._drawn:
            n_new = max(1, math.ceil(self.pool_refresh * self.pool_size))
        n_random = n_new // 2 if front_archs else n_new
        fresh = [space.sample(rng) for _ in range(n_random)]
        while front_archs and len(fresh) < n_new:
            a = front_archs[int(rng.integers(len(front_archs)))]
            if rng.random() < 0.3 and len(front_archs) > 1:
                b = front_archs[int(rng.integers(len(front_archs)))]
                fresh.append(space.mutate(space.crossover(a, b, rng), rng, 0.05))
            else:
                fresh.append(space.mutate(a, rng, 1.0 / max(len(space.keys), 1)))
        drawn = [(space.key(a), a) for a in fresh]
        self._drawn = drawn + self._drawn[: self.pool_size - len(fresh)]  # oldest dropped
        archs = [a for _, a in self._drawn]
        return self.make_pool(archs, [k for k, _ in self._drawn])

    def side_pool(self, archs: list[Arch]) -> Pool:
        """Cheap metrics and features of archs that may lie outside the pool (paid earlier, or
        by another sampler)."""
        keys = [self.problem.space.key(a) for a in archs]
        canon, cheap = self.price(archs, keys)
        pool = Pool(archs, keys, canon, cheap, np.ones(len(archs), bool))
        if self.features is not None:
            self.featurize(pool)
        return pool
