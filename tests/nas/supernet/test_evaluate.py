"""Inherited-weight evaluation: BN-recalibrated copies, batched over archs, cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nas.supernet import recalibrate_bn
from nas.supernet.evaluate import SubnetEvaluator, accuracy, evaluate_archs, state_fingerprint
from search_spaces import TinySpace


def _split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture
def setup() -> tuple[TinySpace, object, tuple, tuple]:
    torch.manual_seed(0)
    space = TinySpace()
    return space, space.supernet(), _split(64, 1), _split(40, 2)


def test_accuracy_matches_a_manual_export_and_leaves_the_supernet_alone(
    setup: tuple, tmp_path: Path
) -> None:
    space, net, calib, val = setup
    before = {k: v.clone() for k, v in net.state_dict().items()}
    arch = space.sample(4)
    ev = SubnetEvaluator(net, calib, val, calib_images=32, calib_batch_size=16, seed=0)
    acc = ev.evaluate_one(arch)
    manual = net.export(arch)
    recalibrate_bn(manual, ev.calib_batches)
    assert acc == accuracy(manual, *val)
    assert 0.0 <= acc <= 1.0
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_batched_evaluation_dedupes_and_caches_on_disk(setup: tuple, tmp_path: Path) -> None:
    space, net, calib, val = setup
    archs = [space.sample(s) for s in range(3)]
    cache = tmp_path / "acc.jsonl"
    ev = SubnetEvaluator(net, calib, val, calib_images=32, cache_path=cache)
    first = ev.evaluate([*archs, archs[0]])
    assert ev.misses == 3 and first[0] == first[3]
    assert ev.evaluate(archs) == first[:3] and ev.hits == 3 and ev.misses == 3

    again = SubnetEvaluator(net, calib, val, calib_images=32, cache_path=cache)
    again._score = None  # type: ignore[assignment,method-assign]  # any miss would fail
    assert again.evaluate(archs) == first[:3]

    with torch.no_grad():
        next(net.parameters()).add_(1.0)  # new weights: a new checkpoint id, so no stale hits
    moved = SubnetEvaluator(net, calib, val, calib_images=32, cache_path=cache)
    assert moved.checkpoint_id != ev.checkpoint_id
    assert moved.cached(archs[0]) is None
    other_calib = SubnetEvaluator(net, calib, val, calib_images=16, cache_path=cache)
    assert other_calib.settings_id != moved.settings_id  # settings are part of the key


def test_evaluate_archs_and_fingerprint(setup: tuple) -> None:
    space, net, calib, val = setup
    accs = evaluate_archs(net, [space.sample(0), space.sample(1)], calib, val, calib_images=16)
    assert accs.shape == (2,)
    assert state_fingerprint(net) == state_fingerprint(net)
    with pytest.raises(ValueError, match="calib_images must be an int >= 1, got 0"):
        SubnetEvaluator(net, calib, val, calib_images=0)
    with pytest.raises(TypeError, match="eval_data must be"):
        SubnetEvaluator(net, calib, [1, 2, 3])


def test_a_cut_last_record_is_dropped_and_recomputed_never_glued(
    setup: tuple, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    space, net, calib, val = setup
    archs = [space.sample(s) for s in range(3)]
    cache = tmp_path / "accuracy" / "inherited.jsonl"
    first = SubnetEvaluator(net, calib, val, calib_images=32, cache_path=cache).evaluate(archs[:2])
    whole = cache.read_bytes()
    cut = whole[:-20]  # killed while writing the second record
    cache.write_bytes(cut)
    partial = len(cut) - (cut.rfind(b"\n") + 1)
    with caplog.at_level("WARNING"):
        resumed = SubnetEvaluator(net, calib, val, calib_images=32, cache_path=cache)
    assert "inherited.jsonl" in caplog.text and "partial last line" in caplog.text  # said
    assert resumed.cached(archs[0]) == first[0] and resumed.cached(archs[1]) is None
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert resumed.evaluate(archs)[:2] == first
    assert resumed.misses == 2  # the cut arch again, and the new one
    # only whole records, one per arch: the cut one gone, not glued to the next
    data = cache.read_bytes()
    assert data.endswith(b"\n") and data.startswith(whole[: whole.index(b"\n") + 1])
    records = [json.loads(line) for line in data.decode().splitlines()]
    assert sorted(r["arch"] for r in records) == sorted(space.key(a) for a in archs)
    assert f"dropped a partial last line ({partial} bytes" in caplog.text  # and said
    again = SubnetEvaluator(net, calib, val, calib_images=32, cache_path=cache)
    again._score = None  # type: ignore[assignment,method-assign]  # any miss would fail
    assert again.evaluate(archs) == resumed.evaluate(archs)
