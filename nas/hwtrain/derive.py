"""Deriving an arch from trained logits, and what it costs.

The rule: the most likely arch (per dim its most probable value). Where a term has a target
and the most likely arch misses it by more than `tolerance`, a repair step picks, among the
`n_candidates` most probable archs, the most probable one within the tolerance of every target
(else a greedy walk of single-dim changes from the closest); the pure argmax and its error are
reported beside it. The top few archs are listed with their probabilities and prices.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from nas.core.space import Arch
from nas.hwtrain.logits import ArchLogits
from nas.hwtrain.losses import CostTerm

__all__ = ["derive", "top_archs"]


def _log_prob(logits: ArchLogits, arch: Arch, logp: dict[str, np.ndarray]) -> float:
    inactive = logits.space.inactive_keys(arch)
    return float(
        sum(
            logp[k][logits.choices[k].index(v)]
            for k, v in arch.items()
            if k not in inactive and k in logp
        )
    )


def top_archs(logits: ArchLogits, k: int) -> list[tuple[Arch, float]]:
    """The `k` most probable distinct archs (by key) with their probabilities, best first."""
    with np.errstate(divide="ignore"):
        logp = {d: np.log(p) for d, p in logits.probs().items()}
    dims = list(logp)
    order = {d: np.argsort(-logp[d], kind="stable") for d in dims}
    start = (0,) * len(dims)

    def score(ranks: tuple[int, ...]) -> float:
        return float(sum(logp[d][order[d][r]] for d, r in zip(dims, ranks, strict=True)))

    heap = [(-score(start), start)]
    seen_ranks = {start}
    out: dict[str, tuple[Arch, float]] = {}
    pops = 0
    while heap and len(out) < k and pops < 50 * k:
        _, ranks = heapq.heappop(heap)
        pops += 1
        arch = {d: logits.choices[d].values[order[d][r]] for d, r in zip(dims, ranks, strict=True)}
        key = logits.space.key(arch)
        if key not in out:
            out[key] = (arch, math.exp(_log_prob(logits, arch, logp)))
        for i, d in enumerate(dims):
            nxt = (*ranks[:i], ranks[i] + 1, *ranks[i + 1 :])
            if ranks[i] + 1 < len(order[d]) and nxt not in seen_ranks:
                if math.isinf(logp[d][order[d][ranks[i] + 1]]):
                    continue
                seen_ranks.add(nxt)
                heapq.heappush(heap, (-score(nxt), nxt))
    return sorted(out.values(), key=lambda t: -t[1])


def _errors(arch: Arch, terms: Sequence[CostTerm]) -> dict[str, float]:
    """Relative error (signed, price / aim - 1) per targeted term."""
    return {t.name: t.expected.value(arch) / t.aim - 1.0 for t in terms if t.aim is not None}


def _worst(errors: dict[str, float]) -> float:
    return max((abs(e) for e in errors.values()), default=0.0)


def _greedy(logits: ArchLogits, arch: Arch, terms: Sequence[CostTerm], tol: float) -> Arch:
    current, err = dict(arch), _worst(_errors(arch, terms))
    for _ in range(100):
        if err <= tol:
            break
        best: tuple[float, Arch] | None = None
        for d in logits.relaxed:
            for v in logits.choices[d].values:
                if v == current[d]:
                    continue
                cand = dict(current, **{d: v})
                e = _worst(_errors(cand, terms))
                if best is None or e < best[0]:
                    best = (e, cand)
        if best is None or best[0] >= err:
            break
        err, current = best
    return current


def derive(
    logits: ArchLogits,
    terms: Sequence[CostTerm],
    *,
    tolerance: float = 0.05,
    n_candidates: int = 200,
    top: int = 5,
) -> dict[str, Any]:
    """The derived arch, the pure argmax beside it, and the top few (JSON-ready)."""
    argmax = logits.argmax_arch()
    candidates = top_archs(logits, max(n_candidates, top))
    derived, rule = argmax, "argmax"
    if _worst(_errors(argmax, terms)) > tolerance:
        fits = [a for a, _ in candidates if _worst(_errors(a, terms)) <= tolerance]
        if fits:
            derived, rule = fits[0], f"most probable of the top {len(candidates)} within target"
        else:
            closest = min((a for a, _ in candidates), key=lambda a: _worst(_errors(a, terms)))
            derived, rule = _greedy(logits, closest, terms, tolerance), "greedy repair"
    with np.errstate(divide="ignore"):
        logp = {d: np.log(p) for d, p in logits.probs().items()}

    def describe(arch: Arch) -> dict[str, Any]:
        return {
            "arch": arch,
            "key": logits.space.key(arch),
            "probability": math.exp(_log_prob(logits, arch, logp)),
            "priced": {t.name: t.expected.value(arch) for t in terms},
            "target_error": _errors(arch, terms),
        }

    return {
        "rule": rule,
        "tolerance": tolerance,
        "derived": describe(derived),
        "argmax": describe(argmax),
        "top": [describe(a) for a, _ in candidates[:top]],
        "expected": {t.name: float(t.expected().detach()) for t in terms},
        "targets": {t.name: t.target for t in terms},
        "aims": {t.name: t.aim for t in terms},
    }
