"""Training schedules, configs, BN recalibration, and checkpoints that resume exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nas.core.files import CheckpointError
from nas.supernet import (
    Phase,
    bn_stats_preserved,
    load_supernet,
    make_config,
    recalibrate_bn,
    train_supernet,
)
from nas.supernet.config import progressive_phases
from nas.supernet.schedules import ArchSampler
from search_spaces import FBNetSpace, MobileNetV3Space, TinySpace

ROOT = Path(__file__).resolve().parents[3]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/nas/supernet/conftest.py


def _data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# -- configs ---------------------------------------------------------------------------------


def test_unknown_schedule_lists_the_valid_ones() -> None:
    with pytest.raises(
        ValueError,
        match=r"unknown schedule 'sandwhich' \(did you mean 'sandwich'\?\); valid schedules: \['progressive', 'sandwich', 'spos'\]",
    ):
        make_config(schedule="sandwhich")


def test_bad_config_names_every_problem() -> None:
    with pytest.raises(ValueError) as err:
        make_config(epochs=0, batch_size=-1, optimizer="lamb", lr=0)
    msg = str(err.value)
    for part in (
        "epochs must be an int >= 1, got 0",
        "batch_size",
        "optimizer must be one of ['sgd', 'adamw'], got 'lamb'",
        "lr must be",
    ):
        assert part in msg
    with pytest.raises(
        ValueError, match=r"unknown training config key\(s\) \['epoch'\]; valid keys: \["
    ):
        make_config(epoch=3)
    with pytest.raises(
        ValueError,
        match=r"unknown option\(s\) \['n_rand'\] for schedule 'sandwich'; valid: \['n_random'",
    ):
        make_config(options={"n_rand": 2})
    with pytest.raises(ValueError, match="n_subnets must be >= 1"):
        make_config(schedule="spos", options={"n_subnets": 0})


def test_progressive_phases_follow_ofa_and_refuse_spaces_without_groups() -> None:
    phases = progressive_phases(MobileNetV3Space(), epochs=12, lr=0.1)
    assert [p.name for p in phases] == ["full", "kernel", "depth-1", "depth", "expand-1", "expand"]
    assert phases[0].elastic == ("resolution",)
    assert phases[2].choices == {"depth": (3, 4)}
    assert phases[-1].elastic == ("resolution", "k", "depth", "e")
    with pytest.raises(ValueError, match=r"space 'fbnet' has groups \['layer00'"):
        progressive_phases(FBNetSpace(), epochs=4, lr=0.1)


def test_sampler_holds_non_elastic_groups_at_the_largest() -> None:
    space = TinySpace()
    net = space.supernet()
    sampler = ArchSampler(net, Phase("kernel", 1, 0.1, elastic=("k",)))
    rng = np.random.default_rng(0)
    archs = [sampler.sample(rng) for _ in range(20)]
    largest = net.largest_arch()
    for a in archs:
        assert all(a[k] == largest[k] for k in a if not k.endswith(".k"))
    assert {a["s0.b0.k"] for a in archs} == {3, 5}
    assert sampler.smallest["s0.b0.k"] == 3 and sampler.smallest["s0.depth"] == 2
    with pytest.raises(
        ValueError, match=r"group\(s\) \['kernel'\].*its groups: \['depth', 'e', 'k', 'width'\]"
    ):
        ArchSampler(net, Phase("bad", 1, 0.1, elastic=("kernel",)))
    with pytest.raises(ValueError, match="choices for group 'e' must be a non-empty subset of"):
        ArchSampler(net, Phase("bad", 1, 0.1, choices={"e": (3,)}))


# -- batch-norm recalibration ----------------------------------------------------------------


def _bn_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU())


def test_recalibrate_bn_sets_exact_statistics_and_restores_modes() -> None:
    net = _bn_net().eval()
    net[0].train()  # a mixed mode must come back as it was
    weights = {k: v.clone() for k, v in net.named_parameters()}
    batches = [torch.randn(8, 3, 6, 6) + i for i in range(3)]
    assert recalibrate_bn(net, batches) == 3
    with torch.no_grad():
        feats = [net[0](b) for b in batches]  # each 8 x 4 x 4 x 4
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    bn = net[1]
    assert torch.allclose(bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(bn.running_var, var, atol=1e-4)
    assert bn.momentum == 0.3 and not net.training and not bn.training and net[0].training
    assert all(torch.equal(v, weights[k]) for k, v in net.named_parameters())


def test_recalibrate_bn_restores_everything_on_error() -> None:
    net = _bn_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}

    def batches() -> Iterator[torch.Tensor]:
        yield torch.randn(4, 3, 6, 6)
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        recalibrate_bn(net, batches())
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert net.training and net[1].momentum == 0.3
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_bn(net, [])


def test_recalibrating_a_subnet_inside_the_supernet_touches_only_its_slice() -> None:
    space = TinySpace()
    net = space.supernet()
    small = net.smallest_arch()
    bn = net.blocks[0].project.bn
    before = bn.running_mean.clone()
    with bn_stats_preserved(net), net.using(small):
        recalibrate_bn(net, [torch.randn(4, 3, 32, 32)])
        c = bn.active
        assert not torch.equal(bn.running_mean[:c], before[:c])
        assert torch.equal(bn.running_mean[c:], before[c:])
    assert torch.equal(bn.running_mean, before)  # preserved


# -- training and resuming -------------------------------------------------------------------

SMALL = {"epochs": 2, "batch_size": 16, "checkpoint_every": 3, "seed": 3}


def test_resume_continues_exactly(tmp_path: Path) -> None:
    space, data = TinySpace(), _data()
    config = {**SMALL, "options": {"n_random": 1}}
    full = train_supernet(space, data, tmp_path / "a", config, progress=False)
    assert full.completed and full.step == 8 and len(full.history) == 2
    part = train_supernet(space, data, tmp_path / "b", config, progress=False, max_steps=5)
    assert not part.completed and part.step == 5
    meta = json.loads((tmp_path / "b" / "checkpoint.json").read_text())
    assert meta["state"]["step"] == 5 and meta["state"]["batch"] == 1
    rest = train_supernet(space, data, tmp_path / "b", config, progress=False)
    assert rest.completed and rest.step == 8
    _same_state(full.supernet, rest.supernet)
    assert [h["loss"] for h in full.history] == [h["loss"] for h in rest.history]
    again = train_supernet(space, data, tmp_path / "b", config, progress=False)
    assert again.completed and again.step == 8  # a finished run stays finished
    _same_state(full.supernet, load_supernet(space, tmp_path / "b"))


def test_progressive_resumes_across_phases_with_its_teacher(tmp_path: Path) -> None:
    space, data = TinySpace(), _data(32)
    phases = [
        {"name": "full", "epochs": 1, "lr": 0.05, "elastic": []},
        {"name": "kernel", "epochs": 2, "lr": 0.02, "elastic": ["k"]},
    ]
    config = {**SMALL, "schedule": "progressive", "options": {"phases": phases, "n_subnets": 1}}
    full = train_supernet(space, data, tmp_path / "a", config, progress=False)
    assert [h["phase"] for h in full.history] == ["full", "kernel", "kernel"]
    for stop in (2, 4):  # the phase boundary, then mid-phase with a teacher in the checkpoint
        train_supernet(space, data, tmp_path / "b", config, progress=False, max_steps=stop)
    rest = train_supernet(space, data, tmp_path / "b", config, progress=False)
    _same_state(full.supernet, rest.supernet)


def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    space, data = TinySpace(), _data(32)
    train_supernet(
        space, data, tmp_path, {**SMALL, "schedule": "spos"}, progress=False, max_steps=1
    )
    with pytest.raises(CheckpointError, match=r"different config: lr: stored 0\.05, given 0\.1"):
        train_supernet(
            space, data, tmp_path, {**SMALL, "schedule": "spos", "lr": 0.1}, progress=False
        )
    with pytest.raises(CheckpointError, match="resume=True"):
        train_supernet(
            space, data, tmp_path, {**SMALL, "schedule": "spos"}, progress=False, resume=False
        )
    with pytest.raises(ValueError, match="fewer than one global batch of 64"):
        train_supernet(space, data, tmp_path / "x", {**SMALL, "batch_size": 64}, progress=False)


_CHILD = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from search_spaces import TinySpace
from nas.supernet import train_supernet
g = torch.Generator().manual_seed(0)
data = torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)
train_supernet(TinySpace(), data, {out!r}, {config!r}, progress=False)
"""


def test_training_resumes_after_a_kill(tmp_path: Path) -> None:
    config = {"schedule": "spos", "epochs": 10, "batch_size": 16, "checkpoint_every": 1, "seed": 1}
    out = tmp_path / "run"
    code = _CHILD.format(root=str(ROOT), out=str(out), config=config)
    child = subprocess.Popen(
        [sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    meta_path = out / "checkpoint.json"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if meta_path.exists() and json.loads(meta_path.read_text())["state"]["step"] >= 3:
                break
            time.sleep(0.05)
        assert child.poll() is None, "the child finished or failed before it could be killed"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    killed_at = json.loads(meta_path.read_text())["state"]["step"]
    assert 3 <= killed_at < 40
    data = _data(64, 0)
    space = TinySpace()
    resumed = train_supernet(space, data, out, config, progress=False)
    fresh = train_supernet(space, data, tmp_path / "fresh", config, progress=False)
    assert resumed.completed and resumed.step == fresh.step == 40
    for (k, a), b in zip(
        resumed.supernet.state_dict().items(), fresh.supernet.state_dict().values(), strict=True
    ):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k


def test_elastic_resolution_feeds_each_subnet_its_own_input_size(tmp_path: Path) -> None:
    space = MobileNetV3Space(resolutions=(32, 40), num_classes=10)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = space.supernet()
    seen: set[int] = set()
    net.first_conv.register_forward_pre_hook(lambda m, args: seen.add(args[0].shape[-1]))
    config = {"epochs": 1, "batch_size": 4, "options": {"n_random": 2}, "seed": 2}
    run = train_supernet(space, _data(8), tmp_path, config, supernet=net, progress=False)
    assert run.completed and seen == {32, 40}  # the largest at 40, the smallest at 32
