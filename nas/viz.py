"""Plots for notebooks and reports (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from nas.search import pareto_mask


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
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    sc = ax.scatter(frame[x] / 1e6, frame[y] / 1024, c=frame[color] / 1e3, s=14, cmap="viridis")
    front = frame[pareto_mask(frame[[x, y]].to_numpy())].sort_values(x)
    ax.step(
        front[x] / 1e6,
        front[y] / 1024,
        where="post",
        color="crimson",
        lw=1.2,
        label=f"Pareto front ({len(front)})",
    )
    ax.set_xlabel(f"{x} (millions)")
    ax.set_ylabel(f"{y} (KiB)")
    fig.colorbar(sc, ax=ax, label=f"{color} (thousands)")
    ax.set_title(title or f"{len(frame)} archs")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


def close(fig: plt.Figure) -> None:
    plt.close(fig)


__all__ = ["close", "plot_cost_scatter"]
