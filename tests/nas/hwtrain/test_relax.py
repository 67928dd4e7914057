"""Architecture logits and the two relaxations over a supernet."""

from __future__ import annotations

import pytest
import torch

from nas.hwtrain import SAMPLE, ArchLogits, NotRelaxableError, Relaxation, probe_dims
from search_spaces import NB201Space, TinySpace
from tests.nas.hwtrain.toy import DeadDimSpace, ToySpace


def test_probe_finds_each_dims_role() -> None:
    roles = probe_dims(ToySpace().supernet())
    assert roles["op"].kind == "mixed" and roles["op"].modules == ("op",)
    assert roles["w"].kind == "gate" and set(roles["w"].modules) == {"wide", "head"}
    assert roles["res"].kind == "input"
    tiny = probe_dims(TinySpace().supernet())
    assert tiny["s0.b0.k"].modules == ("blocks.0",)
    assert tiny["s1.depth"].kind == "gate" and tiny["s1.depth"].modules == ()  # whole network
    nb201 = probe_dims(NB201Space().supernet())
    assert {r.kind for r in nb201.values()} == {"mixed"}
    assert len(nb201["1<-0"].modules) == 15  # every cell shares the arch


def test_a_dim_the_supernet_ignores_is_named() -> None:
    with pytest.raises(NotRelaxableError, match=r"\['dead'\]"):
        probe_dims(DeadDimSpace().supernet())


def test_logits_cover_every_dim_and_frozen_ones_do_not_learn() -> None:
    space = ToySpace()
    logits = ArchLogits(space, ["op", "w"], {"res": 16})
    assert logits.alpha.shape == (4,)
    lp = logits.log_probs()
    assert lp["res"].exp().tolist() == [0.0, 1.0]
    assert logits.argmax_arch() == {"op": "conv", "w": 4, "res": 16}
    sampled = ArchLogits(space, ["op", "w"], {"res": SAMPLE})
    assert sampled.log_probs()["res"].exp().tolist() == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="neither relaxed nor frozen"):
        ArchLogits(space, ["op"])
    with pytest.raises(ValueError, match="not one of"):
        ArchLogits(space, ["op", "w"], {"res": 12})


def _setup(method: str, paths: int = 1) -> tuple[ToySpace, Relaxation, ArchLogits]:
    space = ToySpace()
    net = space.supernet()
    logits = ArchLogits(space, ["op", "w"], {"res": 8})
    with torch.no_grad():
        logits.alpha.copy_(torch.tensor([0.3, -0.2, 0.1, 0.4]))
    return space, Relaxation(net, logits, probe_dims(net), method, paths), logits


@pytest.mark.parametrize(("method", "paths"), [("gumbel", 1), ("proxyless", 1), ("proxyless", 2)])
def test_every_relaxation_sends_gradients_to_the_logits(method: str, paths: int) -> None:
    _, relax, logits = _setup(method, paths)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    grads = torch.zeros(4)
    with relax.attached():
        for _ in range(6):
            relax.step(1.0, g)
            logits.alpha.grad = None
            relax.net(x).square().mean().backward()
            assert logits.alpha.grad is not None
            grads += logits.alpha.grad.abs()
    assert (grads[:2] > 0).all() and (grads[2:] > 0).all()  # the mixed op and the width


def test_sampled_paths_forward_the_hard_subnet_exactly() -> None:
    _, relax, _ = _setup("proxyless", 2)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 8)
    with relax.attached():
        for _ in range(4):
            arch = relax.step(1.0, g)
            relaxed = relax.net(x)
            relax.idle()
            with relax.net.using(arch):
                plain = relax.net(x)
            torch.testing.assert_close(relaxed, plain)
    assert relax.net(x).shape == (2, 3)  # hooks gone after the block


def test_bad_relaxation_settings() -> None:
    space = ToySpace()
    net = space.supernet()
    logits = ArchLogits(space, ["op", "w"], {"res": 8})
    with pytest.raises(ValueError, match="relaxation must be one of"):
        Relaxation(net, logits, probe_dims(net), "darts")
    with pytest.raises(ValueError, match="ProxylessNAS"):
        Relaxation(net, logits, probe_dims(net), "gumbel", paths=2)
