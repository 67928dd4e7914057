"""`nas ondevice plan` prints the plan's table; `adapt_model` writes the adapted model and its
report beside the deployed one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nas.app.cli import main
from nas.app.ondevice_adapt import adapt_model
from nas.data import load_embedded_digits
from search_spaces import get_space


def test_plan_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    space = get_space("tiny")
    key = space.key(space.sample(rng=0))
    assert main(["ondevice", "plan", "--space", "tiny", "--arch", key, "--mode", "bias"]) == 0
    out = capsys.readouterr().out
    assert "batch 8" in out and "in flash, not counted" in out
    assert "head.classifier" in out and "training memory:" in out
    assert main(["ondevice", "plan", "--space", "tiny", "--arch", key, "--mode", "last",
                 "--budget-kb", "100000"]) == 0  # fmt: skip


def test_adapt_writes_beside_the_deployed_model(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    space = get_space("tiny")
    arch = {k: c.values[0] for k, c in space.dimensions().items()}
    torch.manual_seed(0)
    model = space.build(arch).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = load_embedded_digits(copies_train=1, copies_val=2, copies_test=1)
    out, report = adapt_model(
        model, space, arch, data, tmp_path / "ondevice", mode="bias", shots=2, steps=4
    )
    assert out.parent == tmp_path / "ondevice"
    saved = load_file(str(out / "adapted.safetensors"))
    assert set(saved) == set(before)
    assert json.loads((out / "report.json").read_text())["plan"] == "bias"
    assert report["counts"]["shots_images"] == 20 and len(report["losses"]) == 4
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])  # the deployed model is untouched


def test_adapt_trains_tinytl_lite_residual_branches_beside_the_deployed_blocks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lite_residual` adapts a copy with the branches added: the deployed weights stay as they
    were, the saved state loads into `add_lite_residuals` of the arch, and the branches are
    priced (more memory than biases alone)."""
    from nas.app.ondevice_adapt import choose_plan
    from nas.ondevice import add_lite_residuals

    torch.set_num_threads(1)
    space = get_space("tiny")
    arch = {k: c.values[0] for k, c in space.dimensions().items()}
    torch.manual_seed(0)
    model = space.build(arch).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = load_embedded_digits(copies_train=1, copies_val=2, copies_test=1)
    out, report = adapt_model(
        model, space, arch, data, tmp_path / "ondevice", mode="lite_residual", shots=2, steps=4
    )
    assert report["structure"] == "lite_residual" and report["plan"] == "lite_residual"
    assert any(".lite." in name for name in report["trainable"])
    bias = choose_plan(space, arch, "bias").memory.total_bytes
    assert report["planned_bytes"] > bias
    saved = load_file(str(out / "adapted.safetensors"))
    branched = add_lite_residuals(space.build(arch), space.input_shape(arch))
    branched.load_state_dict(saved, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])  # the deployed model is untouched
    key = space.key(arch)
    assert (
        main(["ondevice", "plan", "--space", "tiny", "--arch", key, "--mode", "lite_residual"]) == 0
    )
    assert ".lite." in capsys.readouterr().out


def test_a_run_config_may_ask_for_the_lite_residual_mode() -> None:
    from nas.app.config import ConfigError, config_from_dict

    config = config_from_dict({"ondevice": {"enabled": True, "modes": ["lite_residual"]}})
    assert config.ondevice.modes == ["lite_residual"]
    with pytest.raises(ConfigError, match="did you mean 'lite_residual'"):
        config_from_dict({"ondevice": {"enabled": True, "modes": ["lite_resid"]}})
