"""The path encoding on a cell space (NAS-Bench-201) and a chain space, and in ArchFeatures."""

from __future__ import annotations

import numpy as np
import pytest

from nas import predictors as P
from nas.predictors.encodings import PathEncoding, arch_paths
from search_spaces import NB201Space
from tests.nas.search.search_toy import ToySpace

CONV = "nor_conv_3x3"


def _cell(*ops: str) -> dict[str, str]:
    space = NB201Space()
    return dict(zip(space.keys, ops, strict=True))


def test_cell_paths_follow_live_edges_only() -> None:
    space = NB201Space()
    full = arch_paths(space, _cell(*[CONV] * 6))
    # input->output directly, through node 1, through node 2, through nodes 1 and 2
    assert sorted(full) == sorted([(CONV,), (CONV, CONV), (CONV, CONV), (CONV, CONV, CONV)])
    # node 1 gets input but feeds nothing that reaches the output: its edge is no path
    only_direct = _cell(CONV, "none", "none", CONV, "none", "none")
    assert arch_paths(space, only_direct) == [(CONV,)]
    assert arch_paths(space, _cell(*["none"] * 6)) == []  # a degenerate cell has no path
    skip = arch_paths(space, _cell("skip_connect", "none", "none", "none", "avg_pool_3x3", "none"))
    assert skip == [("skip_connect", "avg_pool_3x3")]


def test_path_encoding_counts_paths_and_drops_shared_ones() -> None:
    space = NB201Space()
    archs = [space.sample(i) for i in range(200)]
    enc = PathEncoding(space).fit(archs)
    assert 0 < len(enc.vocabulary) <= 4 + 4**2 + 4**3  # paths over the four non-`none` ops
    x = enc.transform([_cell(*[CONV] * 6), _cell(*["none"] * 6)])
    col = {n: j for j, n in enumerate(enc.names)}
    assert x[0, col[f"path:{CONV}>{CONV}"]] == 2.0 and x[0].sum() == 4.0
    assert x[1].sum() == 0.0


def test_chain_spaces_count_choices_and_adjacent_pairs() -> None:
    space = ToySpace()
    arch = space.sample(0)
    paths = arch_paths(space, arch)
    assert len(paths) == 4 + 3  # one per dimension, one per adjacent pair
    enc = PathEncoding(space).fit(list(space.enumerate()))
    x = enc.transform([arch])
    assert x.sum() == 7.0  # every path of a pool arch is in the vocabulary


def test_arch_features_with_path_encoding_label_every_column() -> None:
    space = NB201Space()
    archs = [space.sample(i) for i in range(100)]
    cost = {"ms": lambda a: np.arange(1, len(a) + 1, dtype=float)}
    feats = P.ArchFeatures(space, "onehot+path", cost).fit(archs)
    x = feats.transform(archs[:5])
    assert x.shape[1] == len(feats.names) == len(feats.groups)
    assert set(feats.groups) == {0, 1, 2}
    only_paths = P.ArchFeatures(space, "path").fit(archs)
    assert set(only_paths.groups) == {2}
    with pytest.raises(ValueError, match="encoding must be"):
        P.ArchFeatures(space, "adjacency")
