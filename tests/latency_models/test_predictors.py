"""Predictors: scikit-learn shape, the search-engine interface, and each one's behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import latency_models as lm
from latency_models import (
    LATENCY_MODELS,
    CostModelPredictor,
    LatencyModel,
    LUTCorrected,
    LUTSum,
    MacsProxy,
    NotFittedError,
    ParamsProxy,
    build_lut,
)
from search_spaces import FBNetSpace, TinySpace

from .conftest import TRUTH_PHONE

SPACE = TinySpace()
ARCHS = [dict(SPACE.sample(i)) for i in range(60)]
TRUTH = TRUTH_PHONE
Y = np.array([TRUTH.arch_ms(SPACE, a) for a in ARCHS])


@pytest.fixture(scope="module")
def lut() -> lm.LUT:
    return build_lut(SPACE, lm.get_device("pixel3-emulated"), None, archs=ARCHS)


def _all(lut: lm.LUT) -> dict[str, lm.LatencyPredictor]:
    phone = lm.get_device("pixel3-emulated")
    return {
        "macs": MacsProxy("pixel3"),
        "params": ParamsProxy("pixel3"),
        "lut": LUTSum(lut, phone),
        "lut+correction": LUTCorrected(lut, phone),
        "costmodel": CostModelPredictor(phone),
    }


def test_sklearn_shape_and_engine_interface(lut: lm.LUT) -> None:
    for name, model in _all(lut).items():
        assert model.fit(SPACE, ARCHS[:40], Y[:40]) is model, name
        assert isinstance(model, LatencyModel), name
        assert isinstance(model.device, str) and model.device and model.dtype == "fp32"
        one = model.predict_arch(SPACE, ARCHS[45])
        many = model.predict_many(SPACE, ARCHS[40:])
        assert isinstance(one, float) and many.shape == (20,)
        assert one == pytest.approx(many[5])
        assert np.array_equal(model.predict(SPACE, ARCHS[40:]), many)


def test_unfitted_proxy_says_fit_first() -> None:
    with pytest.raises(NotFittedError, match="fit it"):
        MacsProxy().predict_arch(SPACE, ARCHS[0])
    with pytest.raises(ValueError, match="one latency"):
        MacsProxy().fit(SPACE, ARCHS[:3], [1.0, 2.0])


def test_corrections_beat_the_plain_sum(lut: lm.LUT) -> None:
    test, y_test = ARCHS[40:], Y[40:]
    phone = lm.get_device("pixel3-emulated")
    plain = LUTSum(lut, phone).predict_many(SPACE, test)
    corrected = LUTCorrected(lut, phone).fit(SPACE, ARCHS[:40], Y[:40]).predict_many(SPACE, test)
    calibrated = CostModelPredictor(phone).fit(SPACE, ARCHS[:40], Y[:40]).predict_many(SPACE, test)

    def err(p: np.ndarray) -> float:
        return float(np.mean(np.abs(p / y_test - 1)))

    assert err(corrected) < 0.5 * err(plain)
    assert err(calibrated) < 0.01


def test_costmodel_stands_for_a_real_device_from_its_prior() -> None:
    class FakeReal(lm.Device):
        name, kind, runtime, threads = "fake-1t", "real", "fake", 1

        @property
        def runtime_version(self) -> str:
            return "fake 0"

        @property
        def dtypes(self) -> tuple[str, ...]:
            return ("fp32",)

        def measure_layers(self, specs, dtype="fp32", progress=None):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        def measure_arch(self, space, arch, dtype="fp32"):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    model = CostModelPredictor(FakeReal()).fit(SPACE, ARCHS[:30], Y[:30])
    assert model.device == "fake-1t"
    assert model.params.removes_dead_branches in (True, False)
    assert model.predict_many(FBNetSpace(), [FBNetSpace().sample(0)])[0] > 0


def test_registry_builds_predictors(lut: lm.LUT) -> None:
    assert {"macs", "params", "lut", "lut+correction", "costmodel", "table"} <= set(LATENCY_MODELS)
    model = LATENCY_MODELS.get("lut", lut=lut)
    assert isinstance(model, LUTSum)
    with pytest.raises(KeyError, match="lut"):
        LATENCY_MODELS.get("lutt")


def test_create_latency_model_builds_the_table_and_fits_the_learned_form(tmp_path: Path) -> None:
    phone = lm.get_device("pixel3-emulated")
    path = tmp_path / "lut.csv"
    plain = lm.create_latency_model("lut", SPACE, phone, path=path, archs=ARCHS)
    assert isinstance(plain, LUTSum) and not isinstance(plain, LUTCorrected)
    assert lm.LUT.load(path).pass_counts() == plain.lut.pass_counts()  # written as measured
    fitted = lm.create_latency_model("lut", SPACE, phone, table=plain.lut, fit=(ARCHS, Y))
    assert isinstance(fitted, LUTCorrected) and fitted.coef_ is not None  # its learned form
    err = np.abs(fitted.predict_many(SPACE, ARCHS) / Y - 1).mean()
    assert err < np.abs(plain.predict_many(SPACE, ARCHS) / Y - 1).mean()
    macs = lm.create_latency_model("macs", SPACE, phone, fit=(ARCHS, Y))
    assert isinstance(macs, MacsProxy) and macs.coef_ is not None
    assert isinstance(lm.create_latency_model("costmodel", SPACE, phone), CostModelPredictor)
    with pytest.raises(ValueError, match="reads a table device's measurements"):
        lm.create_latency_model("table", SPACE, phone)


def test_latency_model_kinds_and_their_tables(tmp_path: Path) -> None:
    phone = lm.get_device("pixel3-emulated")
    assert "kernels" in LATENCY_MODELS
    assert lm.table_kinds() == ["lut", "kernels"]
    with pytest.raises(KeyError, match=r"Registered: costmodel, kernels, lut, lut\+correction"):
        lm.create_latency_model("lutt", SPACE, phone)
    with pytest.raises(
        ValueError, match=r"prices from no table; kinds that do: kernels, lut, lut\+corr"
    ):
        lm.build_table("macs", SPACE, phone)
    assert lm.table_path("lut", tmp_path, phone, "int8") == lm.lut_path(tmp_path, phone, "int8")
    assert lm.table_path("kernels", tmp_path, phone, "fp32") == lm.kernel_lut_path(
        tmp_path, phone, "fp32"
    )
