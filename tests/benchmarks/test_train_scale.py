"""benchmarks/train_scale.py on tiny settings: a generated folder, one measured run in a
subprocess (PSS sampled over it and its workers), the static-subnet timing, targets and table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "train_scale_bench", ROOT / "benchmarks" / "train_scale.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_generated_folder(tmp_path: Path) -> None:
    bench = _bench()
    root = bench.make_folder(tmp_path / "f", 23, 16, classes=4)
    files = sorted(root.rglob("*.jpg"))
    assert len(files) == 23 and len(list(root.iterdir())) == 4
    from nas.data import load_streamed_folder

    ds = load_streamed_folder(root, resolution=16, val_fraction=0.0, test_fraction=0.0)
    assert len(ds.train) == 23 and not ds.skipped


@pytest.mark.slow
def test_one_run_targets_and_table(tmp_path: Path) -> None:
    bench = _bench()
    folder = bench.make_folder(tmp_path / "f", 40, 32)
    spec = {"space": "tiny", "resolution": 32, "data": "folder", "folder": str(folder),
            "batch": 8, "workers": 1, "precision": "fp32", "device": "cpu", "steps": 2,
            "out": str(tmp_path / "run"), "n": 40, "what": "throughput"}  # fmt: skip
    row = bench.run_child(spec)
    assert row["steps"] == 2 and row["device"] == "cpu"
    assert 0.05 < row["peak_pss_gb"] < 4 and 0 <= row["data_wait_share"] < 1
    static = bench.static_step_s("tiny", 32, 8, 1, "fp32", "cpu")
    assert static > 0
    mem = [
        {**row, "what": "memory", "n": n, "data": kind, "peak_pss_gb": pss, "images_per_s": ips}
        for n, kind, pss, ips in ((10, "folder", 1.0, 10.0), (50, "folder", 1.05, 9.0),
                                  (10, "memory", 1.2, 10.0), (50, "memory", 2.0, 10.0))
    ]  # fmt: skip
    thr = [row, {**row, "data": "synthetic", "step_s": 3.0, "elastic_overhead": 1.5}]
    t = bench.targets(mem, thr, None)
    assert t["pss_ratio_50k_10k"] == pytest.approx(1.05)
    assert t["peak_pss_gb_50k"] == 1.05 and t["peak_pss_gb_50k_in_memory"] == 2.0
    assert t["streamed_vs_memory_speed"] == pytest.approx(0.9)
    assert t["elastic_overhead_cpu"] == 1.5 and t["elastic_overhead_gpu"] is None
    assert t["data_wait_share"] == row["data_wait_share"] and t["device"] is None
    text = bench.table({"rows": mem + thr, "targets": t})
    assert "| pss_ratio_50k_10k | 1.050 |" in text and text.count("\n| memory |") == 4


def test_speed_targets_bracket_the_in_memory_run() -> None:
    """Two streamed runs around the in-memory one: their mean images/s against it, PSS their
    max, and CPU seconds per image (in memory over streamed) beside; the worse folder size."""
    bench = _bench()

    def row(n: int, kind: str, ips: float, cpu: float, pss: float) -> dict[str, object]:
        return {"what": "memory", "n": n, "data": kind, "images_per_s": ips, "cpu_s": cpu,
                "images_trained": 100, "peak_pss_gb": pss}  # fmt: skip

    mem = [row(10, "folder", 8.0, 12.0, 1.0), row(10, "memory", 10.0, 10.0, 1.2),
           row(10, "folder", 10.0, 8.0, 0.9), row(50, "folder", 10.0, 10.0, 1.1),
           row(50, "memory", 10.0, 10.0, 3.0), row(50, "folder", 10.0, 10.0, 1.0)]  # fmt: skip
    thr = [{"device": "cpu", "data": "synthetic", "space": "tiny", "elastic_overhead": 1.1},
           {"device": "cpu", "data": "folder", "space": "tiny", "data_wait_share": 0.02}]  # fmt: skip
    t = bench.targets(mem, thr, None, "abc")
    assert t["streamed_vs_memory_speed"] == pytest.approx(0.9)  # (8 + 10) / 2 / 10
    assert t["streamed_vs_memory_cpu"] == pytest.approx(1.0)
    assert t["pss_ratio_50k_10k"] == pytest.approx(1.1) and t["commit"] == "abc"
    slow = [{**r, "cpu_s": 12.5} if r["data"] == "folder" else r for r in mem]
    assert bench.targets(slow, thr, None, "abc")["streamed_vs_memory_cpu"] == pytest.approx(0.8)


@pytest.mark.slow
def test_speed_row_interleaves_both_paths_in_one_process(tmp_path: Path) -> None:
    """The speed target's run: one subprocess trains from memory and streamed in blocks
    (in memory, streamed, streamed, in memory), each block's first step left out."""
    bench = _bench()
    folder = bench.make_folder(tmp_path / "f", 24, 64)
    cfg = {"memory_batch": 8, "speed_block_steps": 3, "speed_rounds": 1}
    row = bench.speed_row(tmp_path, cfg, 1, folder, 24)
    assert row["what"] == "speed" and row["peak_pss_gb"] == 0  # no PSS sampling beside it
    assert [len(row["blocks"][k]) for k in ("memory", "folder")] == [2, 2]
    for blocks in row["blocks"].values():
        for b in blocks:
            assert b["images_per_s"] > 0 and b["step_cpu_s"] > 0 and b["first_step_s"] > 0
    ips = {
        k: float(np.median([b["images_per_s"] for b in row["blocks"][k]])) for k in row["blocks"]
    }
    assert row["speed_ratio"] == pytest.approx(ips["folder"] / ips["memory"])
    assert row["images_per_s_memory"] == pytest.approx(ips["memory"])


def test_speed_target_comes_from_the_interleaved_row() -> None:
    """With an interleaved row the target is its ratio (the worse folder size), the separate
    runs' figure beside it; the table shows each block."""
    bench = _bench()

    def row(n: int, kind: str, ips: float) -> dict[str, object]:
        return {"what": "memory", "n": n, "data": kind, "images_per_s": ips, "cpu_s": 10.0,
                "images_trained": 100, "peak_pss_gb": 1.0, "space": "tiny", "resolution": 64,
                "precision": "fp32", "device": "cpu"}  # fmt: skip

    def block(ips: float, cpu: float) -> dict[str, float]:
        return {"images_per_s": ips, "images_per_s_with_first": ips * 0.9, "step_cpu_s": cpu,
                "first_step_s": 2.0, "data_wait_s": 0.1}  # fmt: skip

    blocks = {"memory": [block(10.0, 1.0), block(12.0, 1.2)],
              "folder": [block(9.0, 1.1), block(10.0, 1.0)]}  # fmt: skip
    speed = bench.interleaved_ratio(blocks)
    assert speed["speed_ratio"] == pytest.approx(9.5 / 11.0)
    assert speed["step_cpu_ratio"] == pytest.approx(1.1 / 1.05)
    inter = {"what": "speed", "n": 10, "data": "interleaved", "steps": 8, "rounds": 1,
             "blocks": blocks, **speed}  # fmt: skip
    mem = [row(10, "folder", 8.0), row(10, "memory", 10.0), row(10, "folder", 10.0),
           row(50, "folder", 10.0), row(50, "memory", 10.0), row(50, "folder", 10.0), inter]  # fmt: skip
    thr = [{"device": "cpu", "data": "synthetic", "space": "tiny", "elastic_overhead": 1.1},
           {"device": "cpu", "data": "folder", "space": "tiny", "data_wait_share": 0.02}]  # fmt: skip
    t = bench.targets(mem, thr, None, "abc")
    assert t["streamed_vs_memory_speed"] == pytest.approx(9.5 / 11.0)
    assert t["streamed_vs_memory_speed_separate_runs"] == pytest.approx(0.9)
    assert t["streamed_vs_memory_speed_with_first_step"] == pytest.approx(9.5 / 11.0)
    assert t["streamed_vs_memory_step_cpu"] == pytest.approx(1.1 / 1.05)
    no_inter = bench.targets(mem[:-1], thr, None, "abc")
    assert no_inter["streamed_vs_memory_speed"] == pytest.approx(0.9)
    assert no_inter["streamed_vs_memory_step_cpu"] is None
    text = bench.table({"rows": mem, "targets": t})
    assert "| in memory | 10.0, 12.0 | 1.00, 1.20 | 2.00, 2.00 |" in text
    assert "| streamed | 9.0, 10.0 |" in text and text.count("\n| memory |") == 6
