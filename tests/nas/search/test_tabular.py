from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from nas.search.tabular import TableError, TabularBenchmark, bench_tabular, parse_key, summarize
from tests.nas.search.search_toy import FakeLatency, ToySpace, toy_accuracy


def _toy_csv(path: Path) -> Path:
    space, pixel, pi = ToySpace(), FakeLatency("pixel3"), FakeLatency("raspi4", 3.0)
    archs = list(space.enumerate())
    pd.DataFrame(
        {
            "arch": [space.key(a) for a in archs],
            "top1": [toy_accuracy(a) for a in archs],
            "pixel3_ms": pixel.predict_many(space, archs),
            "raspi4_ms": pi.predict_many(space, archs),
        }
    ).to_csv(path, index=False)
    return path


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = _toy_csv(tmp_path / "t.csv")
    with pytest.raises(TableError, match=r"missing column\(s\) \['top5', 'gpu_ms'\]") as err:
        TabularBenchmark.from_csv(
            path, ToySpace(), "arch", ["top1", "top5"], ["pixel3_ms", "gpu_ms"]
        )
    assert "the table has ['arch', 'top1', 'pixel3_ms', 'raspi4_ms']" in str(err.value)


def test_unknown_archs_list_the_first_bad_rows(tmp_path: Path) -> None:
    frame = pd.read_csv(_toy_csv(tmp_path / "t.csv"))
    frame.loc[3, "arch"] = "width=9|depth=1|kernel=3|act=relu"
    frame.loc[7, "arch"] = "not an arch"
    with pytest.raises(TableError, match="2 row\\(s\\) name no arch") as err:
        TabularBenchmark(ToySpace(), frame, "arch", ["top1"], ["pixel3_ms"])
    assert "row 3: 'width=9|depth=1|kernel=3|act=relu'" in str(err.value)
    assert "row 7: 'not an arch'" in str(err.value)


def test_bad_values_and_repeated_archs_fail_clearly(tmp_path: Path) -> None:
    frame = pd.read_csv(_toy_csv(tmp_path / "t.csv"))
    bad = frame.copy()
    bad.loc[5, "pixel3_ms"] = np.nan
    with pytest.raises(TableError, match=r"column 'pixel3_ms' has 1 bad value.*row 5"):
        TabularBenchmark(ToySpace(), bad, "arch", ["top1"], ["pixel3_ms"])
    dup = pd.concat([frame, frame.iloc[[2]]], ignore_index=True)
    with pytest.raises(TableError, match=f"row {len(frame)}.*same arch as row 2"):
        TabularBenchmark(ToySpace(), dup, "arch", ["top1"], ["pixel3_ms"])
    with pytest.raises(TableError, match="no table at"):
        TabularBenchmark.from_csv(
            tmp_path / "nope.csv", ToySpace(), "arch", ["top1"], ["pixel3_ms"]
        )


def test_table_models_and_true_front(tmp_path: Path) -> None:
    space = ToySpace()
    table = TabularBenchmark.from_csv(
        _toy_csv(tmp_path / "t.csv"), space, "arch", "top1", ["pixel3_ms", "raspi4_ms"]
    )
    arch = space.sample(0)
    assert parse_key(space, space.key(arch)) == space.validate(arch)
    model = table.latency_model("raspi4_ms")
    assert model.device == "raspi4" and model.dtype == "fp32"
    assert model.predict_arch(space, arch) == pytest.approx(
        FakeLatency("r", 3.0).predict_arch(space, arch)
    )
    acc = table.accuracy()
    assert acc(arch) == pytest.approx(toy_accuracy(arch)) and acc.paid_keys == [space.key(arch)]
    front = table.true_front("top1", "pixel3_ms")
    assert front["pixel3_ms"].is_monotonic_increasing and front["top1"].is_monotonic_increasing
    assert table.hypervolume(list(table.archs), "top1", "pixel3_ms") == pytest.approx(
        table.hypervolume(None, "top1", "pixel3_ms")
    )


def test_bench_tabular_scores_hv_ratios(tmp_path: Path) -> None:
    table = TabularBenchmark.from_csv(
        _toy_csv(tmp_path / "t.csv"), ToySpace(), "arch", "top1", ["pixel3_ms", "raspi4_ms"]
    )
    runs = bench_tabular(
        table, "top1", "pixel3_ms", ["random", "frontier"], budgets=(10, 20), seeds=[0, 1]
    )
    assert len(runs) == 2 * 2 * 2
    assert runs["hv_ratio"].between(0, 1 + 1e-9).all()
    assert (runs["n_paid"] <= runs["budget"]).all()
    summary = summarize(runs).set_index(["strategy", "budget"])
    assert summary.loc[("frontier", 20), "mean"] >= summary.loc[("frontier", 10), "mean"]
    assert summary.loc[("frontier", 20), "mean"] > 0.9


@pytest.mark.shared
def test_nb201_table_runs_a_short_tabular_search(nb201_csv: Path) -> None:
    from search_spaces import NB201Space

    table = TabularBenchmark.from_csv(
        nb201_csv, NB201Space(), "arch_str", "cifar10_acc", ["pixel3_ms", "raspi4_ms"]
    )
    assert len(table.archs) == 15_625
    by_index = TabularBenchmark(
        NB201Space(), table.frame.head(50), "arch_idx", ["cifar10_acc"], ["pixel3_ms"]
    )
    assert by_index.keys == table.keys[:50]  # the index column reads the benchmark's order
    runs = bench_tabular(table, "cifar10_acc", "pixel3_ms", ["frontier"], budgets=(15,), seeds=[0])
    assert 0 < runs["hv_ratio"].iloc[0] <= 1


def _search_bench() -> ModuleType:
    root = Path(__file__).resolve().parents[3]
    spec = importlib.util.spec_from_file_location(
        "search_nb201_bench", root / "benchmarks" / "search_nb201.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_cli_and_benchmark_give_the_same_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nas bench tabular` and benchmarks/search_nb201.py agree for the same settings: both
    show a strategy the target device's latency only, whatever else the table holds."""
    import search_spaces
    from nas.app.cli import main

    monkeypatch.setitem(search_spaces.SPACES._factories, "toy", ToySpace)
    monkeypatch.setitem(search_spaces.SPACES._help, "toy", "the search tests' toy space")

    csv = _toy_csv(tmp_path / "t.csv")
    frame = pd.read_csv(csv)  # a device whose latency gives accuracy away: frontier must not see it
    frame["oracle_ms"] = 1.0 + frame["top1"].max() - frame["top1"]
    frame.to_csv(csv, index=False)
    argv = ["bench", "tabular", "--table", str(csv), "--space", "toy", "--arch-column", "arch"]
    argv += ["--accuracy-column", "top1", "--latency-column", "pixel3_ms"]
    argv += ["--strategies", "random,frontier", "--budgets", "8,16", "--seeds", "2"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    cli = pd.read_csv(io.StringIO("\n".join(lines[-4:])), sep=r"\s+", header=None)
    bench = _search_bench()
    results = bench.run_benchmark(
        csv,
        ToySpace(),
        "arch",
        (("top1", "pixel3_ms"),),
        None,
        [0, 1],
        (8, 16),
        ("random", "frontier"),
        1,
        (),
    )
    summary = pd.DataFrame(results["pairs"]["top1/pixel3_ms"]["summary"])
    assert sorted(summary["mean"].round(6)) == pytest.approx(sorted(cli[2]), abs=2e-6)
    # the other device's latency is an explicit, labelled extra that changes what frontier sees
    extra = bench.run_benchmark(
        csv,
        ToySpace(),
        "arch",
        (("top1", "pixel3_ms"),),
        ["raspi4_ms"],
        [0, 1],
        (8, 16),
        ("frontier",),
        1,
        (),
    )
    labels = set(pd.DataFrame(extra["pairs"]["top1/pixel3_ms"]["summary"])["strategy"])
    assert labels == {"frontier", "frontier + raspi4_ms"}
    table = bench.table_md(extra)
    assert "| frontier + raspi4_ms |" in table and "target device's latency only" in table
    assert extra["targets"]["hv300_min_pair"] is None  # no 300-evaluation budget here
    assert extra["targets"]["step_s_max"] > 0


def test_frontier_in_tabular_mode_picks_its_initial_design_with_synflow(tmp_path: Path) -> None:
    """`frontier`'s default prior in tabular mode (the benchmark's and `nas bench tabular`'s) is
    synflow on the space's `proxy_build` network; `proxy=None` or a `prior` option replace it."""
    from nas.predictors import ZeroCostProxy
    from nas.search.tabular import run_tabular

    space = ToySpace()
    table = TabularBenchmark.from_csv(
        _toy_csv(tmp_path / "t.csv"), space, "arch", "top1", ["pixel3_ms"]
    )

    def run(**kw: object) -> list[str]:
        return run_tabular(table, "frontier", "top1", "pixel3_ms", 12, 0, **kw)["paid_keys"]  # type: ignore[arg-type]

    synflow = ZeroCostProxy(space, "synflow", build=space.proxy_build)
    default = run()
    assert default == run(sampler_options={"prior": synflow})
    assert run(proxy=None) == run(sampler_options={"prior": None})
    assert default[:10] != run(proxy=None)[:10]


def test_benchmark_ablations_name_each_signal_and_fill_a_missing_proxy_cache(
    tmp_path: Path,
) -> None:
    bench = _search_bench()
    rows = bench.ablations(ToySpace())
    assert rows["frontier, no synflow prior"] == ("frontier", {"prior": None})
    assert rows["frontier, one-hot only (no paths)"] == ("frontier", {"encoding": "onehot"})
    assert rows["frontier, raw accuracies (no rank warp)"] == ("frontier", {"warp": "none"})
    cache = tmp_path / "synflow.json"
    options = bench.ablations(ToySpace(), cache)["frontier + synflow as a feature (cached)"][1]
    assert cache.is_file()  # filled once, read back by the next run
    archs = list(ToySpace().enumerate())[:5]
    scores = options["features"]["synflow"](archs)
    assert np.array_equal(scores, options["prior"](archs)) and len(set(scores)) > 1


def test_benchmark_caps_one_rows_trials_and_says_so(tmp_path: Path) -> None:
    """`--max-trials-of ROW=N` caps that row's trials per run (a slow sampler such as Optuna's
    GP); the other rows keep the default cap, and the table names the cap."""
    bench = _search_bench()
    csv = _toy_csv(tmp_path / "t.csv")
    argv = ["--out", str(tmp_path), "--csv", str(csv), "--max-trials-of", "random=5"]
    assert bench._per_row(["random=5", "frontier, no prior=3"]) == {
        "random": 5,
        "frontier, no prior": 3,
    }
    args = bench._parser().parse_args(argv)
    assert bench._per_row(args.max_trials_of) == {"random": 5}
    results = bench.run_benchmark(
        csv,
        ToySpace(),
        "arch",
        (("top1", "pixel3_ms"),),
        None,
        [0],
        (8,),
        ("random", "frontier"),
        1,
        (),
        trials_of={"random": 5},
    )
    runs = pd.DataFrame(results["pairs"]["top1/pixel3_ms"]["runs"]).set_index("strategy")
    assert runs.at["random", "n_trials"] <= 5 and runs.at["random", "n_paid"] <= 5
    assert runs.at["frontier", "n_paid"] == 8
    assert "random at 5" in bench.table_md(results)
