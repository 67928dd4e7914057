"""Device profiles: the catalogue is complete and sourced; a new device from a spec sheet
takes a few lines; bad figures are refused with the reason."""

from __future__ import annotations

import pytest

import latency_models as lm
from latency_models import PROFILES, DeviceProfile, cpu_profile, host_cpu_profile
from latency_models.costmodel import leaf_specs, op_kind
from latency_models.profiles import KINDS
from search_spaces import MobileNetV3Space, TinySpace


def test_catalogue_covers_the_brief_and_cites_sources() -> None:
    assert {
        "pixel3",
        "pixel2",
        "note10",
        "raspi4",
        "raspi5",
        "jetson-tx2",
        "edgetpu",
        "eyeriss",
    } <= set(PROFILES)
    for p in PROFILES.values():
        assert p.sources and p.description
        assert set(p.efficiency) == set(KINDS)
        for dtype in p.dtypes:
            assert p.peak_macs_per_s(dtype) > 0
        assert DeviceProfile.from_dict(p.to_dict()) == p
    assert (
        PROFILES["pixel3"].macs_per_cycle["int8"] == 4 * PROFILES["pixel3"].macs_per_cycle["fp32"]
    )
    assert (
        PROFILES["raspi4"].macs_per_cycle["int8"] == 2 * PROFILES["raspi4"].macs_per_cycle["fp32"]
    )


def test_new_device_from_a_spec_sheet() -> None:
    board = cpu_profile(
        "test-board",
        clock_ghz=1.8,
        simd_bits=128,
        fma_pipes=2,
        dram_bandwidth_gbs=6.0,
        cache_kib=512,
        int8_dot_product=True,
        sources={"clock_ghz": "a datasheet"},
    )
    name = lm.register_emulated(board)
    try:
        device = lm.get_device(name)
        space = TinySpace()
        assert device.measure_arch(space, space.sample(0)).median_ms > 0
        with pytest.raises(ValueError, match="already registered"):
            lm.register_emulated(board)
    finally:
        lm.DEVICES._factories.pop(name)  # keep the registry as other tests expect it


def test_bad_figures_are_refused() -> None:
    with pytest.raises(ValueError, match="clock_ghz must be"):
        cpu_profile("x", clock_ghz=0, simd_bits=128, fma_pipes=1, dram_bandwidth_gbs=1, cache_kib=1)
    with pytest.raises(ValueError, match="unknown op kinds"):
        PROFILES["pixel3"].replace(efficiency={"conv": 0.5, "attention": 0.3})
    with pytest.raises(ValueError, match="does not compute in 'fp32'"):
        PROFILES["edgetpu"].peak_macs_per_s("fp32")


def test_host_profile_reads_this_machine() -> None:
    host = host_cpu_profile(threads=2)
    assert host.cores == 2 and host.clock_ghz > 0 and not host.removes_dead_branches


def test_expanded_conv_splits_into_leaves() -> None:
    space = MobileNetV3Space(resolutions=[128])
    blocks = [s for s in space.layer_specs(space.sample(0)) if s.op == "expanded_conv"]
    se_block = next(b for b in blocks if b.se and b.idskip)
    leaves = leaf_specs(se_block)
    kinds = [op_kind(x) for x in leaves]
    assert kinds == [
        "conv1x1",
        "dwconv",
        "gpool",
        "conv1x1",
        "conv1x1",
        "eltwise",
        "conv1x1",
        "eltwise",
    ]
    macs = sum(
        x.output_shape[0]
        * x.output_shape[1]
        * x.output_shape[2]
        * x.input_shape[0]
        // x.groups
        * x.kernel**2
        for x in leaves
        if x.op == "conv"
    )
    assert macs == se_block.macs


def test_profiles_document_is_up_to_date() -> None:
    from pathlib import Path

    from latency_models.profiles import profiles_markdown

    doc = Path(lm.__file__).with_name("PROFILES.md")
    assert doc.read_text() == profiles_markdown(), (
        'regenerate latency_models/PROFILES.md: python -c "from latency_models.profiles import '
        "profiles_markdown; open('latency_models/PROFILES.md', 'w').write(profiles_markdown())\""
    )
