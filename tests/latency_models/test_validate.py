"""Validation metrics and reports; the NAS-Bench-201 table as a device (shared data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import latency_models as lm
from latency_models import metrics, validate
from nas.app.latency_commands import cli_validate, disjoint_archs
from search_spaces import NB201Space, TinySpace


def test_metrics_on_known_values() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    m = metrics(y * 1.05, y)
    assert m["kendall_tau"] == pytest.approx(1.0) and m["spearman"] == pytest.approx(1.0)
    assert m["mape_pct"] == pytest.approx(5.0) and m["within_10_pct"] == 100.0
    m = metrics(np.array([4.0, 3.0, 2.0, 1.0]), y)
    assert m["kendall_tau"] == pytest.approx(-1.0)
    assert m["within_20_pct"] == 0.0 and m["rmse_ms"] == pytest.approx(np.sqrt(5.0))
    with pytest.raises(ValueError, match="same length"):
        metrics([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="> 0"):
        metrics([1.0, 2.0], [1.0, 0.0])


def test_validate_refuses_an_emulator_against_itself() -> None:
    space = TinySpace()
    phone = lm.get_device("pixel3-emulated")
    with pytest.raises(ValueError, match="emulated"):
        validate(lm.CostModelPredictor(phone), space, [space.sample(0), space.sample(1)], phone)


def test_report_writes_table_json_and_plot(tmp_path: Path) -> None:
    space = TinySpace()
    archs = [space.sample(i) for i in range(20)]
    truth = lm.EmulatedDevice(lm.PROFILES["raspi4"])
    y = [truth.arch_ms(space, a) for a in archs]  # stand-in "measurements"
    report = validate(
        {"pixel3 costmodel": lm.CostModelPredictor(lm.get_device("pixel3-emulated"))},
        space,
        archs,
        y,
        out_dir=tmp_path,
        measured_on="a table",
    )
    for name in ("validation.md", "validation.json", "validation.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| pixel3 costmodel |" in report.to_markdown()
    assert set(report.results["pixel3 costmodel"]) >= {"kendall_tau", "within_10_pct"}


def test_disjoint_archs() -> None:
    space = TinySpace()
    fit, test = disjoint_archs(space, 30, 20, seed=1)
    assert len(fit) == 30 and len(test) == 20
    assert not {space.key(a) for a in fit} & {space.key(a) for a in test}
    with pytest.raises(ValueError, match="distinct"):
        disjoint_archs(space, 3, 3, pool=[space.sample(0)])


@pytest.mark.shared
def test_nb201_table_as_a_device(nb201_csv: Path, tmp_path: Path) -> None:
    space = NB201Space()
    pixel3 = lm.get_device("nb201-pixel3", table=nb201_csv, space=space)
    assert len(pixel3) == 15_625
    arch = space.from_index(1)
    assert pixel3.measure_arch(space, arch).median_ms == pytest.approx(17.238)
    report = cli_validate(
        space,
        "nb201-pixel3",
        tmp_path,
        n_fit=30,
        n_test=40,
        seed=0,
        table=nb201_csv,
        progress=False,
    )
    r = report.results
    assert set(r) == {
        "macs",
        "params",
        "lut",
        "lut+correction",
        "costmodel (spec only)",
        "costmodel (calibrated)",
    }
    # the cost model ranks Pixel 3 latencies better than MACs do
    assert r["costmodel (calibrated)"]["kendall_tau"] > r["macs"]["kendall_tau"]
    assert (tmp_path / "validation.png").exists()
