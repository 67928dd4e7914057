"""benchmarks/accuracy_noise.py end to end on tiny settings: two seeds, resumed, analysed; its CLI."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from nas.data import ImageDataset

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "accuracy_noise_bench", ROOT / "benchmarks" / "accuracy_noise.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _random_data(train: int, test_sources: int, copies: int) -> ImageDataset:
    """Noise images in the embedded digits' shape; test images come as copies of sources."""
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> TensorDataset:
        return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 10)

    n_test = test_sources * copies
    return ImageDataset(
        name="noise",
        train=split(train),
        val=split(20),
        test=split(n_test),
        num_classes=10,
        input_shape=(3, 32, 32),
        class_names=tuple(str(i) for i in range(10)),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        source_ids={"test": np.tile(np.arange(test_sources), copies)},
    )


def _tiny_settings(bench: ModuleType) -> dict[str, Any]:
    """The demo's settings cut to one step of 16 images (the figures mean nothing)."""
    settings: dict[str, Any] = bench.demo_settings(quick=True)
    assert settings["supernet"]["epochs"] >= 1 and settings["quick"]
    settings["supernet"].update(max_steps=1, batch_size=16)
    settings["calib_images"] = 32
    settings["chain"] = {
        "distill": {"epochs": 1.0, "max_steps": 1, "batch_size": 16},
        "bn_calibration_images": 32,
    }
    return settings


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread, as the benchmark runs (faster on a shared machine), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_two_seeds_on_tiny_settings_resume_and_give_every_figure(
    tmp_path: Path, one_thread: None
) -> None:
    bench = _bench()
    settings = _tiny_settings(bench)
    data = _random_data(train=256, test_sources=150, copies=2)
    out = tmp_path / "out"
    r = bench.run(out, settings, [0, 1], n_boot=50, boot_seed=0, data=data)
    models = ["inherited " + n for n in ("smallest", "q25", "median", "q75", "largest")]
    assert list(r["models"]) == [*models, "kd median"]
    assert (r["test_images"], r["test_sources"]) == (300, 150)
    t = r["targets"]
    for key in ("diff_ci95_pts", "diff_ci95_pts_direct", "accuracy_ci95_pts", "seed_sd_pts"):
        assert np.isfinite(t[key]) and t[key] >= 0, key
    assert t["diff_ci95_pts"] >= t["paired_diff_ci95_pts"]  # the seed spread only adds
    assert t["commit"] == r["commit"]
    for rec in r["per_seed"]:  # the chain's own figure is the one measured here
        assert rec["chain_reported_kd_accuracy_pts"] == pytest.approx(
            rec["accuracy_pts"]["kd median"], abs=1e-4
        )
    assert json.loads((out / "results.json").read_text())["targets"] == t
    assert "diff_ci95_pts" in (out / "table.md").read_text()
    # a second call reads both seeds back: the same figures, no training
    again = bench.run(out, settings, [0, 1], n_boot=50, boot_seed=0, data=data)
    assert again["per_seed"] == r["per_seed"] and again["targets"] == t


@pytest.mark.slow
def test_the_script_trains_seeds_in_parts_then_writes_results_and_table(
    tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the command line as the real run uses it: seeds trained by separate calls (--only), then
    # one call reads them and writes results.json and table.md into --out
    bench = _bench()
    tiny = _tiny_settings(bench)
    monkeypatch.setattr(bench, "demo_settings", lambda quick: tiny)
    data = _random_data(train=128, test_sources=60, copies=2)
    monkeypatch.setattr(bench, "load_data", lambda settings: data)
    out = tmp_path / "out"
    for only in (["--only", "1"], ["--only", "0"], []):
        argv = ["accuracy_noise.py", "--out", str(out), "--seeds", "2", "--boot", "40", *only]
        monkeypatch.setattr(sys, "argv", argv)
        bench.main()
        assert (out / "results.json").exists() == (not only)
    assert sorted(p.name for p in out.glob("seed-*")) == ["seed-0", "seed-1"]
    r = json.loads((out / "results.json").read_text())
    assert r["seeds"] == [0, 1] and r["n_boot"] == 40
    assert r["targets"]["diff_ci95_pts"] >= 0 and r["targets"]["commit"] == r["commit"]
    assert set(r["medians"]) == set(r["models"])
    table = (out / "table.md").read_text()
    assert "`diff_ci95_pts`" in table and f"{r['targets']['diff_ci95_pts']:.2f}" in table
    with pytest.raises(SystemExit):  # a spread needs two runs
        monkeypatch.setattr(sys, "argv", ["accuracy_noise.py", "--out", str(out), "--seeds", "1"])
        bench.main()
