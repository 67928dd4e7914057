"""benchmarks/train_scale.py on tiny settings: a generated folder, one measured run in a
subprocess (PSS sampled over it and its workers), the static-subnet timing, targets and table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

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
