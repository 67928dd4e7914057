"""The targets and the table of `benchmarks/train_scale.py` (issue 22's results contract)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["fmt_row", "table", "targets"]


def fmt_row(row: dict[str, Any]) -> str:
    keys = (
        "what",
        "space",
        "resolution",
        "data",
        "n",
        "precision",
        "device",
        "images_per_s",
        "data_wait_share",
        "peak_pss_gb",
        "elastic_overhead",
        "speed_ratio",
        "step_cpu_ratio",
    )
    return "  ".join(
        f"{k}={row[k]:.3g}" if isinstance(row.get(k), float) else f"{k}={row.get(k)}"
        for k in keys
        if k in row
    )


def targets(
    mem: list[dict[str, Any]],
    thr: list[dict[str, Any]],
    gpu: str | None,
    commit: str | None = None,
) -> dict[str, Any]:
    """The issue's targets from the rows; `commit`: the one the run started on (the code it
    loaded), else the checkout's now."""
    from nas.app.config import git_commit

    streamed: dict[int, list[dict[str, Any]]] = {}
    for r in mem:
        if r["data"] == "folder":
            streamed.setdefault(r["n"], []).append(r)
    in_memory = {r["n"]: r for r in mem if r["data"] == "memory"}
    interleaved = [r for r in mem if r["data"] == "interleaved"]
    small, big = sorted(streamed)
    pss = {n: max(r["peak_pss_gb"] for r in rs) for n, rs in streamed.items()}
    speed = {n: float(np.mean([r["images_per_s"] for r in rs])) for n, rs in streamed.items()}
    separate = min(speed[n] / in_memory[n]["images_per_s"] for n in speed)
    cpu = [r for r in thr if r["device"] == "cpu" and "elastic_overhead" in r]
    gpu_rows = [r for r in thr if r["device"] != "cpu" and "elastic_overhead" in r]
    waits = [
        r["data_wait_share"]
        for r in thr
        if r["device"] == "cpu" and r["data"] == "folder" and r["space"] == "tiny"
    ]
    return {
        "pss_ratio_50k_10k": pss[big] / pss[small],
        "peak_pss_gb_50k": pss[big],
        "peak_pss_gb_50k_in_memory": in_memory[big]["peak_pss_gb"],
        # steady images/s, streamed over in memory, blocks interleaved in one process (median
        # of the blocks, the worse folder size); without such rows, the separate runs' figure
        "streamed_vs_memory_speed": min(r["speed_ratio"] for r in interleaved)
        if interleaved
        else separate,
        # the same with each block's first step (worker start-up) counted
        "streamed_vs_memory_speed_with_first_step": min(
            (r["speed_ratio_with_first"] for r in interleaved), default=None
        ),
        # main-process CPU seconds per steady step, in memory over streamed, interleaved
        "streamed_vs_memory_step_cpu": min(
            (r["step_cpu_ratio"] for r in interleaved), default=None
        ),
        # separate runs: the mean of the two streamed runs around the in-memory one (the worse
        # folder size)
        "streamed_vs_memory_speed_separate_runs": separate,
        # CPU seconds per image (process and workers), in memory over streamed: the speed ratio
        # if the run had the cores to itself and they were all busy
        "streamed_vs_memory_cpu": _cpu_ratio(streamed, in_memory),
        "elastic_overhead_cpu": max(r["elastic_overhead"] for r in cpu),
        "elastic_overhead_gpu": max(r["elastic_overhead"] for r in gpu_rows) if gpu_rows else None,
        "data_wait_share": max(waits),
        "device": gpu,
        "commit": commit or git_commit(cwd=ROOT),
    }


def _cpu_ratio(
    streamed: dict[int, list[dict[str, Any]]], in_memory: dict[int, dict[str, Any]]
) -> float | None:
    """min over folder sizes of (CPU s per image in memory) / (mean CPU s per image streamed)."""

    def per_image(r: dict[str, Any]) -> float | None:
        return r["cpu_s"] / r["images_trained"] if r.get("images_trained") else None

    ratios = []
    for n, rs in streamed.items():
        mem, own = per_image(in_memory[n]), [per_image(r) for r in rs]
        if mem is None or None in own:
            return None
        ratios.append(mem / float(np.mean([o for o in own if o is not None])))
    return min(ratios)


def table(results: dict[str, Any]) -> str:
    head = []
    if "settings" in results:
        st, host = results["settings"], results["host"]
        load = ", ".join(f"{v:.1f}" for v in host["loadavg_before"])
        head = [
            f"Preset `{st['preset']}` ({st['workers']} workers; memory rows "
            f"{'a full epoch' if st['memory_steps'] is None else str(st['memory_steps']) + ' steps'}"
            f"), {host['cpus']} CPUs shared with other work (load average before: {load}; "
            f"after: {', '.join(f'{v:.1f}' for v in host['loadavg_after'])}), "
            f"{host['minutes']:.0f} minutes.",
            "",
        ]
    lines = [
        *head,
        "| what | space | px | data | augment | images | precision | device | images/s "
        "| CPU ms/image | data wait | peak PSS GB | elastic overhead | (wall clock) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        if r["data"] == "interleaved":
            continue  # in their own table below

        def f(k: str, d: int = 2, r: dict[str, Any] = r) -> str:
            v = r.get(k)
            return "" if v is None else f"{v:.{d}f}"

        cpu_ms = f"{1000 * r['cpu_s'] / r['images_trained']:.0f}" if r.get("images_trained") else ""
        augment = r.get("augment", "auto") if r["data"] == "folder" else ""
        lines.append(
            f"| {r['what']} | {r['space']} | {r['resolution']} | {r['data']} | {augment} | "
            f"{r['n']} | {r['precision']} | {r['device']} | {f('images_per_s', 1)} | {cpu_ms} | "
            f"{f('data_wait_share')} | {f('peak_pss_gb')} | {f('elastic_overhead')} | "
            f"{f('elastic_overhead_wall')} |"
        )
    lines += _interleaved_table(results["rows"])
    t = results["targets"]
    lines += ["", "| target | figure |", "|---|---|"]
    lines += [
        f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in t.items()
    ]
    return "\n".join(lines) + "\n"


def _interleaved_table(rows: list[dict[str, Any]]) -> list[str]:
    """Streamed against in memory, blocks interleaved in one process: per block, steady
    images/s and main-process CPU seconds per step; the ratios of their medians."""
    out = []
    for r in (r for r in rows if r["data"] == "interleaved"):
        out += [
            "",
            f"Streamed against in memory in one process, {r['n']} images, blocks of "
            f"{r['steps']} steps (the first left out), {r['rounds']} round(s) of in memory / "
            "streamed / streamed / in memory:",
            "",
            "| data | steady images/s per block | main CPU s per step | first step s |",
            "|---|---|---|---|",
        ]
        for kind, label in (("memory", "in memory"), ("folder", "streamed")):
            blocks = r["blocks"][kind]
            ips = ", ".join(f"{b['images_per_s']:.1f}" for b in blocks)
            cpu = ", ".join(f"{b['step_cpu_s']:.2f}" for b in blocks)
            first = ", ".join(f"{b['first_step_s']:.2f}" for b in blocks)
            out.append(f"| {label} | {ips} | {cpu} | {first} |")
        out += [
            "",
            f"Ratio of medians, streamed / in memory: {r['speed_ratio']:.3f} (steady), "
            f"{r['speed_ratio_with_first']:.3f} (first steps counted); main-process CPU per "
            f"step, in memory / streamed: {r['step_cpu_ratio']:.3f}.",
        ]
    return out
