"""Losses, the training loop (warm-up, disjoint splits, exact resume after a kill) and the
derivation of an arch from trained logits."""

from __future__ import annotations

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
    LossConfig,
    Relaxation,
    derive,
    hardware_loss,
    probe_dims,
    top_archs,
    train_hw,
)
from nas.hwtrain.train import _splits
from tests.nas.hwtrain.toy import ToyNet, ToySpace


def _cost(arch: Arch) -> float:  # a latency-like cost: bigger width, conv op, resolution
    return 0.1 + 0.05 * int(arch["w"]) + (0.3 if arch["op"] == "conv" else 0.0)


def _setup(
    target: float | None = 0.4, form: str = "target"
) -> tuple[ToyNet, ArchLogits, Relaxation, list[CostTerm], LossConfig]:
    space = ToySpace()
    net = space.supernet()
    roles = probe_dims(net)
    logits = ArchLogits(space, ["op", "w"], {"res": 8})
    term = CostTerm("toy-device", ExpectedCost(logits, _cost), target=target)
    return net, logits, Relaxation(net, logits, roles, "gumbel"), [term], LossConfig(form)


DATA = (torch.randn(96, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(96) % 3)


def _config(**kw: object) -> HWTrainConfig:
    base: dict[str, object] = dict(
        epochs=4, warmup_epochs=1, batch_size=16, arch_lr=0.2, tau0=1.0, seed=3
    )
    base.update(kw)
    return HWTrainConfig(**base)  # type: ignore[arg-type]


def test_loss_forms() -> None:
    *_, terms, _ = _setup(target=0.5)
    (term,) = terms
    term.reference = 0.55
    ce = torch.tensor(2.0, dtype=torch.float64)
    expected = float(term.expected().detach())  # uniform: 0.1 + 0.05 * 6 + 0.15
    add, logged = hardware_loss(ce, terms, LossConfig("additive", lam=1.0))
    assert logged == {"toy-device": pytest.approx(expected)}
    assert float(add.detach()) == pytest.approx(2.0 + expected / 0.5)
    tgt, _ = hardware_loss(ce, terms, LossConfig("target", lam=1.0))
    assert float(tgt.detach()) == pytest.approx(2.0 + (expected / 0.5 - 1) ** 2)
    mult, _ = hardware_loss(ce, terms, LossConfig("multiplicative"))
    assert float(mult.detach()) == pytest.approx(
        2.0 * 0.2 * (1 + torch.log(torch.tensor(expected / 0.5))) ** 0.6
    )
    term.margin = 0.25
    assert term.aim == pytest.approx(0.4)
    with pytest.raises(ValueError, match="loss form"):
        LossConfig("fbnet")


def test_several_devices_share_the_loss_by_weight() -> None:
    _, logits, _, _, _ = _setup()
    fast = CostTerm("a", ExpectedCost(logits, _cost), weight=3.0, reference=0.5)
    slow = CostTerm("b", ExpectedCost(logits, lambda a: 2 * _cost(a)), weight=1.0, target=2.0)
    ce = torch.tensor(1.0, dtype=torch.float64)
    e = float(fast.expected().detach())
    add, logged = hardware_loss(ce, [fast, slow], LossConfig("additive", lam=1.0))
    assert logged == {"a": pytest.approx(e), "b": pytest.approx(2 * e)}
    assert float(add.detach()) == pytest.approx(1.0 + (3 * e / 0.5 + 2 * e / 2.0) / 4)
    tgt, _ = hardware_loss(ce, [fast, slow], LossConfig("target", lam=1.0))
    assert float(tgt.detach()) == pytest.approx(1.0 + (3 * e / 0.5 + (2 * e / 2.0 - 1) ** 2) / 4)


def test_weights_and_logits_see_disjoint_splits() -> None:
    w, a = _splits(100, _config())
    assert len(w) == 80 and len(a) == 20 and not set(w.tolist()) & set(a.tolist())


def test_training_reaches_the_target_in_expectation() -> None:
    net, logits, relax, terms, _ = _setup(target=0.35)
    loss = LossConfig("target", lam=20.0)
    result = train_hw(net, logits, relax, terms, DATA, _config(epochs=8, loss=loss, arch_lr=0.05))
    assert result.history[0]["warmup"] and result.history[0]["arch_loss"] == 0.0
    first, last = (
        result.history[1]["expected.toy-device"],
        result.history[-1]["expected.toy-device"],
    )
    assert abs(last - 0.35) < abs(first - 0.35) and abs(last / 0.35 - 1) < 0.05
    assert len(result.trajectory) >= 8 and "probs" in result.trajectory[-1]
    assert result.trajectory[0]["step"] == 0  # the uniform start
    assert result.trajectory[0]["probs"]["op"] == {"conv": 0.5, "skip": 0.5}


def test_a_killed_run_resumes_exactly(tmp_path: Path) -> None:
    net, logits, relax, terms, loss = _setup()
    straight = train_hw(net, logits, relax, terms, DATA, _config(loss=loss))

    class Kill(Exception):
        pass

    def kill(epoch: int) -> None:
        if epoch == 2:
            raise Kill

    net2, logits2, relax2, terms2, _ = _setup()
    with pytest.raises(Kill):
        train_hw(net2, logits2, relax2, terms2, DATA, _config(loss=loss), tmp_path, on_epoch=kill)
    net3, logits3, relax3, terms3, _ = _setup()
    resumed = train_hw(net3, logits3, relax3, terms3, DATA, _config(loss=loss), tmp_path)
    assert resumed.resumed_from_epoch == 2
    assert torch.equal(logits3.alpha, straight.logits.alpha)
    for (k, v), (_, u) in zip(
        net3.state_dict().items(), straight.supernet.state_dict().items(), strict=True
    ):
        assert torch.equal(v, u), k
    assert resumed.history == straight.history
    assert (tmp_path / "trajectory.json").is_file()
    with pytest.raises(CheckpointError, match="other settings"):
        train_hw(net3, logits3, relax3, terms3, DATA, _config(loss=loss, seed=4), tmp_path)


def test_derive_reports_the_argmax_and_repairs_toward_the_target() -> None:
    _, logits, _, terms, _ = _setup(target=0.5)
    with torch.no_grad():
        logits.alpha.copy_(torch.tensor([2.0, 0.0, 0.0, 1.0]))  # conv, w=8: 0.8 ms
    top = top_archs(logits, 4)
    assert [round(p, 6) for _, p in top] == sorted((round(p, 6) for _, p in top), reverse=True)
    assert sum(p for _, p in top) == pytest.approx(1.0)
    assert top[0][0] == logits.argmax_arch()
    out = derive(logits, terms, tolerance=0.05)
    assert out["argmax"]["priced"]["toy-device"] == pytest.approx(0.8)
    assert out["rule"] != "argmax"
    assert abs(out["derived"]["target_error"]["toy-device"]) <= 0.05
    assert out["derived"]["arch"] == {"op": "skip", "w": 8, "res": 8}  # 0.5 ms, the only fit
