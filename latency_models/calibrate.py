"""Calibration: fit a device's cost-model parameters to whole-network measurements.

A network's modelled time is linear in the parameters (`costmodel` docstring): per op kind a
compute scale, a memory scale and a per-layer overhead, plus one per-network overhead. So the
fit is a bounded linear least-squares problem on *relative* errors (a 1 ms network matters as
much as a 30 ms one), with a weak ridge prior that pulls every parameter towards the profile's
spec-sheet value: kinds the measurements say little about stay where the figures put them.
Parameters belong to op kind x device, never to a space, so parameters fitted on one space
price any other space unchanged.

Whether the runtime removes dead branches (a fact every profile states, `profiles.DEAD_BRANCHES`)
is decided by the data when `dead_branches="auto"` (the default): both are fitted, the one with
the smaller error is kept, and `CalibrationResult.describe()` reports both errors.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import lsq_linear

from latency_models.costmodel import (
    FEATURE_NAMES,
    CostParams,
    network_features,
    params_from_vector,
    params_vector,
)
from latency_models.devices import Device, EmulatedDevice
from latency_models.graph import RuntimeSpecs
from latency_models.profiles import DeviceProfile
from nas.core.layers import LayerSpec
from nas.core.space import SearchSpace

log = logging.getLogger(__name__)

__all__ = ["CalibrationResult", "calibrate", "fit_params"]

DEFAULT_PRIOR_WEIGHT = 1e-3
HUBER_REL = 0.1
FLOOR_FRAC = 0.1
IRLS_ITERATIONS = 6


@dataclass
class CalibrationResult:
    """The calibrated device and how well it fits the archs it was fitted on.

    `dead_branch_errors` holds the relative RMSE of each value of `removes_dead_branches` that
    was fitted ("True", "False"); `dead_branches_by` says how the kept value was chosen:
    "fit" (auto, the smaller error), "tie" (auto, both fit alike, as where the archs have no
    dead branches: the profile's stated value is kept) or "given" (not auto).
    """

    device: EmulatedDevice
    params: CostParams
    train_rmse_rel: float  # RMS relative error on the fitting archs (floored latencies)
    fitted_kinds: list[str]
    dead_branch_errors: dict[str, float] = field(default_factory=dict)
    dead_branches_by: str = "given"

    @property
    def removes_dead_branches(self) -> bool:
        return self.device.removes_dead_branches

    def dead_branches_text(self) -> str:
        """One line: the kept value of `removes_dead_branches`, how it was chosen, both errors."""
        kept = "removed" if self.removes_dead_branches else "kept"
        errors = ", ".join(
            f"{'removed' if value == 'True' else 'kept'} {err:.4f}"
            for value, err in sorted(self.dead_branch_errors.items(), key=lambda kv: kv[1])
        )
        how = {
            "fit": "fits better",
            "tie": "the profile's value: both fit alike, as where the archs have no dead branches",
            "given": "as given (dead_branches was not 'auto')",
        }[self.dead_branches_by]
        return (
            f"dead branches {kept} (removes_dead_branches={self.removes_dead_branches}, {how}; "
            f"relative RMSE {errors})"
        )

    def describe(self) -> str:
        """What was fitted on what, how well, and which dead-branch value won (text)."""
        on = self.params.fitted_on
        return (
            f"{self.device.name}: calibrated on {on.get('n_archs', '?')} archs of "
            f"{on.get('space', '?')} ({on.get('dtype', '?')}) measured on "
            f"{on.get('measured_on', '?')}; relative RMSE {self.train_rmse_rel:.4f}; fitted "
            f"kinds: {', '.join(self.fitted_kinds) or 'none'}; {self.dead_branches_text()}"
        )

    def __str__(self) -> str:
        return self.describe()

    def summary(self) -> dict[str, Any]:
        return {
            "device": self.device.name,
            "train_rmse_rel": self.train_rmse_rel,
            "fitted_kinds": self.fitted_kinds,
            "removes_dead_branches": self.params.removes_dead_branches,
            "dead_branch_errors": self.dead_branch_errors,
            "dead_branches_by": self.dead_branches_by,
            "describe": self.describe(),
            "params": self.params.to_dict(),
        }


def fit_params(
    features: np.ndarray,
    latency_ms: np.ndarray,
    profile: DeviceProfile,
    *,
    prior: CostParams | None = None,
    prior_weight: float = DEFAULT_PRIOR_WEIGHT,
    huber_rel: float = HUBER_REL,
    floor_frac: float = FLOOR_FRAC,
) -> tuple[np.ndarray, float]:
    """Parameter vector (order of `costmodel.params_vector`) and relative RMSE of the fit.

    features: (n_archs, len(FEATURE_NAMES)) from `costmodel.network_features`. Residuals are
    relative to max(latency, floor_frac * median latency), so a network a compiler folded to
    almost nothing cannot dominate, and are Huber-weighted beyond `huber_rel` (iteratively
    reweighted least squares), so a few outlying measurements cannot either.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(latency_ms, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES) or len(y) != len(x):
        raise ValueError(
            f"features must have shape (n, {len(FEATURE_NAMES)}) and latency_ms shape (n,); "
            f"got {x.shape} and {y.shape}"
        )
    if len(y) == 0 or not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("calibration needs at least one finite latency > 0 (milliseconds)")
    theta0 = params_vector(prior or CostParams(), profile)
    denom = np.maximum(y, floor_frac * float(np.median(y)))
    a = np.hstack([x, np.ones((len(x), 1))]) / denom[:, None]  # relative residuals
    b = y / denom
    used = np.flatnonzero(np.abs(a).sum(axis=0) > 0)
    used = np.union1d(used, [a.shape[1] - 1])  # the network overhead is always fitted
    scale = np.maximum(np.abs(theta0), 1e-3)
    w_prior = np.sqrt(prior_weight) / scale
    a_prior = np.diag(w_prior)[used][:, used]
    b_prior = (w_prior * theta0)[used]
    theta = theta0.copy()
    weights = np.ones(len(y))
    for _ in range(IRLS_ITERATIONS):
        lhs = np.vstack([a[:, used] * weights[:, None], a_prior])
        rhs = np.concatenate([b * weights, b_prior])
        # Columns span orders of magnitude (ms sums next to layer counts): solve scaled ones.
        norms = np.linalg.norm(lhs, axis=0)
        norms[norms == 0] = 1.0
        sol = lsq_linear(lhs / norms, rhs, bounds=(0.0, np.inf), method="bvls")
        if not sol.success:
            raise RuntimeError(f"calibration least squares did not converge: {sol.message}")
        theta[used] = sol.x / norms
        resid = np.abs(a @ theta - b)
        weights = np.sqrt(np.minimum(1.0, huber_rel / np.maximum(resid, 1e-12)))
    rel = a @ theta - b  # relative to the floored latencies, as fitted
    return theta, float(np.sqrt(np.mean(rel**2)))


def _features(
    specs_of: Any,
    space: SearchSpace,
    archs: Sequence[Mapping[str, Any]],
    dtype: str,
    profile: DeviceProfile,
) -> np.ndarray:
    cache: dict[LayerSpec, np.ndarray] = {}
    return np.stack([network_features(specs_of(space, a, dtype), profile, cache) for a in archs])


def calibrate(
    device: Device | DeviceProfile,
    space: SearchSpace,
    archs: Sequence[Mapping[str, Any]],
    latency_ms: Sequence[float] | np.ndarray,
    *,
    dtype: str = "fp32",
    dead_branches: bool | str = "auto",
    prior_weight: float = DEFAULT_PRIOR_WEIGHT,
    name: str | None = None,
    runtime_specs: RuntimeSpecs | None = None,
) -> CalibrationResult:
    """Fit the cost model of `device` to measured whole-network latencies of `archs`.

    `device` gives the starting profile (an emulated device's own profile; this machine's
    CPU for a real runtime; the profile a table device was given) or is a profile itself.
    Returns an `EmulatedDevice` with the fitted parameters: it prices any arch of any space.
    """
    if isinstance(device, DeviceProfile):
        profile, base_name, prior = device, f"{device.name}-emulated", CostParams()
    else:
        profile = device.prior_profile()
        base_name = device.name
        prior = device.params if isinstance(device, EmulatedDevice) else CostParams()
    profile.check_dtype(dtype)
    y = _check_measured(archs, latency_ms, dead_branches)
    if runtime_specs is None:
        # share the device's cache of pruned specs: tracing them is the slow part
        runtime_specs = (
            device.runtime_specs if isinstance(device, EmulatedDevice) else RuntimeSpecs()
        )
    options = [True, False] if dead_branches == "auto" else [bool(dead_branches)]
    fits = _fits(options, runtime_specs, space, archs, y, dtype, profile, prior, prior_weight)
    # ties (a space without zero products) keep what the device's figures say
    default = prior.dead_branches(profile)
    best = min(fits, key=lambda r: (round(fits[r][1], 12), r != default))
    errors = {round(fits[r][1], 12) for r in fits}
    by = "given" if len(fits) == 1 else "tie" if len(errors) == 1 else "fit"
    theta, err, x = fits[best]
    kinds = sorted(
        {FEATURE_NAMES[j].split(":", 1)[1] for j in np.flatnonzero(np.abs(x).sum(axis=0) > 0)}
    )
    params = params_from_vector(
        theta,
        removes_dead_branches=best,
        fitted_on={
            "space": space.name,
            "n_archs": len(archs),
            "dtype": dtype,
            "measured_on": base_name,
            "prior_weight": prior_weight,
        },
    )
    calibrated = EmulatedDevice(
        profile, params, name=name or f"{base_name}-calibrated", runtime_specs=runtime_specs
    )
    result = CalibrationResult(
        device=calibrated,
        params=params,
        train_rmse_rel=err,
        fitted_kinds=kinds,
        dead_branch_errors={str(r): fits[r][1] for r in fits},
        dead_branches_by=by,
    )
    log.info("calibrated %s", result.describe())
    return result


def _check_measured(
    archs: Sequence[Mapping[str, Any]],
    latency_ms: Sequence[float] | np.ndarray,
    dead_branches: bool | str,
) -> np.ndarray:
    if len(archs) != len(latency_ms):
        raise ValueError(
            f"calibrate needs one latency per arch; got {len(archs)} archs and "
            f"{len(latency_ms)} latencies"
        )
    if len(archs) < 2:
        raise ValueError(f"calibrate needs at least 2 measured archs, got {len(archs)}")
    if dead_branches not in ("auto", True, False):
        raise ValueError(f"dead_branches must be 'auto', True or False; got {dead_branches!r}")
    return np.asarray(latency_ms, dtype=np.float64)


def _fits(
    options: Sequence[bool],
    runtime_specs: RuntimeSpecs,
    space: SearchSpace,
    archs: Sequence[Mapping[str, Any]],
    y: np.ndarray,
    dtype: str,
    profile: DeviceProfile,
    prior: CostParams,
    prior_weight: float,
) -> dict[bool, tuple[np.ndarray, float, np.ndarray]]:
    """(parameters, error, features) fitted with dead branches removed (True) and kept
    (False), for each of `options`."""

    def plain(space: SearchSpace, arch: Mapping[str, Any], dtype: str) -> list[LayerSpec]:
        return space.layer_specs(arch, dtype)

    fits: dict[bool, tuple[np.ndarray, float, np.ndarray]] = {}
    for remove in options:
        specs_of = runtime_specs if remove else plain
        x = _features(specs_of, space, archs, dtype, profile)
        if remove is False and True in fits and np.array_equal(x, fits[True][2]):
            fits[False] = fits[True]  # nothing to remove in this space: same fit
            continue
        theta, err = fit_params(x, y, profile, prior=prior, prior_weight=prior_weight)
        fits[remove] = (theta, err, x)
    return fits
