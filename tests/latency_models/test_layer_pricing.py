"""Layer pricing: each adapter prices an arch exactly as its latency model does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import latency_models as lm
from latency_models import (
    CostModelPredictor,
    LUTCorrected,
    LUTSum,
    layer_pricer,
)
from nas.core import ArchPricer, CannotPriceLayersError, LayerPricer
from search_spaces import TinySpace

from .conftest import TRUTH_PHONE

SPACE = TinySpace()
ARCHS = [dict(SPACE.sample(i)) for i in range(30)]
TRUTH = TRUTH_PHONE
Y = np.array([TRUTH.arch_ms(SPACE, a) for a in ARCHS])


@pytest.fixture(scope="module")
def lut() -> lm.LUT:
    return lm.build_lut(SPACE, lm.get_device("pixel3-emulated"), None, archs=ARCHS)


def _models(lut: lm.LUT) -> dict[str, lm.LatencyPredictor]:
    phone = lm.get_device("pixel3-emulated")
    return {
        "lut": LUTSum(lut, phone),
        "lut+correction (unfitted)": LUTCorrected(lut, phone),
        "lut+correction": LUTCorrected(lut, phone).fit(SPACE, ARCHS[:20], Y[:20]),
        "costmodel": CostModelPredictor(phone),
        "costmodel (calibrated)": CostModelPredictor(phone).fit(SPACE, ARCHS[:20], Y[:20]),
    }


def test_layer_prices_sum_to_the_models_prediction(lut: lm.LUT) -> None:
    for name, model in _models(lut).items():
        pricer = layer_pricer(model)
        assert isinstance(pricer, LayerPricer), name
        assert (pricer.device, pricer.dtype) == (model.device, model.dtype)
        for arch in ARCHS[20:]:
            want = model.predict_arch(SPACE, arch)
            assert pricer.arch_ms(SPACE, arch) == pytest.approx(want, rel=1e-9), name


def test_the_per_network_cost_is_the_constant_term(lut: lm.LUT) -> None:
    model = LUTSum(lut, lm.get_device("pixel3-emulated"))
    model.network_overhead_ms = 0.04  # type: ignore[attr-defined]  # issue 23's attribute
    pricer = layer_pricer(model)
    assert isinstance(pricer, LayerPricer)
    plain = sum(pricer.layer_ms(s) for s in pricer.specs(SPACE, ARCHS[0]))
    assert pricer.network_ms == 0.04
    assert pricer.arch_ms(SPACE, ARCHS[0]) == pytest.approx(plain + 0.04)
    fitted = layer_pricer(_models(lut)["lut+correction"])
    assert isinstance(fitted, LayerPricer) and fitted.network_ms != 0.0  # the intercept b


def test_the_table_prices_whole_networks_only(nb201_csv: Path) -> None:
    from search_spaces import NB201Space

    space = NB201Space()
    device = lm.get_device("nb201-pixel3", table=nb201_csv, space=space)
    assert isinstance(device, lm.TabularDevice)
    pricer = layer_pricer(lm.TableLatency(device))
    assert isinstance(pricer, ArchPricer) and not isinstance(pricer, LayerPricer)
    arch = space.sample(0)
    assert pricer.arch_ms(space, arch) == device.latency_ms(space, arch)


def test_models_that_cannot_price_layers_say_so() -> None:
    with pytest.raises(CannotPriceLayersError, match="lut, lut\\+correction, costmodel"):
        layer_pricer(lm.MacsProxy("pixel3"))
    kernel_sum = object.__new__(lm.KernelSum)
    kernel_sum.device = "ort-cpu-1t"
    with pytest.raises(CannotPriceLayersError, match="kernel-table model of 'ort-cpu-1t'"):
        layer_pricer(kernel_sum)
