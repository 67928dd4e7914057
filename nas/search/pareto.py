"""Pareto fronts, exact hypervolume, and the expected hypervolume improvement of one uncertain
objective (accuracy) next to objectives known exactly (latency, MACs, memory).

Conventions: `values` rows are points, columns objectives, all *minimised* (negate accuracy
first). A reference point is worse than every point that should count: a point contributes
only the region it dominates inside the box bounded by the reference.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr

__all__ = [
    "expected_hvi",
    "expected_improvement_over",
    "hypervolume",
    "hypervolume_history",
    "pareto_mask",
]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def pareto_mask(values: np.ndarray) -> np.ndarray:
    """Rows of `values` (all objectives minimised) that no other row dominates.

    Duplicated rows are all kept (neither dominates the other).
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2:
        raise ValueError(f"values must be a 2-D matrix (points x objectives), got {v.shape}")
    mask = np.ones(len(v), dtype=bool)
    for i in range(len(v)):
        if mask[i]:
            dominated = np.all(v[i] <= v, axis=1) & np.any(v[i] < v, axis=1)
            mask[dominated] = False
    return mask


def _check_reference(v: np.ndarray, reference: np.ndarray | list[float]) -> np.ndarray:
    ref = np.asarray(reference, dtype=float).ravel()
    if ref.shape[0] != v.shape[1]:
        raise ValueError(
            f"reference point has {ref.shape[0]} coordinates but the points have {v.shape[1]} "
            "objectives"
        )
    if not np.isfinite(ref).all():
        raise ValueError(f"reference point must be finite, got {ref.tolist()}")
    return ref


def _grid(points: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cells of the grid spanned by the points' coordinates (lower corner, upper corner)."""
    d = points.shape[1]
    lows = [np.concatenate([[-np.inf], np.unique(points[:, j])]) for j in range(d)]
    highs = [np.concatenate([lo[1:], [ref[j]]]) for j, lo in enumerate(lows)]
    lo = np.stack(np.meshgrid(*lows, indexing="ij"), -1).reshape(-1, d)
    hi = np.stack(np.meshgrid(*highs, indexing="ij"), -1).reshape(-1, d)
    return lo, hi


def _levels(points_head: np.ndarray, points_last: np.ndarray, cell_lo: np.ndarray) -> np.ndarray:
    """Per cell: the best (lowest) last coordinate among points dominating the cell's corner."""
    if len(points_last) == 0:
        return np.full(len(cell_lo), np.inf)
    out = np.empty(len(cell_lo))
    for s in range(0, len(cell_lo), 4096):
        dom = np.all(points_head[None, :, :] <= cell_lo[s : s + 4096, None, :], axis=2)
        out[s : s + 4096] = np.where(dom, points_last[None, :], np.inf).min(1)
    return out


def hypervolume(values: np.ndarray, reference: np.ndarray | list[float]) -> float:
    """Exact hypervolume dominated by `values` (minimised) inside the box below `reference`.

    Points not strictly better than the reference in every objective contribute nothing. The
    first d-1 objectives are cut into the grid of the front's coordinates, and each cell
    contributes its volume times the best last coordinate over it: exact, and fast for the
    2-4 objectives of a hardware-aware search.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2:
        raise ValueError(f"values must be a 2-D matrix (points x objectives), got {v.shape}")
    ref = _check_reference(v, reference)
    v = v[np.all(v < ref, axis=1)]
    if len(v) == 0:
        return 0.0
    v = v[pareto_mask(v)]
    if v.shape[1] == 1:
        return float(ref[0] - v[:, 0].min())
    head, last = v[:, :-1], v[:, -1]
    lo, hi = _grid(head, ref[:-1])
    # cells below every point (a -inf corner) are dominated by none: zero width
    width = np.prod(np.clip(hi - np.where(np.isinf(lo), hi, lo), 0.0, None), axis=1)
    level = _levels(head, last, lo)
    return float(np.sum(width * np.clip(ref[-1] - level, 0.0, None)))


def hypervolume_history(values: np.ndarray, reference: np.ndarray | list[float]) -> np.ndarray:
    """Hypervolume after each of the first 1, 2, ..., n points (rows in evaluation order)."""
    v = np.asarray(values, dtype=float)
    ref = _check_reference(v, reference)
    out = np.zeros(len(v))
    front = np.zeros((0, v.shape[1]))
    hv = 0.0
    for i, p in enumerate(v):
        if np.all(p < ref) and not np.any(np.all(front <= p, axis=1)):
            front = np.vstack([front[~np.all(p <= front, axis=1)], p])
            hv = hypervolume(front, ref)
        out[i] = hv
    return out


def expected_improvement_over(mu: np.ndarray, sigma: np.ndarray, level: np.ndarray) -> np.ndarray:
    """E[max(0, a - level)] for a ~ Normal(mu, sigma), broadcast (maximised quantity)."""
    s = np.maximum(sigma, 1e-12)
    z = (mu - level) / s
    return (mu - level) * ndtr(z) + s * _INV_SQRT_2PI * np.exp(-0.5 * z * z)


def expected_hvi(
    front_cheap: np.ndarray,
    front_gain: np.ndarray,
    cand_cheap: np.ndarray,
    mu: np.ndarray,
    sigma: np.ndarray,
    ref_cheap: np.ndarray,
    ref_gain: float,
    max_cells: int = 200_000,
) -> np.ndarray:
    """Expected hypervolume improvement of candidates whose cheap objectives are known.

    Cheap objectives (`front_cheap`, `cand_cheap`, `ref_cheap`: points x d) are minimised and
    exact; the gain (accuracy) is *maximised* and uncertain: Normal(mu, sigma) per candidate.
    For a candidate at c, the improvement is the integral over the box [c, ref_cheap] of
    max(0, a - F(x)), where F(x) is the best gain of front points dominating x (or `ref_gain`):
    a sum over the cells of the front's grid, each a closed-form Gaussian expectation. Exact;
    cost grows with cells = prod(front size + 1) over cheap objectives, so with several cheap
    objectives and a large front it falls back to the sum of the per-objective 2-D values.
    """
    fc = np.asarray(front_cheap, dtype=float).reshape(len(front_gain), -1)
    cc = np.asarray(cand_cheap, dtype=float).reshape(len(mu), -1)
    ref = np.asarray(ref_cheap, dtype=float).ravel()
    d = cc.shape[1]
    fg = np.asarray(front_gain, dtype=float)
    keep = np.all(fc < ref, axis=1) & (fg > ref_gain)
    fc, fg = fc[keep], fg[keep]
    if len(fg):
        nd = pareto_mask(np.c_[fc, -fg])
        fc, fg = fc[nd], fg[nd]
    cells = math.prod(len(np.unique(fc[:, j])) + 1 for j in range(d)) if d else 1
    if d > 1 and cells > max_cells:
        return sum(
            (
                expected_hvi(fc[:, [j]], fg, cc[:, [j]], mu, sigma, ref[[j]], ref_gain)
                for j in range(d)
            ),
            start=np.zeros(len(mu)),
        )
    if d == 0:
        best = float(fg.max()) if len(fg) else ref_gain
        return expected_improvement_over(mu, sigma, np.asarray(max(best, ref_gain)))
    lo, hi = _grid(fc, ref)
    level = -_levels(fc, -fg, lo)  # best gain over the cell
    g = np.maximum(level, ref_gain)
    out = np.zeros(len(mu))
    step = max(1, 2_000_000 // max(len(lo), 1))
    for s in range(0, len(mu), step):
        c = cc[s : s + step, None, :]
        w = np.prod(np.clip(hi[None] - np.maximum(lo[None], c), 0.0, None), axis=2)
        e = expected_improvement_over(mu[s : s + step, None], sigma[s : s + step, None], g[None])
        out[s : s + step] = (w * e).sum(1)
    return out
