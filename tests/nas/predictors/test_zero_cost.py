"""Zero-cost proxies: what they score, their cache per canonical key, and its file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nas.core.files import FileProblem
from nas.predictors.zero_cost import ZeroCostProxy
from tests.nas.search.search_toy import ToySpace


def _arch(width: int, depth: int, act: str = "relu") -> dict[str, object]:
    return {"width": width, "depth": depth, "kernel": 3, "act": act}


def test_synflow_grows_with_the_network_and_is_cached_per_canonical_key() -> None:
    space = ToySpace()
    proxy = ZeroCostProxy(space, "synflow")
    small, big = proxy.many([_arch(8, 1), _arch(32, 4)])
    assert 0 < small < big  # more weights on more paths carry more synaptic flow
    assert proxy.n_computed == 2
    # relu6 builds the same network as relu: one canonical key, one computation
    assert proxy.score(_arch(8, 1, "relu6")) == small and proxy.n_computed == 2
    assert ZeroCostProxy(space, "synflow").score(_arch(8, 1)) == small  # seeded weights


def test_jacov_needs_images_and_scores_a_minibatch() -> None:
    space = ToySpace()
    with pytest.raises(ValueError, match="needs a minibatch"):
        ZeroCostProxy(space, "jacov")
    with pytest.raises(ValueError, match="unknown zero-cost proxy"):
        ZeroCostProxy(space, "snipp")
    images = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    scores = ZeroCostProxy(space, "jacov", images=images).many([_arch(8, 1), _arch(32, 4)])
    assert np.isfinite(scores).all() and scores[0] != scores[1]


def test_the_cache_file_round_trips_and_bad_files_are_named(tmp_path: Path) -> None:
    space = ToySpace()
    proxy = ZeroCostProxy(space, "synflow")
    value = proxy.score(_arch(16, 2))
    proxy.save(tmp_path / "zc.json")
    again = ZeroCostProxy(space, "synflow").load(tmp_path / "zc.json")
    assert again.score(_arch(16, 2)) == value and again.n_computed == 0
    assert ZeroCostProxy(space, "synflow").load(tmp_path / "none.json").cache == {}
    with pytest.raises(FileProblem, match=r"not .*synflow.*of seed 1"):
        ZeroCostProxy(space, "synflow", seed=1).load(tmp_path / "zc.json")
    (tmp_path / "bad.json").write_text('{"kind": "synflow"')
    with pytest.raises(FileProblem, match=r"bad\.json.*not valid JSON"):
        ZeroCostProxy(space, "synflow").load(tmp_path / "bad.json")
