"""benchmarks/hwtrain.py: its targets (worst cases over rows, what is not measured said), its
percentile targets, its table, and its command line."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "hwtrain_bench", ROOT / "benchmarks" / "hwtrain.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _row(**kw: object) -> dict[str, object]:
    row: dict[str, object] = {
        "space": "tiny", "device": "pixel3-emulated", "kind": "emulated", "percentile": 50,
        "target_ms": 0.3, "relaxation": "gumbel", "seed": 0, "predicted_ms": 0.31,
        "priced_ms": 0.29, "predicted_err_pct": 3.3, "priced_err_pct": 3.3,
        "argmax_err_pct": 20.0, "mc_ratio_uniform": 0.2, "mc_ratio_final": 0.4,
        "test_accuracy": 0.5, "wall_s": 10.0,
    }  # fmt: skip
    row.update(kw)
    return row


def test_targets_are_the_worst_case_over_rows() -> None:
    bench = _bench()
    rows = [_row(), _row(predicted_err_pct=7.0, mc_ratio_uniform=1.3, kind="table")]
    targets = bench._targets(rows, "abc")
    assert targets["predicted_err_pct"] == 7.0
    assert targets["expected_vs_mc_ratio"] == 1.3
    assert targets["accuracy_vs_front_pts"] is None and "cost_ratio" in targets["not_measured"]
    assert targets["commit"] == "abc"
    assert bench._table(rows).count("\n") == 4


def test_nb201_targets_are_the_tables_percentiles(nb201_csv: Path) -> None:
    bench = _bench()
    pcts = bench._percentiles("nb201", "nb201-pixel3")
    assert pcts[25] < pcts[50] < pcts[75]


def test_its_command_line() -> None:
    bench = _bench()
    with pytest.raises(SystemExit):
        bench.main([])  # --out is required
    args = bench._args(bench._cases(True)[1], 20.0, "gumbel", 0, Path("x"))
    assert args.table.endswith("nb201.csv") and args.max_steps == 4
