"""Streamed against in-memory speed of `benchmarks/train_scale.py`, measured in one process.

Separate runs minutes apart cannot resolve a 10 % difference on a shared host: on a quiet
2-core host two identical streamed runs trained at 74 and 95 images/s, their main process
spending 1.67 and 1.33 CPU seconds per step on the same computation. Here one process loads the
folder both ways and trains the same supernet (same seed, same sandwiches) in short blocks,
in memory / streamed / streamed / in memory, repeated, so that both sides see the same host
conditions; each block's first step (worker start-up, allocator warm-up) is left out on both
sides and reported beside.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["interleaved", "interleaved_ratio"]

#: the order of one round of blocks: in memory, streamed, streamed, in memory (a drift of the
#: host's speed over a round weighs on both sides alike)
ROUND: tuple[str, ...] = ("memory", "folder", "folder", "memory")


def interleaved(spec: dict[str, Any], data_of: Any, space_of: Any) -> dict[str, Any]:
    """`spec["rounds"]` rounds of `ROUND`, each block `spec["steps"]` steps of the supernet
    trained afresh; per side, each block's steady images/s (first step left out), the main
    process's CPU seconds per steady step, the first step's seconds and the data wait."""
    from nas.supernet import train_supernet

    t0 = time.perf_counter()
    data = {kind: data_of(spec, kind) for kind in ("memory", "folder")}
    load_s = time.perf_counter() - t0
    blocks: dict[str, list[dict[str, float]]] = {"memory": [], "folder": []}
    for r in range(spec["rounds"]):
        for b, kind in enumerate(ROUND):
            res = train_supernet(
                space_of(spec["space"], spec["resolution"]),
                data[kind],
                str(Path(spec["out"]) / f"{r}-{b}-{kind}"),
                schedule="sandwich",
                epochs=1,
                batch_size=spec["batch"],
                num_workers=spec["workers"] if kind == "folder" else 0,
                precision="fp32",
                device="cpu",
                max_steps=spec["steps"],
                progress=False,
            )
            steady = res.step_s[1:]
            blocks[kind].append(
                {
                    "images_per_s": spec["batch"] * len(steady) / sum(steady),
                    "images_per_s_with_first": res.images_per_s,
                    "step_cpu_s": float(np.mean(res.step_cpu_s[1:])),
                    "first_step_s": res.step_s[0],
                    "data_wait_s": res.data_wait_s,
                }
            )
    return {"load_s": load_s, "blocks": blocks, **interleaved_ratio(blocks)}


def interleaved_ratio(blocks: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """Streamed over in memory: the medians of the blocks' steady images/s (the speed target),
    the same with each block's first step counted, and main-process CPU per steady step (in
    memory over streamed: above 1 when the streamed steps cost the main process less)."""

    def med(kind: str, key: str) -> float:
        return float(np.median([b[key] for b in blocks[kind]]))

    return {
        "speed_ratio": med("folder", "images_per_s") / med("memory", "images_per_s"),
        "speed_ratio_with_first": (
            med("folder", "images_per_s_with_first") / med("memory", "images_per_s_with_first")
        ),
        "step_cpu_ratio": med("memory", "step_cpu_s") / med("folder", "step_cpu_s"),
        "images_per_s_memory": med("memory", "images_per_s"),
        "images_per_s_folder": med("folder", "images_per_s"),
    }
