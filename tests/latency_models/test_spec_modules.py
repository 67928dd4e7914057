"""Stand-in modules for layer specs: every spec of every built-in space gets one, with the
spec's output shape; unknown kinds fail with the list of supported ones."""

from __future__ import annotations

import pytest
import torch

import search_spaces
from latency_models.spec_modules import (
    FREE_OPS,
    SUPPORTED_OPS,
    UnsupportedSpecError,
    check_output_shape,
    is_free,
    module_for_spec,
)
from nas.core.layers import LayerSpec


@pytest.mark.parametrize("name", search_spaces.SPACES.list())
def test_every_spec_of_every_space_has_a_stand_in(name: str) -> None:
    kwargs = {"resolutions": [128, 160]} if name == "mobilenetv3" else {}
    space = search_spaces.get_space(name, **kwargs)
    seen: dict[str, LayerSpec] = {}
    for seed in range(2):
        for spec in space.layer_specs(space.sample(seed)):
            seen.setdefault(spec.key, spec)
    for spec in seen.values():
        if is_free(spec):
            assert spec.op in FREE_OPS
            continue
        module, shape = module_for_spec(spec)
        assert shape == (1, *spec.input_shape)
        if max(spec.input_shape[1:], default=1) <= 32:
            check_output_shape(spec, module)  # a real forward, on small inputs only


def test_conv_stand_in_matches_fields() -> None:
    spec = LayerSpec("conv", (8, 16, 16), (16, 8, 8), kernel=3, stride=2, activation="relu6")
    module, _ = module_for_spec(spec)
    conv = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
    assert (conv.kernel_size, conv.stride, conv.groups) == ((3, 3), (2, 2), 1)
    assert isinstance(module[-1], torch.nn.ReLU6)


def test_depthwise_and_binary() -> None:
    dw = LayerSpec("conv", (8, 16, 16), (8, 16, 16), kernel=5, groups=8)
    module, _ = module_for_spec(dw)
    assert isinstance(module, torch.nn.Conv2d) and module.groups == 8
    add = LayerSpec("add", (8, 4, 4), (8, 4, 4))
    module, shape = module_for_spec(add)
    x = torch.zeros(shape)
    assert torch.all(module(x) > 0)  # a real second operand, never zero


def test_ofa_named_rows() -> None:
    space = search_spaces.get_space("mobilenetv3", resolutions=[128])
    specs = space.layer_specs(space.sample(0))
    named = {s.name: s for s in specs if s.name}
    assert set(named) == {"Conv", "Conv_1", "AvgPool2D", "Conv_2", "Logits"}
    for spec in named.values():
        module, _ = module_for_spec(spec)
        check_output_shape(spec, module)


def test_unknown_op_lists_supported_ones() -> None:
    spec = LayerSpec("fft", (8, 4, 4), (8, 4, 4))
    with pytest.raises(UnsupportedSpecError) as err:
        module_for_spec(spec)
    assert "fft" in str(err.value)
    for op in SUPPORTED_OPS:
        assert op in str(err.value)


def test_free_op_is_refused_with_a_reason() -> None:
    with pytest.raises(UnsupportedSpecError, match="free op"):
        module_for_spec(LayerSpec("_unsafe_view", (8, 2, 4, 4), (16, 4, 4)))


def test_impossible_shapes_are_refused() -> None:
    with pytest.raises(UnsupportedSpecError, match="padding"):
        module_for_spec(LayerSpec("conv", (8, 16, 16), (8, 3, 3), kernel=3, stride=1))
    with pytest.raises(UnsupportedSpecError, match="groups"):
        module_for_spec(LayerSpec("conv", (8, 16, 16), (6, 16, 16), kernel=3, groups=4))


def test_copy_stand_in_is_the_permutation_a_channel_shuffle_makes() -> None:
    from nas.core.blocks import ChannelShuffle

    x = torch.randn(1, 8, 5, 5)
    shuffled = ChannelShuffle(2)(x)  # traced as a copy of the (4, 2, 5, 5) transposed view
    module, shape = module_for_spec(LayerSpec("copy", (4, 2, 5, 5), (4, 2, 5, 5)))
    assert shape == (1, 4, 2, 5, 5)
    out = module(x.reshape(shape))
    torch.testing.assert_close(out.reshape(1, 8, 5, 5), shuffled)
    vector, vshape = module_for_spec(LayerSpec("copy", (16,), (16,)))
    v = torch.arange(16.0).reshape(vshape)
    assert not torch.equal(vector(v), v)  # a real copy even where no permutation exists


def test_stand_ins_export_cleanly() -> None:
    """Runtimes export the stand-ins; an in-place activation would mutate the program's input,
    which torch.export cannot unlift (it failed that way on XNNPACK before)."""
    from latency_models.runtimes.base import example_input
    from nas.backends import export_program

    specs = [
        LayerSpec("act", (8, 8, 8), (8, 8, 8), activation="relu"),
        LayerSpec("add", (8, 8, 8), (8, 8, 8)),
        LayerSpec("mul", (8, 8, 8), (8, 8, 8)),
        LayerSpec("copy", (4, 2, 8, 8), (4, 2, 8, 8)),
        LayerSpec("conv", (8, 8, 8), (8, 8, 8), kernel=3, groups=8, activation="hswish"),
    ]
    for spec in specs:
        module, shape = module_for_spec(spec)
        ep = export_program(module, (example_input(shape, 0),))
        ep.run_decompositions({})
        assert not ep.graph_signature.user_inputs_to_mutate, spec.key
