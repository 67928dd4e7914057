"""The weight step's rule: `sandwich` trains the largest subnet beside the sampled path (weights
a path step never touches), reproducibly and resumably; checkpoints of before the field resume
as `path`, and a run of one rule never resumes a run of the other."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from nas.core.files import CheckpointError
from nas.core.space import Arch
from nas.hwtrain import (
    ArchLogits,
    CostTerm,
    ExpectedCost,
    HWTrainConfig,
    HWTrainResult,
    LossConfig,
    Relaxation,
    probe_dims,
    train_hw,
)
from nas.hwtrain.train import CHECKPOINT
from tests.nas.hwtrain.toy import ToyNet, ToySpace

DATA = (torch.randn(96, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(96) % 3)


def _cost(arch: Arch) -> float:
    return 0.1 + 0.05 * int(arch["w"]) + (0.3 if arch["op"] == "conv" else 0.0)


def _run(
    rule: str,
    out: Path | None = None,
    bias: float = 0.0,
    on_epoch: Callable[[int], None] | None = None,
    **kw: object,
) -> HWTrainResult:
    """A seeded toy run; `bias` > 0 pins the relaxation to the smallest path (`skip`, w=4)."""
    space = ToySpace()
    torch.manual_seed(0)  # the same initial weights in every run
    net = space.supernet()
    logits = ArchLogits(space, ["op", "w"], {"res": 8})
    with torch.no_grad():  # column 0 of op is conv, of w is 4
        logits.alpha.zero_()
        for dim, pick in (("op", 1), ("w", 0)):
            logits.logits(dim)[pick] = bias
    relax = Relaxation(net, logits, probe_dims(net), "proxyless")
    term = CostTerm("toy-device", ExpectedCost(logits, _cost), target=0.4)
    base: dict[str, object] = dict(
        epochs=3, warmup_epochs=1, batch_size=16, arch_lr=0.05, tau0=1.0, seed=3,
        weight_rule=rule, loss=LossConfig("target"),
    )  # fmt: skip
    base.update(kw)
    cfg = HWTrainConfig(**base)  # type: ignore[arg-type]
    return train_hw(net, logits, relax, [term], DATA, cfg, out, on_epoch=on_epoch)


def _same(a: HWTrainResult, b: HWTrainResult) -> bool:
    sa, sb = a.supernet.state_dict(), b.supernet.state_dict()
    return torch.equal(a.logits.alpha, b.logits.alpha) and all(
        torch.equal(sa[k], sb[k]) for k in sa
    )


def test_the_sandwich_trains_the_largest_subnets_weights_a_path_step_never_touches() -> None:
    torch.manual_seed(0)
    start = ToySpace().supernet().state_dict()  # the runs' initial weights
    conv, wide = "op.candidates.conv.weight", "wide.weight"  # wide[4:]: w=8's channels only
    # no warm-up, no weight decay: the path is always (skip, w=4), so the conv op and the
    # upper channels get no gradient under "path"; under "sandwich" the largest (conv, w=8)
    # trains them every step
    path = _run("path", bias=30.0, warmup_epochs=0, weight_decay=0.0, arch_lr=1e-6)
    sandwich = _run("sandwich", bias=30.0, warmup_epochs=0, weight_decay=0.0, arch_lr=1e-6)
    p_net, s_net = path.supernet.state_dict(), sandwich.supernet.state_dict()
    assert torch.equal(p_net[conv], start[conv])
    assert torch.equal(p_net[wide][4:], start[wide][4:])
    assert not torch.equal(s_net[conv], start[conv])
    assert not torch.equal(s_net[wide][4:], start[wide][4:])
    assert "ce_largest" in sandwich.history[-1] and "ce_largest" not in path.history[-1]


def test_seeded_sandwich_runs_repeat_and_differ_from_path_runs() -> None:
    a, b, c = _run("sandwich"), _run("sandwich"), _run("path")
    assert _same(a, b) and a.history == b.history
    assert not _same(a, c)


def test_a_killed_sandwich_run_resumes_exactly(tmp_path: Path) -> None:
    straight = _run("sandwich")
    with pytest.raises(KeyboardInterrupt):
        _run("sandwich", tmp_path, on_epoch=_kill)
    resumed = _run("sandwich", tmp_path)
    assert resumed.resumed_from_epoch == 2
    assert _same(resumed, straight) and resumed.history == straight.history


def _kill(epoch: int) -> None:
    if epoch == 2:
        raise KeyboardInterrupt


def _strip_rule(path: Path) -> None:
    """Rewrite a checkpoint as one written before `weight_rule` existed."""
    state = torch.load(path, weights_only=True)
    config = json.loads(state["config"])
    assert config.pop("weight_rule") == "path"
    state["config"] = json.dumps(config, sort_keys=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    path.write_bytes(buf.getvalue())


def test_a_checkpoint_of_before_the_field_resumes_as_path_only(tmp_path: Path) -> None:
    straight = _run("path")
    with pytest.raises(KeyboardInterrupt):
        _run("path", tmp_path, on_epoch=_kill)
    _strip_rule(tmp_path / CHECKPOINT)
    with pytest.raises(CheckpointError, match="weight_rule='path'"):
        _run("sandwich", tmp_path)  # the default rule: no silent resume of a path run
    resumed = _run("path", tmp_path)
    assert resumed.resumed_from_epoch == 2
    assert _same(resumed, straight) and resumed.history == straight.history


def test_a_sandwich_checkpoint_never_resumes_a_path_run(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        _run("sandwich", tmp_path, on_epoch=_kill)
    with pytest.raises(CheckpointError, match="weight_rule='sandwich'"):
        _run("path", tmp_path)


def test_the_rule_is_checked_and_needs_a_largest_subnet() -> None:
    with pytest.raises(ValueError, match="weight_rule must be one of"):
        HWTrainConfig(weight_rule="largest")
    assert HWTrainConfig().weight_rule == "sandwich"

    class NoLargest(ToyNet):
        built = False

        def largest_arch(self) -> Arch:
            if self.built:
                raise NotImplementedError("named values")
            return super().largest_arch()

    space = ToySpace()
    net = NoLargest(space)
    logits = ArchLogits(space, ["op", "w"], {"res": 8})
    relax = Relaxation(net, logits, probe_dims(net), "proxyless")
    net.built = True  # (probe_dims needs the largest arch too: hwtrain's spaces all have one)
    term = CostTerm("toy-device", ExpectedCost(logits, _cost), target=0.4)
    with pytest.raises(ValueError, match="use weight_rule='path'"):
        train_hw(net, logits, relax, [term], DATA, HWTrainConfig(epochs=2, warmup_epochs=1))
