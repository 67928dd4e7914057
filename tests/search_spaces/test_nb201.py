from __future__ import annotations

import collections
import csv
from pathlib import Path

import numpy as np
import pytest

from nas.core.space import InvalidArchError
from search_spaces.nb201 import DEGENERATE, N_ARCHS, NB201Space


@pytest.fixture(scope="module")
def rows(nb201_csv: Path) -> list[dict[str, str]]:
    with nb201_csv.open() as f:
        return list(csv.DictReader(f))


def test_all_indices_round_trip_against_the_published_table(rows: list[dict[str, str]]) -> None:
    space = NB201Space()
    assert len(rows) == N_ARCHS == 15_625
    for row in rows:
        i = int(row["arch_idx"])
        arch = space.from_index(i)
        assert space.to_str(arch) == row["arch_str"]
        assert space.to_index(space.from_str(row["arch_str"])) == i


def test_degenerate_cells_are_recognised(rows: list[dict[str, str]]) -> None:
    space = NB201Space()
    for row in rows:
        degenerate = space.is_degenerate(space.from_str(row["arch_str"]))
        # the table scores cut-off cells at chance (10 % on CIFAR-10)
        assert degenerate == (float(row["cifar10_acc"]) < 10.5), row["arch_str"]


def test_canonical_key_groups_isomorphic_cells(rows: list[dict[str, str]]) -> None:
    space = NB201Space()
    groups: dict[str, list[float]] = collections.defaultdict(list)
    for row in rows:
        groups[space.canonical_key(space.from_str(row["arch_str"]))].append(
            float(row["cifar10_acc"])
        )
    # isomorphic cells are the same network trained again: their accuracies agree far better
    # than those of arbitrary cells
    within = np.mean([np.std(v) for k, v in groups.items() if len(v) > 1 and k != DEGENERATE])
    overall = np.std([float(r["cifar10_acc"]) for r in rows])
    assert within < 0.1 * overall
    assert len(groups) < N_ARCHS / 2


def test_swapping_unjoined_intermediate_nodes_is_isomorphic() -> None:
    space = NB201Space()
    a = space.from_str(
        "|nor_conv_3x3~0|+|avg_pool_3x3~0|none~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"
    )
    b = space.from_str(
        "|avg_pool_3x3~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
    )
    c = space.from_str(
        "|avg_pool_3x3~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"
    )
    assert space.canonical_key(a) == space.canonical_key(b)
    assert space.canonical_key(a) != space.canonical_key(c)
    assert space.key(a) != space.key(b)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "|nor_conv_3x3~0|",
        "|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|",
        "|none~1|+|none~0|none~1|+|none~0|none~1|none~2|",
    ],
)
def test_bad_arch_strings_fail_clearly(bad: str) -> None:
    with pytest.raises(InvalidArchError, match="arch_str"):
        NB201Space().from_str(bad)


@pytest.mark.parametrize("bad", [-1, N_ARCHS, 1.5, True])
def test_bad_indices_fail_clearly(bad: object) -> None:
    with pytest.raises(InvalidArchError, match="15624"):
        NB201Space().from_index(bad)  # type: ignore[arg-type]


def test_proxy_build_is_a_narrow_shallow_copy_of_the_same_cell() -> None:
    """Zero-cost proxies score `proxy_build`: the same cell ops, 8 channels, one cell per stage,
    the same input and output shapes, a fraction of the parameters."""
    import torch

    space = NB201Space()
    ops = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|"
    arch = space.from_str(ops)
    big, small = space.build(arch), space.proxy_build(arch)
    x = torch.randn(2, *space.default_input_shape)
    assert small(x).shape == big(x).shape
    n_params = [sum(p.numel() for p in net.parameters()) for net in (small, big)]
    assert n_params[0] < n_params[1] / 10
    plain = space.from_str(ops.replace("nor_conv_3x3", "skip_connect"))
    fewer = sum(p.numel() for p in space.proxy_build(plain).parameters())
    assert fewer < n_params[0]  # the cell's ops are the arch's
