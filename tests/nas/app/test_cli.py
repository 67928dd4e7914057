from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from nas.app.cli import build_parser, main


@pytest.mark.parametrize(
    "argv",
    [
        ["spaces"],
        ["demo", "--quick"],
        ["run", "config.yaml"],
        ["report", "runs/demo"],
        ["supernet", "train", "--space", "tiny", "--epochs", "1"],
        ["latency", "devices"],
        ["latency", "build", "--device", "xnnpack-1t"],
        ["latency", "validate", "--device", "nb201-pixel3", "--table", "t.csv"],
        ["search", "--device", "pixel3-emulated", "--budget", "latency_ms@pixel3-emulated<=2"],
        ["search", "worker", "--storage", "sqlite:///x.db"],
        ["compress", "--run", "runs/demo", "--arch", "KEY"],
        ["bench", "tabular", "--table", "t.csv", "--accuracy-column", "a", "--latency-column", "l"],
        ["federated", "tiers", "--tier", "phone:pixel3-emulated:0.5:4"],
        ["federated", "run", "--out", "runs/fed", "--tier", "phone:pixel3-emulated:0.5:4"],
    ],
)
def test_every_subcommand_parses(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert callable(args.func)


def test_search_on_an_emulated_phone_respects_the_budget(tmp_path: Path) -> None:
    out = tmp_path / "search"
    budget = "latency_ms@pixel3-emulated<=1.0"
    argv = [
        "-q",
        "search",
        "--device",
        "pixel3-emulated",
        "--budget",
        budget,
        "--trials",
        "12",
        "--lut-archs",
        "20",
        "--lut-passes",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    import latency_models as lm
    import search_spaces

    lut = lm.LUT.load(out / "lut-pixel3-emulated.csv")
    built = lm.reachable_specs(
        search_spaces.get_space("tiny"), lm.get_device("pixel3-emulated"), "fp32", n_archs=20
    )
    assert built and all(lut.passes_of(s.key) >= 2 for s in built)  # the search's LUT: 2 passes
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) >= 12
    feasible = trials[trials["feasible"]]
    assert (feasible["latency_ms@pixel3-emulated"] <= 1.0).all()
    assert (out / "pareto.csv").stat().st_size > 0


def test_search_prices_ort_latency_with_a_kernel_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    monkeypatch.setenv("EDGE_NAS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "search"
    argv = ["-q", "search", "--device", "ort-cpu-1t", "--latency-model", "kernels"]
    argv += ["--objectives", "latency,params", "--trials", "3", "--lut-archs", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    import latency_models as lm
    from latency_models.kernels import KERNEL_RECIPE

    table = lm.LUT.load(out / "kernels-ort-cpu-1t.csv")
    assert len(table) > 0 and KERNEL_RECIPE in table.metadata["layer_recipe"]
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) >= 3 and (trials["latency_ms@ort-cpu-1t"] > 0).all()


def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "no report" in capsys.readouterr().err
    assert main(["supernet", "train", "--schedule", "bogus", "--out", str(tmp_path)]) == 2
    assert "valid schedules" in capsys.readouterr().err


@pytest.mark.shared
def test_latency_validate_on_a_table_as_the_readme_runs_it(
    nb201_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nas latency validate --space nb201 --device nb201-pixel3 --table
    ../shared/benchmarks/nb201/nb201.csv`, copied from the README (it crashed: the CLI handed
    `cli_validate` the space twice). The table is the shared one; the default --out,
    runs/latency-validate, lands in a temporary folder."""
    monkeypatch.chdir(tmp_path)
    argv = ["latency", "validate", "--space", "nb201", "--device", "nb201-pixel3"]
    assert main([*argv, "--table", str(nb201_csv)]) == 0
    out = tmp_path / "runs" / "latency-validate"
    config = json.loads((out / "validation_config.json").read_text())
    assert (config["measured"], config["model_device"]) == ("nb201-pixel3", "pixel3-emulated")
    assert (config["n_fit"], config["n_test"]) == (100, 200)
    assert (out / "validation.md").stat().st_size > 0


def test_a_worker_joins_with_the_studys_own_settings_and_caps_its_total(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`nas search worker` had no latency models (a study pricing latency could not be joined)
    and its --trials capped its own trials, not the study's total as `nas search --trials`
    does. It reads objectives, budgets, devices and latency models from the study now; the
    search's folder lock does not concern it (workers share a study by design)."""
    import optuna

    from nas.app.lock import folder_lock
    from nas.search import open_storage

    folder = tmp_path / "search"
    storage = str(folder / "study.journal")
    budget = "latency_ms@pixel3-emulated<=5"
    argv = ["-q", "search", "--device", "pixel3-emulated", "--objectives", "latency,params"]
    argv += ["--budget", budget, "--trials", "6", "--lut-archs", "5", "--sampler", "random"]
    assert main([*argv, "--storage", storage, "--study", "st", "--out", str(folder)]) == 0
    worker = ["-q", "search", "worker", "--storage", storage, "--study", "st"]
    with folder_lock(folder):  # the search's folder is in use: a worker joins all the same
        code = main([*worker, "--trials", "10", "--seed", "1", "--out", str(tmp_path / "w")])
    assert code == 0, capsys.readouterr().err
    study = optuna.load_study(study_name="st", storage=open_storage(storage))
    complete = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(complete) == 10, "the study's total, counted as `nas search --trials` counts"
    assert all(t.user_attrs["metrics"]["latency_ms@pixel3-emulated"] > 0 for t in complete)
    assert [str(c) for c in study.user_attrs["edge_nas"]["constraints"]] == [
        "latency_ms@pixel3-emulated <= 5"
    ]
    code = main([*worker, "--objectives", "macs,params", "--out", str(tmp_path / "w")])
    assert code == 2 and "--objectives" in capsys.readouterr().err
