"""Rounds that start from given weights (a run's trained supernet): checked by their checksum,
and a spec with them keeps the digest of seeded runs apart."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import nas
from nas.core.files import CheckpointError, sha256_file
from nas.federated import SupernetFamily
from nas.federated.server import _start_weights

from .conftest import small_spec


def _saved(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        weights = nas.get_space("tiny").supernet().state_dict()
    path = tmp_path / "init.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    return path, weights


def test_the_rounds_start_from_the_given_weights(tmp_path: Path) -> None:
    path, weights = _saved(tmp_path)
    family = SupernetFamily(nas.get_space("tiny"))
    seeded = _start_weights(small_spec(), family)
    given = _start_weights(small_spec(init=str(path), init_sha256=sha256_file(path)), family)
    assert all(torch.equal(given[k], weights[k]) for k in weights)
    assert any(
        not torch.equal(given[k], seeded[k]) for k in weights if weights[k].is_floating_point()
    )


def test_changed_weights_are_refused_and_change_the_digest(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path)
    family = SupernetFamily(nas.get_space("tiny"))
    spec = small_spec(init=str(path), init_sha256="0" * 64)
    with pytest.raises(CheckpointError, match="checksum"):
        _start_weights(spec, family)
    assert spec.digest != small_spec().digest
    assert small_spec(init=str(path), init_sha256="0" * 64).digest == spec.digest
    with pytest.raises(ValueError, match="go together"):
        small_spec(init=str(path))
