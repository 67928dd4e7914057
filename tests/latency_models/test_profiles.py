"""Device profiles: the catalogue is complete and sourced; a new device from a spec sheet
takes a few lines; bad figures are refused with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import latency_models as lm
from latency_models import PROFILES, DeviceProfile, cpu_profile, host_cpu_profile
from latency_models.costmodel import leaf_specs, op_kind
from latency_models.profiles import KINDS
from search_spaces import MobileNetV3Space, NB201Space, TinySpace


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
        removes_dead_branches=True,
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
        cpu_profile(
            "x",
            clock_ghz=0,
            simd_bits=128,
            fma_pipes=1,
            dram_bandwidth_gbs=1,
            cache_kib=1,
            removes_dead_branches=False,
        )
    with pytest.raises(ValueError, match="unknown op kinds"):
        PROFILES["pixel3"].replace(efficiency={"conv": 0.5, "attention": 0.3})
    with pytest.raises(ValueError, match="does not compute in 'fp32'"):
        PROFILES["edgetpu"].peak_macs_per_s("fp32")


_SPEC_SHEET = {
    "clock_ghz": 1.8,
    "simd_bits": 128,
    "fma_pipes": 2,
    "dram_bandwidth_gbs": 6.0,
    "cache_kib": 512,
}


def test_a_profile_must_state_whether_its_runtime_removes_dead_branches() -> None:
    """No default: leaving it out is an error that says what it means, what each value does to
    pricing, and how calibration decides it."""
    with pytest.raises(ValueError) as err:
        cpu_profile("board", **_SPEC_SHEET)  # type: ignore[arg-type]
    message = str(err.value)
    for part in (
        "'board'",
        "removes_dead_branches is not stated",
        "multiplied by a constant zero",
        "True prices only the layers that reach the output",
        "False prices every layer the space builds",
        "dead_branches='auto'",
        "latency_models.calibrate(",
    ):
        assert part in message, part
    fields = {**PROFILES["pixel3"].to_dict(), "name": "direct"}
    del fields["removes_dead_branches"]
    with pytest.raises(ValueError, match="removes_dead_branches is not stated"):
        DeviceProfile(**fields)
    with pytest.raises(ValueError, match="removes_dead_branches is not stated"):
        DeviceProfile.from_dict(fields)
    with pytest.raises(ValueError, match="must be True or False, got 'auto'"):
        PROFILES["pixel3"].replace(removes_dead_branches="auto")
    for value in (True, False):
        stated = cpu_profile("board", removes_dead_branches=value, **_SPEC_SHEET)  # type: ignore[arg-type]
        assert stated.removes_dead_branches is value
        assert lm.EmulatedDevice(stated).removes_dead_branches is value


def test_every_builtin_states_dead_branches_with_a_source() -> None:
    """A contract over the catalogue and the registry: each profile states the fact with its
    source, and every registered device's help says what it does."""
    for name, p in PROFILES.items():
        assert isinstance(p.removes_dead_branches, bool), name
        assert len(p.sources.get("removes_dead_branches", "")) > 40, name
    host = host_cpu_profile()
    assert (
        host.removes_dead_branches is False and "XNNPACK" in host.sources["removes_dead_branches"]
    )
    # what the runtimes do, as measured or fitted (PROFILES.md)
    assert PROFILES["pixel3"].removes_dead_branches and PROFILES["edgetpu"].removes_dead_branches
    assert not PROFILES["eyeriss"].removes_dead_branches
    for name in lm.DEVICES:
        text = lm.DEVICES.describe(name)
        assert "dead branches removed" in text or "dead branches kept" in text, name
        if text.startswith("real:"):
            assert "dead branches kept" in text, name
        if name.endswith("-emulated") and name[: -len("-emulated")] in PROFILES:
            removes = PROFILES[name[: -len("-emulated")]].removes_dead_branches
            assert ("dead branches removed" in text) is removes, name


def test_latency_devices_lists_dead_branches(capsys: pytest.CaptureFixture[str]) -> None:
    from nas.app.cli import main

    assert main(["latency", "devices"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0]: line for line in lines if line and not line[0].isspace()}
    for name in lm.DEVICES:
        assert "dead branches " in listed[name], name
    assert "pixel3-emulated" in listed and "dead branches removed" in listed["pixel3-emulated"]
    assert "dead branches kept" in listed["xnnpack-1t"]
    assert "dead branches kept" in listed["eyeriss-emulated"]


# NB201 cells (edge "j<-i" carries node i to node j; node 3 is the output). In DEAD the 3x3 conv
# on 1<-0 reaches the output only through `none` edges; TWIN is the same cell with that edge
# `none`, so both compute the same function and differ only in the dead conv.
DEAD = {
    "1<-0": "nor_conv_3x3",
    "2<-0": "skip_connect",
    "2<-1": "none",
    "3<-0": "nor_conv_1x1",
    "3<-1": "none",
    "3<-2": "skip_connect",
}
TWIN = {**DEAD, "1<-0": "none"}
NO_NONE = {**DEAD, "2<-1": "skip_connect", "3<-1": "avg_pool_3x3"}  # every edge reaches node 3


def test_the_dead_branch_fact_changes_the_price() -> None:
    """A profile stating True prices only what reaches the output; one stating False prices the
    dead conv too, as a runtime that keeps dead branches runs it. Archs without dead branches
    cost the same under both."""
    space = NB201Space()
    price = {
        value: lm.EmulatedDevice(
            cpu_profile("board", removes_dead_branches=value, **_SPEC_SHEET)  # type: ignore[arg-type]
        )
        for value in (True, False)
    }
    dead = {value: device.arch_ms(space, DEAD) for value, device in price.items()}
    twin = {value: device.arch_ms(space, TWIN) for value, device in price.items()}
    assert dead[True] == pytest.approx(twin[True], rel=1e-9)  # the dead conv costs nothing
    assert dead[False] > 1.05 * twin[False]  # ... or a whole conv
    assert dead[False] > 1.05 * dead[True]
    assert price[True].arch_ms(space, NO_NONE) == pytest.approx(
        price[False].arch_ms(space, NO_NONE), rel=1e-9
    )


@pytest.mark.shared
def test_stating_the_wrong_dead_branch_fact_ranks_worse_than_counting_macs(
    nb201_csv: Path,
) -> None:
    """The issue's finding, on measured latencies of a runtime that keeps dead branches (PyTorch
    on a 1080 Ti, HW-NAS-Bench): spec-only pricing that assumes they are removed orders archs
    worse than counting MACs; stating what the runtime does orders them better."""
    space = NB201Space()
    table = lm.get_device("nb201-1080ti", table=nb201_csv, space=space)
    rng = np.random.default_rng(0)
    archs = [space.from_index(int(i)) for i in rng.choice(15_625, 120, replace=False)]
    measured = table.latencies_ms(archs)

    def tau(predicted: list[float]) -> float:
        return float(stats.kendalltau(predicted, measured)[0])

    def tau_of(profile: DeviceProfile) -> float:
        return tau([lm.EmulatedDevice(profile).arch_ms(space, a) for a in archs])

    by_macs = tau([space.cost(a).macs for a in archs])
    stated = PROFILES["jetson-tx2"]  # the built-in GPU profile, as it states the fact
    wrong = stated.replace(removes_dead_branches=not stated.removes_dead_branches)
    by_stated, by_wrong = tau_of(stated), tau_of(wrong)
    assert not stated.removes_dead_branches
    assert by_wrong < by_macs - 0.05 < by_stated - 0.1, (by_wrong, by_macs, by_stated)


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
    from latency_models.profiles import profiles_markdown

    doc = Path(lm.__file__).with_name("PROFILES.md")
    assert doc.read_text() == profiles_markdown(), (
        'regenerate latency_models/PROFILES.md: python -c "from latency_models.profiles import '
        "profiles_markdown; open('latency_models/PROFILES.md', 'w').write(profiles_markdown())\""
    )
