"""Plots for notebooks and reports (matplotlib, headless): cost scatters, accuracy/latency
fronts per device, hypervolume histories, the logits of hardware-aware training, accuracy against
training memory per update mode (on-device learning); `export_run` writes a study's CSVs and
plots into a run folder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd

from nas.search import ACCURACY, export_pareto_csv, hypervolume_history, trials_frame
from nas.search.pareto import pareto_mask


def _scaled(frame: pd.DataFrame, column: str) -> tuple[np.ndarray, str]:
    """Values of a column in readable units, and the axis label that says which."""
    v = frame[column].to_numpy(float)
    if column.endswith("_bytes"):
        return v / 1024, f"{column} (KiB)"
    if column in ("macs", "params"):
        return v / 1e6, f"{column} (millions)"
    return v, column


def plot_cost_scatter(
    frame: pd.DataFrame,
    x: str = "macs",
    y: str = "peak_activation_bytes",
    color: str = "params",
    path: str | Path | None = None,
    title: str = "",
) -> plt.Figure:
    """Scatter of two objectives, coloured by a third, with the 2-D Pareto front drawn."""
    for col in (x, y, color):
        if col not in frame.columns:
            raise KeyError(f"column {col!r} not in frame; columns: {list(frame.columns)}")
    (xs, xlabel), (ys, ylabel), (cs, clabel) = (_scaled(frame, c) for c in (x, y, color))
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    sc = ax.scatter(xs, ys, c=cs, s=14, cmap="viridis")
    mask = pareto_mask(frame[[x, y]].to_numpy())
    order = np.argsort(xs[mask])
    ax.step(
        xs[mask][order],
        ys[mask][order],
        where="post",
        color="crimson",
        lw=1.2,
        label=f"Pareto front ({int(mask.sum())})",
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(sc, ax=ax, label=clabel)
    ax.set_title(title or f"{len(frame)} archs")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


def _front(frame: pd.DataFrame, acc: str, lat: str) -> pd.DataFrame:
    pts = np.c_[-frame[acc].to_numpy(float), frame[lat].to_numpy(float)]
    return frame[pareto_mask(pts)].sort_values(lat)


def plot_pareto(
    frame: pd.DataFrame,
    accuracy: str = "accuracy",
    latency: str = "latency_ms",
    ax: plt.Axes | None = None,
    label: str = "",
    true_front: pd.DataFrame | None = None,
    path: str | Path | None = None,
) -> plt.Figure:
    """Evaluated archs (accuracy up, latency down) with their Pareto front as a staircase;
    optionally the true front of a tabular benchmark for comparison."""
    for col in (accuracy, latency):
        if col not in frame.columns:
            raise KeyError(f"column {col!r} not in frame; columns: {list(frame.columns)}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    else:
        fig = ax.figure  # type: ignore[assignment]
    ax.scatter(
        frame[latency], frame[accuracy], s=10, alpha=0.5, color="steelblue", label=label or None
    )
    front = _front(frame, accuracy, latency)
    ax.step(front[latency], front[accuracy], where="post", color="crimson", lw=1.3,
            label=f"front ({len(front)})")  # fmt: skip
    if true_front is not None:
        tf = _front(true_front, accuracy, latency)
        ax.step(tf[latency], tf[accuracy], where="post", color="black", lw=0.9, ls="--",
                label=f"true front ({len(tf)})")  # fmt: skip
    ax.set_xlabel(latency)
    ax.set_ylabel(accuracy)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if path is not None:
        fig.tight_layout()
        fig.savefig(path)
    return fig


def plot_fronts_per_device(
    frame: pd.DataFrame,
    accuracy: str = "accuracy",
    devices: Sequence[str] | None = None,
    path: str | Path | None = None,
) -> plt.Figure:
    """One panel per device: accuracy against `latency_ms@<device>` with the front."""
    cols = [f"latency_ms@{d}" for d in devices] if devices else [
        c for c in frame.columns if str(c).startswith("latency_ms@")
    ]  # fmt: skip
    if not cols:
        raise KeyError(f"no latency_ms@<device> columns in frame; columns: {list(frame.columns)}")
    fig, axes = plt.subplots(1, len(cols), figsize=(4.5 * len(cols), 4), dpi=120, squeeze=False)
    for ax, col in zip(axes[0], cols, strict=True):
        plot_pareto(frame, accuracy, col, ax=ax)
        ax.set_title(col.split("@", 1)[1])
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


def plot_hypervolume_history(
    histories: Mapping[str, pd.DataFrame | Sequence[pd.DataFrame]],
    normalise_by: float | None = None,
    path: str | Path | None = None,
) -> plt.Figure:
    """Hypervolume against paid evaluations, one line per strategy (several runs: mean with a
    min-max band). Frames come from `nas.search.hypervolume_history`."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    scale = normalise_by or 1.0
    for name, runs in histories.items():
        runs_list = [runs] if isinstance(runs, pd.DataFrame) else list(runs)
        n = min(len(r) for r in runs_list)
        hv = np.stack([r["hypervolume"].to_numpy(float)[:n] for r in runs_list]) / scale
        x = np.arange(1, n + 1)
        (line,) = ax.plot(x, hv.mean(0), label=name, lw=1.3)
        if len(runs_list) > 1:
            ax.fill_between(x, hv.min(0), hv.max(0), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("accuracy evaluations")
    ax.set_ylabel("hypervolume" + (" ratio" if normalise_by else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


def plot_logit_trajectory(
    rows: Sequence[Mapping[str, object]],
    dims: Sequence[str] | None = None,
    path: str | Path | None = None,
    max_dims: int = 12,
) -> plt.Figure:
    """Probability of each value of each relaxed dim against training steps (the rows of a
    hardware-aware run's `trajectory.json`), one panel per dim: the logits converging."""
    if not rows:
        raise ValueError("no trajectory rows to plot (the run recorded none)")
    first = rows[0]["probs"]
    assert isinstance(first, Mapping)
    names = list(dims) if dims is not None else list(first)[:max_dims]
    cols = min(4, len(names))
    nrows = -(-len(names) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.4 * nrows), dpi=110, squeeze=False)
    steps = [int(r["step"]) for r in rows]  # type: ignore[call-overload]
    for ax, name in zip(axes.flat, names, strict=False):
        values = list(first[name])
        for v in values:
            ax.plot(steps, [r["probs"][name][v] for r in rows], label=str(v), lw=1.2)  # type: ignore[index]
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.supxlabel("training step")
    fig.supylabel("probability")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


def plot_accuracy_memory(
    rows: Sequence[Mapping[str, float | str]],
    baselines: Mapping[str, float] | None = None,
    path: str | Path | None = None,
    xlabel: str = "training memory, KB (planned)",
) -> plt.Figure:
    """Target accuracy against training memory, one series per update mode (on-device
    learning): `rows` hold ``mode``, ``memory_bytes`` and ``accuracy`` (%); `baselines` (no
    adaptation, AdaBN: name -> accuracy %) are dashed lines."""
    if not rows:
        raise ValueError("no adapted plans to plot")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for mode in dict.fromkeys(str(r["mode"]) for r in rows):
        pts = [
            (float(r["memory_bytes"]) / 1024, float(r["accuracy"]))
            for r in rows
            if r["mode"] == mode
        ]
        ax.scatter(*zip(*pts, strict=True), label=mode)
    for i, (name, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, ls="--", lw=1, color=f"C{7 + i % 3}", label=name)
    ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel="target test accuracy, %")
    ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


def close(fig: plt.Figure) -> None:
    plt.close(fig)


__all__ = [
    "close",
    "plot_accuracy_memory",
    "plot_cost_scatter",
    "plot_fronts_per_device",
    "plot_hypervolume_history",
    "plot_logit_trajectory",
    "plot_pareto",
]


def export_run(
    study: optuna.Study,
    out: str | Path,
    reference: Mapping[str, float] | None = None,
) -> dict[str, Path]:
    """Write what a person looks at into the run folder `out`: `trials.csv` (every trial),
    `pareto.csv` (the study's front), `pareto_<device>.csv` and `fronts.png` (accuracy against
    each recorded device latency), and with a `reference` point `hypervolume.csv` and
    `hypervolume.png`. Returns the written paths by name."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    frame = trials_frame(study)
    frame.to_csv(out_dir / "trials.csv", index=False)
    written["trials"] = out_dir / "trials.csv"
    if frame.empty:
        return written
    written["pareto"] = export_pareto_csv(study, out_dir / "pareto.csv")
    devices = [c for c in frame.columns if str(c).startswith("latency_ms@")]
    if ACCURACY in frame.columns and devices:
        for col in devices:
            name = col.split("@", 1)[1].replace(":", "_")
            written[f"pareto_{name}"] = export_pareto_csv(
                study, out_dir / f"pareto_{name}.csv", [ACCURACY, col]
            )
        evaluated = frame[frame["evaluated"]] if frame["evaluated"].any() else frame
        fig = plot_fronts_per_device(evaluated, path=out_dir / "fronts.png")
        close(fig)
        written["fronts"] = out_dir / "fronts.png"
    if reference is not None:
        hist = hypervolume_history(study, reference, list(reference))
        hist.to_csv(out_dir / "hypervolume.csv", index=False)
        fig = plot_hypervolume_history({study.study_name: hist}, path=out_dir / "hypervolume.png")
        close(fig)
        written["hypervolume"] = out_dir / "hypervolume.csv"
    return written
