"""`nas hwtrain` end to end on small settings: its results, its plot, and a second run of the
same command that resumes (nothing retrained, the same result)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nas.app.cli import main


@pytest.mark.slow
def test_hwtrain_command_writes_its_results_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "hw"
    argv = [
        "hwtrain", "--space", "tiny", "--device", "pixel3-emulated",
        "--target", "pixel3-emulated=0.3", "--latency-model", "costmodel", "--epochs", "2",
        "--warmup-epochs", "1", "--max-steps", "2", "--batch-size", "16", "--mc", "100",
        "--term", "params", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "hwtrain.json").read_text())
    assert set(report["derived"]["priced"]) == {"pixel3-emulated", "params"}
    assert report["expectation_method"]["pixel3-emulated"] == "grouped (3 groups)"
    assert report["monte_carlo"]["pixel3-emulated"]["uniform"]["ratio"] <= 1.0
    assert 0.0 <= report["accuracy"]["derived"] <= 1.0
    assert report["device_ms"]["pixel3-emulated"] > 0
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    assert (out / "trajectory.png").stat().st_size > 0
    assert main(argv) == 0  # everything trained: resumes at the end, derives the same arch
    again = json.loads((out / "hwtrain.json").read_text())
    assert again["derived"]["key"] == report["derived"]["key"]
    assert again["history"] == report["history"]


@pytest.mark.slow
def test_run_hwtrain_prices_with_a_model_it_is_given(tmp_path: Path) -> None:
    """A latency model handed in (one fitted elsewhere, as a benchmark shares it) stands in
    for the one `--latency-model` would build: no table is made, and the derived arch is
    priced by the given model."""
    import latency_models as lm
    from nas.app.cli import build_parser
    from nas.app.hwtrain_commands import run_hwtrain
    from search_spaces import get_space

    space = get_space("tiny")
    device = lm.get_device("pixel3-emulated")
    model = lm.create_latency_model("costmodel", space, device)
    out = tmp_path / "hw"
    args = build_parser().parse_args([
        "hwtrain", "--space", "tiny", "--device", "pixel3-emulated",
        "--target", "pixel3-emulated=0.4", "--latency-model", "lut", "--epochs", "2",
        "--warmup-epochs", "1", "--max-steps", "1", "--batch-size", "16", "--mc", "50",
        "--out", str(out),
    ])  # fmt: skip
    args.quiet = True
    report = run_hwtrain(args, {"pixel3-emulated": model})
    assert not list(out.glob("lut-*.csv"))  # --latency-model lut's table: not built
    derived = space.from_key(report["derived"]["key"])
    assert report["derived"]["priced"]["pixel3-emulated"] == pytest.approx(
        model.predict_arch(space, derived), rel=1e-6
    )
    assert report["device_ms"]["pixel3-emulated"] == pytest.approx(
        device.measure_arch(space, derived).latency_ms
    )  # the device's own figure, not the model's


def _hw_args(tmp_path: Path, device: str, *extra: str) -> Any:
    from nas.app.cli import build_parser

    args = build_parser().parse_args(
        ["hwtrain", "--space", "tiny", "--device", device, "--out", str(tmp_path), *extra]
    )
    args.quiet = True
    return args


def test_the_command_corrects_its_latency_model_on_whole_networks(tmp_path: Path) -> None:
    """`nas hwtrain` prices with the model a run's latency stage makes: the LUT is checked on
    whole networks priced on the device and corrected where that pays; the check is kept, its
    networks cached (a second call prices none again), and 0 archs keep the plain sum."""
    import latency_models as lm
    from nas.app.hwtrain_commands import _calibrated_model
    from search_spaces import get_space

    space, device = get_space("tiny"), lm.get_device("pixel3-emulated")
    args = _hw_args(tmp_path, "pixel3-emulated", "--lut-archs", "2", "--calibration-archs", "4")
    model, check = _calibrated_model(space, device, args, seed=0)
    assert (check["n_fit"], check["n_test"], len(check["arch_keys"])) == (4, 4, 4)
    assert check["model"] in ("plain", "corrected")
    assert check["mape_pct"] == min(check["lut_mape_pct"], check["corrected_mape_pct"])
    assert isinstance(model, lm.LUTCorrected) == (check["model"] == "corrected")
    cache = tmp_path / "pixel3-emulated-networks.json"
    assert len(json.loads(cache.read_text())) == 8

    def no_network(*a: Any, **k: Any) -> Any:
        raise AssertionError("a cached network priced again")

    device.measure_arch = no_network  # type: ignore[method-assign]
    _, check_again = _calibrated_model(space, device, args, seed=0)
    assert check_again == check

    args.calibration_archs = 0
    plain, none = _calibrated_model(space, device, args, seed=0)
    assert none == {} and type(plain) is lm.LUTSum


def test_weight_rule_reaches_the_training_config() -> None:
    from nas.app.cli import build_parser
    from nas.app.hwtrain_commands import _config

    argv = ["hwtrain", "--device", "pixel3-emulated", "--target", "pixel3-emulated=0.3"]
    assert _config(build_parser().parse_args(argv)).weight_rule == "sandwich"
    args = build_parser().parse_args([*argv, "--weight-rule", "path"])
    assert _config(args).weight_rule == "path"
