"""Calibration recovers the known parameters of a synthetic device, and what it fits on one
space carries to another space unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from latency_models import PROFILES, CostParams, EmulatedDevice, calibrate, get_device
from latency_models.calibrate import fit_params
from latency_models.costmodel import FEATURE_NAMES, network_features
from search_spaces import FBNetSpace, TinySpace

TRUTH = CostParams(
    compute_scale={"conv1x1": 1.8, "dwconv": 0.6},
    memory_scale={"eltwise": 2.5},
    overhead_ms={"conv1x1": 0.01, "dwconv": 0.02},
    network_overhead_ms=0.2,
)


@pytest.fixture(scope="module")
def synthetic() -> tuple[TinySpace, list[dict], np.ndarray, EmulatedDevice]:  # type: ignore[type-arg]
    space = TinySpace()
    archs = [dict(space.sample(i)) for i in range(80)]
    truth = EmulatedDevice(PROFILES["pixel3"], TRUTH, name="synthetic")
    y = np.array([truth.arch_ms(space, a) for a in archs])
    return space, archs, y, truth


def test_recovers_known_parameters(synthetic) -> None:  # type: ignore[no-untyped-def]
    space, archs, y, _ = synthetic
    result = calibrate(
        EmulatedDevice(PROFILES["pixel3"]), space, archs[:60], y[:60], prior_weight=1e-6
    )
    p = result.params
    # identifiable from tiny's archs: the per-kind compute scales that vary between archs
    assert p.compute_scale["conv1x1"] == pytest.approx(1.8, rel=0.02)
    assert p.compute_scale["dwconv"] == pytest.approx(0.6, rel=0.02)
    assert p.memory_scale["eltwise"] == pytest.approx(2.5, rel=0.1)
    # per-block overheads: every block has two 1x1 convs and one depthwise, so only their sum
    # per block is identifiable
    block = 2 * p.overhead_ms["conv1x1"] + p.overhead_ms["dwconv"]
    assert block == pytest.approx(2 * 0.01 + 0.02, rel=0.05)
    held_out = np.array([result.device.arch_ms(space, a) for a in archs[60:]])
    assert np.max(np.abs(held_out / y[60:] - 1)) < 0.005
    assert result.train_rmse_rel < 1e-3
    assert "conv1x1" in result.fitted_kinds and "pool" not in result.fitted_kinds


def test_parameters_carry_to_another_space(synthetic) -> None:  # type: ignore[no-untyped-def]
    space, archs, y, truth = synthetic
    result = calibrate(EmulatedDevice(PROFILES["pixel3"]), space, archs, y, prior_weight=1e-6)
    fb = FBNetSpace()
    fb_archs = [fb.sample(i) for i in range(5)]
    predicted = np.array([result.device.arch_ms(fb, a) for a in fb_archs])
    expected = np.array([truth.arch_ms(fb, a) for a in fb_archs])
    # kinds fbnet adds (grouped convs, copies) stay at the spec-sheet prior, as in the truth
    assert np.max(np.abs(predicted / expected - 1)) < 0.05
    assert result.params.fitted_on["space"] == "tiny"
    assert set(result.params.compute_scale) <= set(PROFILES["pixel3"].efficiency)


def test_calibrated_params_round_trip_json(synthetic, tmp_path) -> None:  # type: ignore[no-untyped-def]
    space, archs, y, _ = synthetic
    result = calibrate(PROFILES["pixel3"], space, archs[:20], y[:20])
    path = result.params.save(tmp_path / "params.json")
    again = CostParams.load(path)
    assert again == result.params
    device = EmulatedDevice(PROFILES["pixel3"], again)
    assert device.arch_ms(space, archs[0]) == pytest.approx(result.device.arch_ms(space, archs[0]))


def test_dead_branch_choice_is_fitted() -> None:
    from search_spaces import NB201Space

    space = NB201Space()
    archs = [space.from_index(i) for i in range(0, 15625, 500)]
    keeps = EmulatedDevice(PROFILES["raspi4"], CostParams(removes_dead_branches=False))
    y = [keeps.arch_ms(space, a) for a in archs]
    result = calibrate(EmulatedDevice(PROFILES["raspi4"]), space, archs, y)
    assert result.params.removes_dead_branches is False
    assert result.dead_branch_errors["False"] < result.dead_branch_errors["True"]


@pytest.mark.shared
@pytest.mark.parametrize(
    ("device", "removes"),
    [("nb201-pixel3", True), ("nb201-eyeriss", False)],
)
def test_auto_reports_the_dead_branch_value_that_fits_a_table_device(
    device: str, removes: bool, nb201_csv: Path
) -> None:
    """On measured NB201 latencies, auto keeps the value that fits better and reports both
    errors: TFLite on the Pixel 3 removes dead branches, the Eyeriss simulator runs them."""
    from search_spaces import NB201Space

    space = NB201Space()
    table = get_device(device, table=nb201_csv, space=space)
    archs = [space.from_index(i) for i in range(0, 15_625, 125)]  # as PROFILES.md cites
    result = calibrate(table, space, archs, table.latencies_ms(archs), dtype=table.dtypes[0])
    assert result.params.removes_dead_branches is removes
    assert result.removes_dead_branches is removes and result.dead_branches_by == "fit"
    errors = result.dead_branch_errors
    assert errors[str(removes)] < errors[str(not removes)] / 2
    text = result.describe()
    assert f"dead branches {'removed' if removes else 'kept'}" in text and "fits better" in text
    for err in errors.values():
        assert f"{err:.4f}" in text
    assert result.summary()["dead_branches_by"] == "fit"
    # the profile this table calibrates from states the same value (PROFILES.md's source)
    assert table.prior_profile().removes_dead_branches is removes


def test_dead_branch_report_without_a_choice(synthetic) -> None:  # type: ignore[no-untyped-def]
    space, archs, y, _ = synthetic
    tie = calibrate(PROFILES["pixel3"], space, archs[:10], y[:10])  # tiny has no dead branches
    assert tie.dead_branches_by == "tie" and tie.removes_dead_branches is True
    assert "both fit alike" in tie.describe()
    given = calibrate(PROFILES["pixel3"], space, archs[:10], y[:10], dead_branches=False)
    assert given.dead_branches_by == "given" and set(given.dead_branch_errors) == {"False"}
    assert "dead branches kept" in str(given) and "as given" in str(given)


def test_bad_input_is_refused() -> None:
    space = TinySpace()
    with pytest.raises(ValueError, match="one latency per arch"):
        calibrate(PROFILES["pixel3"], space, [space.sample(0), space.sample(1)], [1.0])
    with pytest.raises(ValueError, match="does not compute in"):
        calibrate(PROFILES["edgetpu"], space, [space.sample(0), space.sample(1)], [1.0, 2.0])
    x = np.zeros((2, len(FEATURE_NAMES)))
    with pytest.raises(ValueError, match="> 0"):
        fit_params(x, np.array([1.0, -1.0]), PROFILES["pixel3"])
    assert network_features([], PROFILES["pixel3"]).shape == (len(FEATURE_NAMES),)
