"""The hwtrain stage trains on the run's compute device and precision, and a batch that does
not fit names the run config's keys to change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import nas.app.hwtrain_stage
import nas.hwtrain
from nas.app.errors import InputError
from nas.app.hwtrain_stage import stage_hwtrain
from nas.supernet import OutOfMemory, Precision
from tests.nas.app.test_hwtrain_stage import _state


class _Stop(Exception):
    pass


def _with_compute(tmp_path: Path, **compute: Any) -> Any:
    state = _state(tmp_path)
    state.config.compute = type(state.config.compute)(**compute)
    return state


def test_the_stage_hands_the_run_precision_to_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Precision] = []

    def spy(*args: Any, precision: Precision | None = None, **kwargs: Any) -> Any:
        assert precision is not None
        seen.append(precision)
        raise _Stop

    monkeypatch.setattr(nas.hwtrain, "train_hw", spy)
    with pytest.raises(_Stop):
        stage_hwtrain(_with_compute(tmp_path, device="cpu", precision="bf16"), progress=False)
    assert seen[0].name == "bf16" and seen[0].device == torch.device("cpu")


def test_a_batch_that_does_not_fit_names_the_run_config_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_memory(*args: Any, **kwargs: Any) -> Any:
        raise OutOfMemory("a batch of 16 images does not fit", "cuda:0", 16, 0)

    monkeypatch.setattr(nas.app.hwtrain_stage, "train_and_derive", no_memory)
    with pytest.raises(InputError, match=r"hwtrain: .* lower hwtrain.batch_size \(e.g. 8\)"):
        stage_hwtrain(_with_compute(tmp_path, device="cpu"), progress=False)
