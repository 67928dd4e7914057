"""Space-specific facts: OFA's LUT keys, FBNet's layout and op indices, tiny's size."""

from __future__ import annotations

import numpy as np
import pytest

from nas.core.space import InvalidArchError
from search_spaces.fbnet import LAYER_KEYS, OPS, FBNetSpace, layer_plan
from search_spaces.mobilenetv3 import MobileNetV3Space
from search_spaces.tiny import TinySpace


def _ofa_arch(space: MobileNetV3Space, k: int, e: int, d: int, r: int) -> dict[str, object]:
    arch: dict[str, object] = {}
    for s in range(5):
        arch[f"s{s}.depth"] = d
        for b in range(4):
            arch[f"s{s}.b{b}.k"] = k
            arch[f"s{s}.b{b}.e"] = e
    arch["resolution"] = r
    return arch


def test_mobilenetv3_specs_use_ofa_lut_keys() -> None:
    space = MobileNetV3Space()
    specs = space.layer_specs(_ofa_arch(space, k=3, e=3, d=2, r=224))
    keys = [s.key for s in specs]
    assert keys[0] == "Conv-input:224x224x3-output:112x112x16"
    assert keys[1] == (
        "expanded_conv-input:112x112x16-output:112x112x16-expand:16-kernel:3-stride:1-"
        "idskip:1-se:0-hs:0"
    )
    assert keys[2] == (
        "expanded_conv-input:112x112x16-output:56x56x24-expand:48-kernel:3-stride:2-"
        "idskip:0-se:0-hs:0"
    )
    assert keys[3] == (
        "expanded_conv-input:56x56x24-output:56x56x24-expand:72-kernel:3-stride:1-"
        "idskip:1-se:0-hs:0"
    )
    # stage 2 (40 channels) has SE; stage 3 (80) uses h-swish
    assert "output:28x28x40-expand:72-kernel:3-stride:2-idskip:0-se:1-hs:0" in keys[4]
    assert "output:14x14x80-expand:120-kernel:3-stride:2-idskip:0-se:0-hs:1" in keys[6]
    assert keys[-4:] == [
        "Conv_1-input:7x7x160-output:7x7x960",
        "AvgPool2D-input:7x7x960-output:1x1x960",
        "Conv_2-input:1x1x960-output:1x1x1280",
        "Logits-input:1x1x1280-output:1000",
    ]
    assert len(specs) == 2 + 5 * 2 + 4


def test_mobilenetv3_width_and_resolution_are_space_parameters() -> None:
    wide = MobileNetV3Space(width_mult=1.2, resolutions=(160, 192))
    assert wide.widths == (24, 24, 32, 48, 96, 136, 192, 1152, 1536)
    arch = _ofa_arch(wide, 5, 6, 4, 160)
    assert wide.input_shape(arch) == (3, 160, 160)
    assert wide.layer_specs(arch)[0].key == "Conv-input:160x160x3-output:80x80x24"
    with pytest.raises(InvalidArchError, match="resolution"):
        wide.validate(_ofa_arch(wide, 5, 6, 4, 224))
    with pytest.raises(ValueError, match="width_mult"):
        MobileNetV3Space(width_mult=0.75)
    # OFA's count: ((3*3)^2 + (3*3)^3 + (3*3)^4)^5 subnets per resolution
    assert MobileNetV3Space(resolutions=(224,)).size() == (9**2 + 9**3 + 9**4) ** 5


def test_fbnet_layout_and_op_indices() -> None:
    space = FBNetSpace()
    plan = layer_plan()
    assert len(plan) == len(LAYER_KEYS) == 22
    assert [p[1] for p in plan][:6] == [16, 24, 24, 24, 24, 32]
    assert [i for i, p in enumerate(plan) if p[2] == 2] == [5, 9, 17]
    assert OPS.index("skip") == 8 and OPS[1] == "k3_e1_g2"
    indices = [0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3]
    arch = space.from_indices(indices)
    assert space.to_indices(arch) == indices
    assert space.key(arch) == "fbnet:" + "".join(map(str, indices))
    with pytest.raises(InvalidArchError, match="22 op indices"):
        space.from_indices([0] * 21)
    with pytest.raises(InvalidArchError, match=r"\(3, 9\)"):
        space.from_indices([0, 0, 0, 9] + [0] * 18)


def test_fbnet_skip_is_identity_or_projection() -> None:
    space = FBNetSpace()
    all_skip = space.from_indices([8] * 22)
    ops = {s.op for s in space.layer_specs(all_skip)}
    # identity skips cost nothing; shape changes cost a 1x1 conv
    assert ops == {"conv", "global_avgpool", "linear"}
    convs = [s for s in space.layer_specs(all_skip) if s.op == "conv" and s.kernel == 1]
    assert len(convs) == 1 + 6  # header + the 6 layers whose shape changes


def test_tiny_size_closed_form() -> None:
    assert TinySpace().size() == 64_000


def test_tiny_keys_parse_back_and_a_bad_value_is_named() -> None:
    """The arch keys a user copies from a report (`nas compress --arch KEY`) read back through
    `SearchSpace.from_key`, and a value the space lacks is named."""
    space = TinySpace()
    arch = space.validate({**space.sample(0), "s0.width": 16})
    rng = np.random.default_rng(0)
    for a in [arch, *(space.sample(rng) for _ in range(20))]:
        assert space.key(space.from_key(space.key(a))) == space.key(a)
    with pytest.raises(
        InvalidArchError, match=r"'s0.width'='99' is not a valid value \(valid values: \[16, 24\]\)"
    ):
        space.from_key(space.key(arch).replace("s0.width=16", "s0.width=99"))
