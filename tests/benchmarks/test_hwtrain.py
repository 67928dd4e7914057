"""benchmarks/hwtrain.py: its targets (worst cases over rows, what is not measured said), its
percentile targets, its tables, its command line, the comparison with the search route's front,
the real runtime's held-out error, and one case end to end."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
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


def _report() -> ModuleType:
    """benchmarks/_hwtrain_report.py (targets and tables), as the benchmark imports it."""
    _bench()
    return sys.modules["benchmarks._hwtrain_report"]


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
    report = _report()
    rows = [_row(), _row(predicted_err_pct=7.0, mc_ratio_uniform=1.3, kind="table")]
    targets = report._targets(rows, "abc")
    assert targets["predicted_err_pct"] == 7.0
    assert targets["expected_vs_mc_ratio"] == 1.3
    assert targets["accuracy_vs_front_pts"] is None and "cost_ratio" in targets["not_measured"]
    assert targets["commit"] == "abc"
    assert report._table(rows).count("\n") == 4


def test_seed_means_judge_the_mean_difference_with_its_t_interval() -> None:
    """Per case over seeds: the mean paired difference and its 95 % t-interval; a tight spread
    below -1 is "missed", a tight one above "met", a wide one "not resolvable"; a case with one
    seed has no interval and no row."""
    report = _report()
    rows = [_row(seed=s, vs_front_pts=d) for s, d in enumerate((-3.0, -3.2, -2.8))]
    rows += [_row(seed=s, percentile=25, vs_front_pts=d) for s, d in enumerate((0.5, 0.7, 0.6))]
    rows += [_row(seed=s, percentile=75, vs_front_pts=d) for s, d in enumerate((-9.0, 8.0, 1.0))]
    rows += [_row(relaxation="proxyless", vs_front_pts=-20.0)]
    means = {m["percentile"]: m for m in report._seed_means(rows) if m["relaxation"] == "gumbel"}
    assert means[50]["mean_pts"] == pytest.approx(-3.0) and means[50]["verdict"] == "missed"
    # t(0.975, 2) = 4.303, sd 0.2: +-0.497
    assert means[50]["ci95_pts"] == pytest.approx(4.303 * 0.2 / 3**0.5, rel=1e-3)
    assert means[25]["verdict"] == "met" and means[75]["verdict"] == "not resolvable"
    assert all(m["relaxation"] == "gumbel" for m in report._seed_means(rows))
    targets = report._targets(rows, "abc")
    assert targets["accuracy_vs_front_seed_mean_pts"] == pytest.approx(-3.0)
    assert targets["accuracy_vs_front_pts"] == -20.0  # the contract's figure stays the worst row
    assert "missed" in report._seed_table(report._seed_means(rows))


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


def test_its_presets() -> None:
    """`medium` is one seed of every case the issue names (tiny on the emulated phone with both
    relaxations and on the real runtime, nb201 on its table device at three percentiles, the
    fbnet short run), each trained longer than `quick`; `--quick` is `--preset quick`."""
    bench = _bench()
    assert bench._cases(True) == bench._cases("quick") and bench._cases(False) == bench._cases(
        "full"
    )
    medium = {(c["space"], c["device"]): c for c in bench._cases("medium")}
    assert set(medium) == {("tiny", "pixel3-emulated"), ("tiny", "ort-cpu-1t"),
                           ("nb201", "nb201-pixel3"), ("fbnet", "pixel3-emulated")}  # fmt: skip
    assert medium["tiny", "pixel3-emulated"]["relax"] == ["gumbel", "proxyless"]
    assert medium["nb201", "nb201-pixel3"].get("percentiles", bench.PERCENTILES) == (25, 50, 75)
    assert all(c["seeds"] == [0] for c in medium.values())

    def steps(train: dict) -> int:
        return int(train["epochs"] * train["max_steps"])

    quick = bench._cases("quick")[0]["train"]
    assert steps(medium["tiny", "pixel3-emulated"]["train"]) >= 10 * steps(quick)
    with pytest.raises(ValueError, match="unknown preset"):
        bench._cases("huge")


def test_seeds3_is_medium_at_three_seeds_and_splits_by_seed() -> None:
    """`seeds3` trains as `medium` at seeds 0-2 with both relaxations on `tiny` (fbnet stays the
    one-seed short run); `--seeds` keeps only those seeds and drops a case left with none."""
    bench = _bench()
    medium = {(c["space"], c["device"]): c for c in bench._cases("medium")}
    seeds3 = {(c["space"], c["device"]): c for c in bench._cases("seeds3")}
    assert set(seeds3) == set(medium)
    for key, case in seeds3.items():
        assert case["train"] == medium[key]["train"]
        assert case["seeds"] == ([0] if key[0] == "fbnet" else [0, 1, 2])
        if key[0] == "tiny":
            assert case["relax"] == ["gumbel", "proxyless"]
    split = bench._only_seeds(bench._cases("seeds3"), [2])
    assert {c["space"] for c in split} == {"tiny", "nb201"}
    assert all(c["seeds"] == [2] for c in split)
    assert bench._only_seeds(bench._cases("seeds3"), None) == bench._cases("seeds3")


def test_finished_rows_survive_a_crash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """results.json and table.md are rewritten as each row finishes: a run killed in its third
    row keeps the first two, marked partial; a run that ends is not partial."""
    bench = _bench()
    monkeypatch.setattr(bench, "_cases", lambda preset: [{"space": "tiny", "device": "a"}])
    monkeypatch.setattr("nas.data.load_dataset", lambda name: None)

    def crash(case: dict, data: object, out: Path, noise: dict, on_row: object) -> list:
        on_row(_row(seed=0))  # type: ignore[operator]
        on_row(_row(seed=1, predicted_err_pct=4.0))  # type: ignore[operator]
        raise RuntimeError("killed")

    monkeypatch.setattr(bench, "_case_rows", crash)
    monkeypatch.setattr(bench, "_write", _killed_after(bench._write, 3))
    with pytest.raises(KeyboardInterrupt):  # killed while the third row trains
        bench.main(["--out", str(tmp_path), "--preset", "medium"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["partial"] and results["preset"] == "medium" and len(results["rows"]) == 2
    assert results["targets"]["predicted_err_pct"] == 4.0
    assert "partial: 2 rows" in (tmp_path / "table.md").read_text()

    def finish(case: dict, data: object, out: Path, noise: dict, on_row: object) -> list:
        on_row(_row())  # type: ignore[operator]
        return []

    monkeypatch.undo()
    monkeypatch.setattr(bench, "_cases", lambda preset: [{"space": "tiny", "device": "a"}] * 2)
    monkeypatch.setattr("nas.data.load_dataset", lambda name: None)
    monkeypatch.setattr(bench, "_case_rows", crash)  # a case that fails: the next one runs
    assert bench.main(["--out", str(tmp_path), "--quick"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["partial"] and len(results["rows"]) == 4
    assert results["failed_cases"] == [{"space": "tiny", "device": "a",
                                        "error": "RuntimeError: killed"}] * 2  # fmt: skip

    monkeypatch.setattr(bench, "_case_rows", finish)
    assert bench.main(["--out", str(tmp_path), "--quick"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert not results["partial"] and results["preset"] == "quick" and len(results["rows"]) == 2


def _killed_after(write: Any, calls: int) -> Any:
    """`_write`, with a kill (KeyboardInterrupt) in place of its `calls`-th call."""
    seen = [0]

    def killed(*args: Any, **kw: Any) -> None:
        seen[0] += 1
        if seen[0] == calls:
            raise KeyboardInterrupt
        write(*args, **kw)

    return killed


def test_targets_take_the_search_route_and_the_real_runtime() -> None:
    report = _report()
    rows = [
        _row(vs_front_pts=-3.0, cost_ratio=0.8, verdict="not resolvable"),
        _row(vs_front_pts=None, cost_ratio=2.5, verdict="no front arch at or below this latency"),
        _row(kind="real", priced_err_pct=30.0, vs_front_pts=1.0, cost_ratio=1.1,
             heldout_p95_pct=27.0, real_excess_pct=-2.0),
        _row(kind="real", priced_err_pct=9.0, vs_front_pts=-7.5, cost_ratio=0.9,
             heldout_p95_pct=0.0, real_excess_pct=4.0),
    ]  # fmt: skip
    targets = report._targets(rows, "abc")
    assert targets["accuracy_vs_front_pts"] == -7.5  # the worst row with a front arch
    assert targets["cost_ratio"] == 2.5
    assert targets["real_excess_pct"] == 4.0  # real rows only, against their own allowance
    assert targets["priced_err_pct"] == 3.3  # a measured figure is not a priced one
    assert targets["not_measured"] == {} and targets["accuracy_not_resolvable_rows"] == 1
    table = report._route_table(rows)
    assert table.count("\n") == 2 + len(rows) and "9.0 vs 5.0" in table


class _Data:
    """Test images in groups of one: what `_versus_front` reads of a data set."""

    def __init__(self, n: int) -> None:
        self.n = n

    def groups(self, name: str) -> np.ndarray:
        return np.arange(self.n)


def test_versus_front_takes_the_best_front_arch_at_or_below_the_latency(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from search_spaces import get_space

    bench = _bench()
    space = get_space("tiny")
    keys = list(dict.fromkeys(space.key(space.sample(i)) for i in range(10)))[:4]
    derived, fast, mid, slow = keys
    n = 2000
    rng = np.random.default_rng(0)
    share = {fast: 0.6, mid: 0.8, slow: 0.95}

    def mask(p: float) -> np.ndarray:
        return rng.random(n) < p

    masks = {k: mask(p) for k, p in share.items()}

    def correct(net: object, space_: object, arch: dict, data: object, seed: int) -> np.ndarray:
        key = space.key(arch)
        return masks[key] if net == "search" or key != derived else masks["mine"]

    route_module = sys.modules["benchmarks._hwtrain_route"]  # where _versus_front looks them up
    monkeypatch.setattr(route_module, "_correct", correct)
    monkeypatch.setattr(route_module, "_hw_net", lambda space_, row_dir: "hwtrain")
    route = {
        "net": "search",
        "front": [{"key": fast, "device_ms": 0.2}, {"key": mid, "device_ms": 0.3},
                  {"key": slow, "device_ms": 0.5}],
    }  # fmt: skip
    masks[derived] = mask(0.5)  # the derived arch scored with the search supernet's weights
    noise = {"seed_sd_pts": 0.0, "diff_ci95_pts": 8.16}
    row = {"space": "tiny", "seed": 0, "derived_key": derived, "priced_ms": 0.3}

    masks["mine"] = mask(0.5)
    out = bench._versus_front(row, route, _Data(n), tmp_path, noise)
    assert out["front_key"] == mid and out["front_device_ms"] == 0.3  # not the slower, better one
    assert out["vs_front_pts"] == pytest.approx(100 * (masks["mine"].mean() - masks[mid].mean()))
    assert out["verdict"] == "missed" and 0 < out["resolvable_pts"] < 5

    masks["mine"] = masks[mid].copy()
    masks["mine"][:3] = ~masks["mine"][:3]  # a few images apart: inside the interval
    assert bench._versus_front(row, route, _Data(n), tmp_path, noise)["verdict"] == (
        "not resolvable"
    )

    masks["mine"] = mask(0.99)
    assert bench._versus_front(row, route, _Data(n), tmp_path, noise)["verdict"] == "met"

    seeds = {"seed_sd_pts": 30.0, "diff_ci95_pts": 8.16}  # training noise swamps 30 points
    masks["mine"] = mask(0.5)
    assert bench._versus_front(row, route, _Data(n), tmp_path, seeds)["verdict"] == (
        "not resolvable"
    )

    faster = bench._versus_front({**row, "priced_ms": 0.1}, route, _Data(n), tmp_path, noise)
    assert faster["front_key"] is None and faster["vs_front_pts"] is None


def test_heldout_error_is_the_models_error_on_the_held_out_networks() -> None:
    bench = _bench()
    measured = [1.0 + i / 10 for i in range(20)]
    predicted = [m * (1.1 if i % 2 else 1.0) for i, m in enumerate(measured)]
    held = bench._heldout(SimpleNamespace(measured_ms=measured, predicted_ms=predicted,
                                          model="corrected"))  # fmt: skip
    assert held["p95_pct"] == pytest.approx(10.0) and held["n"] == 20
    assert held["mape_pct"] == pytest.approx(5.0) and held["model"] == "corrected"
    one_off = [m * 1.5 if i == 0 else m for i, m in enumerate(measured)]
    worse = bench._heldout(SimpleNamespace(measured_ms=measured, predicted_ms=one_off, model="x"))
    assert worse["p95_pct"] == pytest.approx(2.5)  # one network in 20 off by 50 %: its quantile


@pytest.mark.slow
def test_one_case_end_to_end_with_its_search_route(tmp_path: Path) -> None:
    """One target on `tiny` at the smallest settings: the row, the route (supernet, search,
    front), the comparison and the cost ratio; a second call reads everything back."""
    from nas.data import load_dataset

    bench = _bench()
    train = {"epochs": 2, "warmup_epochs": 1, "max_steps": 1, "batch_size": 16}
    case = {"space": "tiny", "device": "pixel3-emulated", "relax": ["gumbel"], "seeds": [0],
            "train": train, "trials": 3, "percentiles": (50,), "n": 20, "lut_archs": 2}  # fmt: skip
    data = load_dataset("digits")
    (row,) = bench._case_rows(case, data, tmp_path, bench._noise())
    assert row["route_s"] == pytest.approx(row["route_supernet_s"] + row["route_search_s"])
    assert row["cost_ratio"] == pytest.approx(row["wall_s"] / row["route_s"])
    route = json.loads((tmp_path / "route-tiny-s0" / "pixel3-emulated" / "route.json").read_text())
    assert route["front"] and route["metric"] == "latency_ms@pixel3-emulated"
    if row["front_key"] is not None:
        ms = {f["key"]: f["device_ms"] for f in route["front"]}
        assert ms[row["front_key"]] <= row["priced_ms"]
    assert row["verdict"] in ("met", "missed", "not resolvable") or row["front_key"] is None
    lut = tmp_path / "latency" / "lut-pixel3-emulated.csv"
    assert (tmp_path / "tiny-pixel3-emulated-p50-gumbel-s0" / lut.name).read_bytes() == (
        lut.read_bytes()
    )  # the row priced with the route's table
    assert bench._case_rows(case, data, tmp_path, bench._noise()) == [row]


def test_real_rows_are_timed_again_interleaved_and_cached(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`--remeasure-real N` times each real-runtime row's derived arch N more times, repeat k of
    every row before repeat k + 1, adds the median's error against the row's allowance (the
    in-run figure untouched) and reads its cache back on a rerun; emulated rows are left be."""
    _bench()
    remeasure = sys.modules["benchmarks._hwtrain_remeasure"]
    from search_spaces import get_space

    calls: list[str] = []

    class Timed:
        def __init__(self, ms: float) -> None:
            self.latency_ms = ms

    class FakeDevice:
        def measure_arch(self, space: object, arch: object) -> Timed:
            calls.append("timed")
            return Timed(0.1 + 0.01 * len(calls))

    monkeypatch.setattr("latency_models.get_device", lambda name: FakeDevice())
    arch_key = get_space("tiny").key(get_space("tiny").sample(0))
    real = dict(kind="real", device="ort-cpu-1t", derived_key=arch_key, target_ms=0.1,
                heldout_p95_pct=20.0, priced_err_pct=50.0)  # fmt: skip
    rows = [_row(**real, percentile=p) for p in (25, 75)] + [_row()]
    for row in rows[:2]:
        remeasure._folder(row, tmp_path).mkdir(parents=True)
    remeasure.remeasure_real_rows(rows, tmp_path, 3)
    assert len(calls) == 6 and "remeasured_ms" not in rows[2]
    first = rows[0]
    assert first["remeasured_ms"] == pytest.approx([0.11, 0.13, 0.15])  # calls 1, 3, 5
    assert first["remeasured_err_pct"] == pytest.approx(30.0)
    assert first["remeasured_excess_pct"] == pytest.approx(30.0 - 25.0)
    assert first["priced_err_pct"] == 50.0  # the in-run figure stays the contract's
    targets = sys.modules["benchmarks._hwtrain_report"]._targets(rows, "abc")
    assert targets["real_excess_remeasured_pct"] == pytest.approx(
        max(r["remeasured_excess_pct"] for r in rows[:2])
    )
    again = [_row(**real, percentile=p) for p in (25, 75)]
    remeasure.remeasure_real_rows(again, tmp_path, 3)
    assert len(calls) == 6 and again[0]["remeasured_ms"] == first["remeasured_ms"]
