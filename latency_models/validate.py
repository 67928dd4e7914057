"""Judge latency predictions against whole-network measurements.

Measurements come from a real runtime or a table of real measurements, never from an emulator
(an emulator checked against itself proves nothing). Reported per predictor: Kendall tau,
Spearman rho, RMSE (ms), MAPE (%), median absolute percentage error, and the shares of archs
predicted within +-10 % and +-20 %; as a Markdown table, a JSON-ready dict and a scatter plot
(matplotlib, Agg backend, PNG).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from latency_models.devices import Device
from latency_models.predictors import LatencyModel
from nas.core.space import SearchSpace

log = logging.getLogger(__name__)

__all__ = ["ValidationReport", "metrics", "plot_scatter", "validate"]

METRIC_NAMES: tuple[str, ...] = (
    "kendall_tau",
    "spearman",
    "rmse_ms",
    "mape_pct",
    "median_ape_pct",
    "within_10_pct",
    "within_20_pct",
)


def metrics(
    predicted_ms: Sequence[float] | np.ndarray, measured_ms: Sequence[float] | np.ndarray
) -> dict[str, float]:
    """The metrics of the module docstring (shares in %, NaN-free inputs required)."""
    p = np.asarray(predicted_ms, dtype=np.float64)
    y = np.asarray(measured_ms, dtype=np.float64)
    if p.shape != y.shape or p.ndim != 1 or len(p) < 2:
        raise ValueError(
            f"metrics need two 1-D arrays of the same length >= 2; got {p.shape} and {y.shape}"
        )
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(y))) or np.any(y <= 0):
        raise ValueError("metrics need finite predictions and finite measurements > 0 (ms)")
    rel = np.abs(p / y - 1.0)
    return {
        "kendall_tau": float(stats.kendalltau(p, y)[0]),
        "spearman": float(stats.spearmanr(p, y)[0]),
        "rmse_ms": float(np.sqrt(np.mean((p - y) ** 2))),
        "mape_pct": float(100 * rel.mean()),
        "median_ape_pct": float(100 * np.median(rel)),
        "within_10_pct": float(100 * np.mean(rel <= 0.10)),
        "within_20_pct": float(100 * np.mean(rel <= 0.20)),
    }


@dataclass
class ValidationReport:
    """Predictions of several predictors against one set of measurements."""

    title: str
    measured_on: str
    measured_ms: np.ndarray
    predicted_ms: dict[str, np.ndarray]
    results: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.results:
            self.results = {
                name: metrics(p, self.measured_ms) for name, p in self.predicted_ms.items()
            }

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "measured_on": self.measured_on,
            "n_archs": len(self.measured_ms),
            "results": self.results,
        }

    def to_markdown(self) -> str:
        head = "| predictor | Kendall tau | Spearman | RMSE (ms) | MAPE (%) | median APE (%) | within 10 % | within 20 % |"
        lines = [
            f"**{self.title}**: {len(self.measured_ms)} archs measured on `{self.measured_on}`",
            "",
            head,
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in self.results.items():
            lines.append(
                f"| {name} | {r['kendall_tau']:.3f} | {r['spearman']:.3f} | {r['rmse_ms']:.3f} "
                f"| {r['mape_pct']:.1f} | {r['median_ape_pct']:.1f} | {r['within_10_pct']:.1f} "
                f"| {r['within_20_pct']:.1f} |"
            )
        return "\n".join(lines) + "\n"

    def save(self, directory: str | Path, stem: str = "validation") -> dict[str, Path]:
        """Write `<stem>.json`, `<stem>.md` and `<stem>.png` (scatter) into `directory`."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        paths = {"json": d / f"{stem}.json", "md": d / f"{stem}.md", "png": d / f"{stem}.png"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=1))
        paths["md"].write_text(self.to_markdown())
        plot_scatter(self, paths["png"])
        return paths


def plot_scatter(report: ValidationReport, path: str | Path) -> Path:
    """Predicted against measured latency, one panel per predictor, y = x and +-10 % bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.predicted_ms)
    fig, axes = plt.subplots(
        1, len(names), figsize=(3.6 * len(names), 3.6), squeeze=False, constrained_layout=True
    )
    y = report.measured_ms
    for ax, name in zip(axes[0], names, strict=True):
        p = report.predicted_ms[name]
        lo = float(min(y.min(), p.min()))
        hi = float(max(y.max(), p.max()))
        grid = np.linspace(lo, hi, 2)
        ax.plot(grid, grid, color="black", lw=0.8)
        ax.fill_between(grid, grid * 0.9, grid * 1.1, color="tab:green", alpha=0.15, lw=0)
        ax.scatter(y, p, s=4, alpha=0.5)
        r = report.results[name]
        ax.set_title(
            f"{name}\ntau {r['kendall_tau']:.3f}, within 10 %: {r['within_10_pct']:.0f} %",
            fontsize=9,
        )
        ax.set_xlabel(f"measured on {report.measured_on} (ms)")
        ax.set_ylabel("predicted (ms)")
    fig.suptitle(report.title, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def validate(
    predictors: Mapping[str, LatencyModel] | LatencyModel,
    space: SearchSpace,
    archs: Sequence[Mapping[str, Any]],
    measured: Device | Sequence[float] | np.ndarray,
    *,
    dtype: str = "fp32",
    title: str = "",
    out_dir: str | Path | None = None,
    measured_on: str | None = None,
) -> ValidationReport:
    """Compare each predictor's predictions for `archs` with whole-network measurements.

    `measured` is a real or table device (measured here, or looked up) or the latencies
    already measured (ms, one per arch). With `out_dir` the table, JSON and scatter plot are
    written there.
    """
    if isinstance(predictors, Mapping):
        named = dict(predictors)
    else:
        named = {type(predictors).__name__: predictors}
    if not named:
        raise ValueError("validate needs at least one predictor")
    if isinstance(measured, Device):
        if measured.kind == "emulated":
            raise ValueError(
                f"validate compares with real measurements; {measured.name!r} is an emulated "
                "device (checking an emulator against itself proves nothing): pass a real "
                "runtime, a table device or measured latencies"
            )
        y = np.array([measured.measure_arch(space, a, dtype).latency_ms for a in archs])
        source = measured.name
    else:
        y = np.asarray(measured, dtype=np.float64)
        source = measured_on or "given measurements"
    if len(y) != len(archs):
        raise ValueError(f"validate needs one measurement per arch; got {len(y)} for {len(archs)}")
    predicted = {
        name: np.asarray(p.predict_many(space, archs), dtype=np.float64)
        for name, p in named.items()
    }
    report = ValidationReport(
        title=title or f"{space.name}: predicted vs measured latency",
        measured_on=source,
        measured_ms=y,
        predicted_ms=predicted,
    )
    if out_dir is not None:
        report.save(out_dir)
    log.info("validation on %s:\n%s", source, report.to_markdown())
    return report
