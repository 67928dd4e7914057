"""Budgets a run keeps on the device, not only in the predictor: each latency model checked
against the device's own whole-network figure on held-out archs (and corrected where that pays),
the margin each latency budget keeps, and the winners re-checked on the device and replaced.

The device's own figure is what the budget promises: measured on a real runtime, the whole
network priced on an emulated device, the table's entry on a table device.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nas.app.errors import FileProblem
from nas.core.files import write_json_atomic
from nas.core.space import Arch, SearchSpace, as_rng
from nas.search.constraints import Margin, auto_margin

__all__ = [
    "FREE_CHECK_ARCHS",
    "REAL_CHECK_ARCHS",
    "BudgetMiss",
    "Calibrated",
    "HeldOut",
    "LatencyBudget",
    "Recheck",
    "Rejected",
    "budget_margins",
    "calibrate_latency_model",
    "check_archs",
    "device_figures",
    "distinct_archs",
    "heldout_quality",
    "latency_budgets",
    "recheck",
    "stored_constraints",
    "unmet_budgets",
]

log = logging.getLogger(__name__)

FREE_CHECK_ARCHS = 50
"""Archs priced whole to fit, and as many again to check, a latency model on a device whose
whole-network figure costs nothing (emulated and table devices): enough held-out archs for a
conformal margin (`nas.search.MIN_CONFORMAL_ARCHS`)."""


REAL_CHECK_ARCHS = 10
"""The same on a real runtime, where each is a measurement (about a second): enough to see the
model's error; a conformal margin needs `calibration_archs: 30` or more."""


def check_archs(configured: int | None, device: Any) -> int:
    """Whole networks to fit the latency model on (as many again are held out to check it):
    the configured number, or by default `FREE_CHECK_ARCHS` where the device's figure is free
    (emulated, table) and `REAL_CHECK_ARCHS` on a real runtime."""
    if configured is not None:
        return int(configured)
    return FREE_CHECK_ARCHS if getattr(device, "kind", "real") != "real" else REAL_CHECK_ARCHS


@dataclass
class HeldOut:
    """A device's latency model against the device's own figure on archs it was not fitted on:
    the measured and predicted ms of the model the run uses, per held-out arch."""

    measured_ms: list[float]
    predicted_ms: list[float]
    model: str  # "plain" (the table's sum) or "corrected" (fitted on the other archs)

    def ratios(self) -> np.ndarray:
        return np.asarray(self.measured_ms) / np.asarray(self.predicted_ms)


def heldout_quality(
    plain: np.ndarray, corrected: np.ndarray, measured: np.ndarray, n_fit: int, self_fitted: bool
) -> tuple[dict[str, float], HeldOut]:
    """Both models' held-out error, and which the run uses: the corrected one, unless the
    plain sum is at least as close on the held-out archs (`self_fitted`: a kind whose fit is
    the model, as a kernel table's line, always uses the fitted one)."""
    from latency_models.validate import metrics

    q_plain, q_corr = metrics(plain, measured), metrics(corrected, measured)
    use_corrected = self_fitted or q_corr["mape_pct"] < q_plain["mape_pct"]
    chosen = corrected if use_corrected else plain
    # a network priced at nothing or less (a degenerate cell where no layer runs; a line fitted
    # on a few archs) gives no ratio: left out of the margin, counted in the error above
    live = chosen > 0
    n_test = len(measured)
    measured, chosen = measured[live], chosen[live]
    ratios = measured / chosen if live.any() else np.ones(1)
    quality: dict[str, Any] = {
        **{f"lut_{k}": v for k, v in q_plain.items()},
        **{f"corrected_{k}": v for k, v in q_corr.items()},
        "n_fit": n_fit,
        "n_test": n_test,
        "model": "corrected" if use_corrected else "plain",
        "mape_pct": (q_corr if use_corrected else q_plain)["mape_pct"],
        "ratio_p90": float(np.quantile(ratios, 0.90)),
        "ratio_p95": float(np.quantile(ratios, 0.95)),
        "ratio_max": float(ratios.max()),
        "n_unpriced": int((~live).sum()),
    }
    held = HeldOut(measured.tolist(), chosen.tolist(), quality["model"])
    return quality, held


def budget_margins(
    budgets: Mapping[str, float],
    heldout: Mapping[str, HeldOut],
    metric_of: Mapping[str, str],
    margin: str | float,
) -> dict[str, Margin]:
    """The margin of each latency budget (metric -> Margin): `auto` from the held-out error of
    the device's latency model (`nas.search.auto_margin`), or the given number. `metric_of`
    maps a device label to its latency metric; budgets on exact metrics (MACs, parameters,
    memory) keep none."""
    label_of = {metric: label for label, metric in metric_of.items()}
    out: dict[str, Margin] = {}
    for metric in budgets:
        label = label_of.get(metric)
        if label is None:
            continue
        if margin != "auto":
            out[metric] = Margin(float(margin), "fixed")
            continue
        held = heldout.get(label)
        if held is None:
            out[metric] = Margin(0.0, "none")
        else:
            out[metric] = auto_margin(held.measured_ms, held.predicted_ms)
    return out


def device_figures(
    space: SearchSpace, device: Any, dtype: str, archs: Sequence[Arch], cache: Path
) -> dict[str, float]:
    """The device's own whole-network figure (ms: measured, priced or the table's) of each arch,
    cached per arch key in `cache` (JSON), so a killed run measures nothing twice."""
    done: dict[str, float] = {}
    if cache.exists():
        try:
            done = {str(k): float(v) for k, v in dict(json.loads(cache.read_text())).items()}
        except (ValueError, TypeError) as err:
            raise FileProblem(
                cache,
                f"not a JSON object of arch key -> latency in ms ({err})",
                "delete it: the networks are measured again",
            ) from None
    for a in archs:
        key = space.key(a)
        if key not in done:
            done[key] = float(device.measure_arch(space, a, dtype).latency_ms)
            write_json_atomic(cache, done, indent=0, sort_keys=False)
    return done


def distinct_archs(space: SearchSpace, n: int, rng: np.random.Generator) -> list[Arch]:
    """Up to `n` archs of distinct keys, sampled (fewer where the space has fewer)."""
    seen: dict[str, Arch] = {}
    for _ in range(50 * n):
        a = space.sample(rng)
        seen.setdefault(space.key(a), a)
        if len(seen) == n:
            break
    return list(seen.values())


@dataclass
class Calibrated:
    """A latency model checked against the device's own figure: the model to use (corrected
    where that paid on held-out archs), its held-out quality and figures, the held-out keys
    (`held` is None where nothing was checked)."""

    model: Any
    quality: dict[str, Any] = field(default_factory=dict)
    held: HeldOut | None = None
    arch_keys: list[str] = field(default_factory=list)


def calibrate_latency_model(
    space: SearchSpace,
    device: Any,
    kind: str,
    dtype: str,
    table: Any,
    model: Any,
    n_check: int,
    *,
    seed: int,
    cache: Path,
) -> Calibrated:
    """Price `n_check` whole networks on the device to fit `kind`'s learned form on `table`,
    as many again to check both it and `model` (the plain form) on, and keep the closer one
    (`heldout_quality`). The device's figures are cached in `cache`, so a killed run measures
    nothing twice. `n_check` 0: `model` as it is, unchecked."""
    import latency_models as lm

    if n_check <= 0:
        return Calibrated(model)
    archs = distinct_archs(space, 2 * n_check, as_rng(seed))
    fit, test = archs[:n_check], archs[n_check:]
    figures = device_figures(space, device, dtype, fit + test, cache)
    y_fit = np.array([figures[space.key(a)] for a in fit])
    y_test = np.array([figures[space.key(a)] for a in test])
    plain = np.asarray(model.predict_many(space, test))
    fitted = lm.create_latency_model(
        kind, space, device, dtype=dtype, table=table, fit=(fit, y_fit)
    )
    corrected = np.asarray(fitted.predict_many(space, test))
    self_fitted = lm.latency_model_class(kind).learned_kind is None
    quality, held = heldout_quality(plain, corrected, y_test, len(fit), self_fitted)
    chosen = fitted if held.model == "corrected" else model
    return Calibrated(chosen, quality, held, [space.key(a) for a in test])


@dataclass
class Rejected:
    """A search winner the device's own figure put over a budget, and what took its place."""

    arch_key: str
    accuracy: float
    budget: str
    predicted_ms: float
    device_ms: float
    replaced_by: str = ""


@dataclass
class BudgetMiss:
    """No arch of the study keeps a budget on the device: the fastest one found and its figure."""

    budget: str
    arch_key: str
    predicted_ms: float
    device_ms: float

    def sentence(self) -> str:
        return (
            f"no arch in the study keeps `{self.budget}` on the device's own figure: the "
            f"fastest found, `{self.arch_key}`, runs in {self.device_ms:.4g} ms (predicted "
            f"{self.predicted_ms:.4g})"
        )


@dataclass
class LatencyBudget:
    """A `<=` budget on one device's latency: the label of the device, the bound in ms."""

    metric: str
    label: str
    bound: float

    def text(self) -> str:
        return f"{self.metric} <= {self.bound:g}"


@dataclass
class Recheck:
    """What re-checking the winners found: the archs kept (each with its device figures per
    budgeted device label) and those rejected."""

    kept: list[tuple[Any, dict[str, float]]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def latency_budgets(
    constraints: Sequence[tuple[str, str, float]], metric_of: Mapping[str, str]
) -> list[LatencyBudget]:
    """The `<=` latency budgets among `constraints` (metric, op, bound), with their device."""
    label_of = {metric: label for label, metric in metric_of.items()}
    return [
        LatencyBudget(metric, label_of[metric], bound)
        for metric, op, bound in constraints
        if op == "<=" and metric in label_of
    ]


def recheck(
    candidates: Sequence[Any],
    top_k: int,
    budgets: Sequence[LatencyBudget],
    figure: Any,
    predicted: Any,
) -> Recheck:
    """Walk `candidates` (rows with `arch_key` and `accuracy`, best first) and keep the first
    `top_k` whose device figure (`figure(label, key) -> ms`) keeps every budget; each one over
    a budget is rejected and named with the arch that replaced it (`predicted(label, key)`
    gives the search's figure for the record)."""
    out = Recheck()
    waiting: list[Rejected] = []
    for row in candidates:
        if len(out.kept) >= top_k:
            break
        key = str(row["arch_key"])
        figures = {b.label: figure(b.label, key) for b in budgets}
        over = [b for b in budgets if figures[b.label] > b.bound]
        if over:
            b = max(over, key=lambda b: figures[b.label] / b.bound)
            rejected = Rejected(
                key,
                float(row["accuracy"]),
                b.text(),
                float(predicted(b.label, key)),
                figures[b.label],
            )
            out.rejected.append(rejected)
            waiting.append(rejected)
            continue
        out.kept.append((row, figures))
        for r in waiting:
            r.replaced_by = key
        waiting = []
    return out


def stored_constraints(study: Any, configured: Mapping[str, float]) -> list[tuple[str, str, float]]:
    """The budgets (metric, op, bound) as the study stored them (canonical metric names), or
    as configured when there is no study."""
    from nas.search import parse_constraint

    stored = study.user_attrs.get("edge_nas", {}) if study is not None else {}
    if "constraints" in stored:
        return [parse_constraint(str(c)) for c in stored["constraints"]]
    return [
        (name, ">=" if name in ("accuracy", "acc") else "<=", float(bound))
        for name, bound in configured.items()
    ]


def unmet_budgets(frame: Any, study: Any) -> str:
    """The sentence for a search none of whose archs keeps every budget: for each budget, the
    best value found against the bound."""
    from nas.search import parse_constraint

    stored = study.user_attrs.get("edge_nas", {}).get("constraints", []) if study else []
    parts = []
    for text in stored:
        metric, op, bound = parse_constraint(str(text))
        if metric not in frame.columns or frame.empty:
            continue
        best = frame[metric].min() if op == "<=" else frame[metric].max()
        word = "fastest" if metric.startswith("latency_ms@") else "best"
        kept = int(((frame[metric] <= bound) if op == "<=" else (frame[metric] >= bound)).sum())
        parts.append(
            f"the {word} {metric} found is {best:.4g} against the budget {op} {bound:g} "
            f"({kept} of {len(frame)} archs keep it)"
        )
    found = "; ".join(parts) or f"{len(frame)} archs tried"
    return (
        f"no arch the search tried keeps every budget: {found}. Loosen search.budgets (a "
        "rerun redoes only the search and what follows it) or search longer (search.trials)"
    )
