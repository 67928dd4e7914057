"""A client's local training and the server's tier evaluation go through the one
device-and-precision helper: fp32 on the CPU (the default, and a node's unless its config says
otherwise) is the loop it was; bf16 autocast changes the update a little."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from flwr.app import Context, RecordDict

from nas.data import load_embedded_digits
from nas.federated import LocalSettings, SupernetFamily, evaluate_tier, train_local
from nas.federated.apps import _node_execution
from nas.supernet import DeviceError, OutOfMemory, Precision, execution
from search_spaces.tiny import TinySpace

SETTINGS = LocalSettings(batch_size=16, max_batches=3)


@pytest.fixture(scope="module")
def shots() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_embedded_digits(copies_train=1, copies_val=1, copies_test=1)
    return data.train.tensors[0][:96], data.train.tensors[1][:96]


def _trained(
    shots: tuple[torch.Tensor, torch.Tensor], precision: Precision | None
) -> tuple[torch.nn.Module, float, dict[str, Any]]:
    space = TinySpace()
    family = SupernetFamily(space)
    tier = {"arch": space.supernet().smallest_arch()}
    model = family.full_model(0)
    loss = train_local(family, model, tier, *shots, SETTINGS, seed=5, precision=precision)
    return model, loss, tier


def test_bf16_changes_the_local_update_a_little_and_hands_back_fp32_on_the_cpu(
    shots: tuple[torch.Tensor, torch.Tensor],
) -> None:
    plain, plain_loss, _ = _trained(shots, None)
    fp32, fp32_loss, _ = _trained(shots, execution("cpu", "fp32"))
    bf16, bf16_loss, _ = _trained(shots, execution("cpu", "bf16"))
    assert plain_loss == fp32_loss and bf16_loss != plain_loss
    for a, b, c in zip(plain.parameters(), fp32.parameters(), bf16.parameters(), strict=True):
        assert torch.equal(a, b), "fp32 through the helper is the loop it was"
        assert c.dtype == torch.float32 and c.device.type == "cpu"
    diffs = [
        (a - c).abs().max().item()
        for a, c in zip(plain.parameters(), bf16.parameters(), strict=True)
    ]
    assert 0 < max(diffs) < 0.5, "autocast changed the arithmetic, a little"


def test_evaluate_tier_runs_under_the_precision(
    shots: tuple[torch.Tensor, torch.Tensor],
) -> None:
    model, _, tier = _trained(shots, None)
    family = SupernetFamily(TinySpace())
    images, labels = shots

    def mask(precision: Precision | None) -> Any:
        work = family.full_model(0)
        work.load_state_dict(model.state_dict())
        return evaluate_tier(family, work, tier, images[:32], images, labels, 32, precision)

    plain, bf16 = mask(None), mask(execution("cpu", "bf16"))
    assert (plain == mask(execution("cpu", "fp32"))).all()
    assert bf16.shape == plain.shape and bf16.dtype == plain.dtype


def _context(**node: Any) -> Context:
    return Context(0, 0, {"partition-id": 0, "num-partitions": 2, **node}, RecordDict(), {})


def test_a_node_trains_on_the_cpu_in_fp32_unless_its_config_says_otherwise() -> None:
    default = _node_execution(_context())
    assert default.name == "fp32" and default.device == torch.device("cpu")
    chosen = _node_execution(_context(device="cpu", precision="bf16"))
    assert chosen.name == "bf16" and chosen.dtype == torch.bfloat16
    with pytest.raises(DeviceError, match="cuda:7"):
        _node_execution(_context(device="cuda:7"))


def test_a_local_batch_that_does_not_fit_says_its_size(
    shots: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    import nas.federated.local as local

    def no_memory(*args: object, **kwargs: object) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(local.F, "cross_entropy", no_memory)
    with pytest.raises(OutOfMemory, match=r"batch of 16 images"):
        _trained(shots, None)
