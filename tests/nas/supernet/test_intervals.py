"""Intervals of test accuracy: the bootstrap over source groups, paired differences, seed spread."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nas.supernet import (
    AccuracyInterval,
    accuracy,
    accuracy_interval,
    correct_mask,
    difference_interval,
    resolvable_difference,
    seed_sd,
)
from search_spaces import TinySpace


def _clustered(n_groups: int, copies: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image, right or wrong, where the copies of one source mostly share their fate (as the
    embedded digits' augmented copies do): a source is easy (95 % right) or hard (20 %)."""
    rng = np.random.default_rng(seed)
    easy = rng.uniform(size=n_groups) < 0.7
    p = np.repeat(np.where(easy, 0.95, 0.2), copies)
    groups = np.repeat(np.arange(n_groups) * 7 + 3, copies)  # ids need not be 0..k-1
    return (rng.uniform(size=p.size) < p).astype(np.int8), groups


def test_resampling_sources_is_wider_than_resampling_images_when_copies_agree() -> None:
    correct, groups = _clustered(300, 5, seed=0)
    by_source = accuracy_interval(correct, groups, n_boot=1000, seed=1)
    by_image = accuracy_interval(correct, None, n_boot=1000, seed=1)
    assert by_source.estimate == by_image.estimate == pytest.approx(correct.mean())
    assert by_source.groups == 300 and by_image.groups == by_source.images == 1500
    assert by_source.low <= by_source.estimate <= by_source.high
    # copies that share their fate carry less information than independent images
    assert by_source.half_width > 1.5 * by_image.half_width
    # with independent copies (every image its own fate) the two agree
    rng = np.random.default_rng(2)
    independent = (rng.uniform(size=1500) < correct.mean()).astype(np.int8)
    a = accuracy_interval(independent, groups, n_boot=1000, seed=1).half_width
    b = accuracy_interval(independent, None, n_boot=1000, seed=1).half_width
    assert a == pytest.approx(b, rel=0.2)


def test_a_paired_difference_of_identical_models_is_zero_with_zero_width() -> None:
    correct, groups = _clustered(100, 5, seed=3)
    d = difference_interval(correct, correct.copy(), groups, n_boot=500, seed=0)
    assert (d.estimate, d.low, d.high, d.half_width, d.se) == (0.0, 0.0, 0.0, 0.0, 0.0)


def test_pairing_cancels_what_two_models_share() -> None:
    a, groups = _clustered(200, 5, seed=4)
    b = a.copy()
    flip = np.random.default_rng(5).choice(a.size, 40, replace=False)  # b differs on 40 images
    b[flip] = 1 - b[flip]
    paired = difference_interval(a, b, groups, n_boot=1000, seed=0)
    assert paired.estimate == pytest.approx(a.mean() - b.mean())
    assert paired.low <= paired.estimate <= paired.high
    # far narrower than two independent intervals added
    one = accuracy_interval(a, groups, n_boot=1000, seed=0).half_width
    assert paired.half_width < 0.5 * math.sqrt(2) * one


def test_the_seed_is_honoured() -> None:
    correct, groups = _clustered(100, 5, seed=6)
    first = accuracy_interval(correct, groups, n_boot=300, seed=7)
    assert first == accuracy_interval(correct, groups, n_boot=300, seed=7)
    assert first == accuracy_interval(correct, groups, n_boot=300, seed=np.random.default_rng(7))
    other = accuracy_interval(correct, groups, n_boot=300, seed=8)
    assert (other.low, other.high, other.se) != (first.low, first.high, first.se)
    b = np.roll(correct, 1)
    assert difference_interval(correct, b, groups, n_boot=300, seed=7) == difference_interval(
        correct, b, groups, n_boot=300, seed=7
    )


def test_interval_to_dict_and_level() -> None:
    correct, groups = _clustered(100, 5, seed=9)
    wide = accuracy_interval(correct, groups, level=0.99, n_boot=500, seed=0)
    narrow = accuracy_interval(correct, groups, level=0.5, n_boot=500, seed=0)
    assert narrow.half_width < wide.half_width
    d = wide.to_dict()
    assert d["half_width"] == wide.half_width and d["level"] == 0.99
    assert isinstance(wide, AccuracyInterval)


def test_bad_inputs_say_what_must_hold() -> None:
    with pytest.raises(ValueError, match="same images"):
        difference_interval([1, 0, 1], [1, 0], n_boot=10)
    with pytest.raises(ValueError, match="one id per image"):
        accuracy_interval([1, 0, 1], [0, 0], n_boot=10)
    with pytest.raises(ValueError, match="level"):
        accuracy_interval([1, 0], level=95, n_boot=10)
    with pytest.raises(ValueError, match="n_boot"):
        accuracy_interval([1, 0], n_boot=1)
    with pytest.raises(ValueError, match="1-D"):
        accuracy_interval([], n_boot=10)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_sd([0.9])
    with pytest.raises(ValueError, match=">= 0"):
        resolvable_difference(-1.0, 0.0)


def test_seed_sd_pools_models_and_resolvable_difference_adds_in_quadrature() -> None:
    assert seed_sd([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    # pooled: each model about its own mean (variances 1 and 4)
    assert seed_sd([[1.0, 2.0, 3.0], [10.0, 12.0, 14.0]]) == pytest.approx(math.sqrt(2.5))
    assert resolvable_difference(1.0, 0.0) == 1.0
    z = 1.959963984540054
    assert resolvable_difference(0.0, 1.0) == pytest.approx(z)
    assert resolvable_difference(3.0, 4.0 / z) == pytest.approx(5.0)
    assert resolvable_difference(1.0, 1.0, level=0.9) < resolvable_difference(1.0, 1.0)


def test_correct_mask_agrees_with_accuracy() -> None:
    torch.manual_seed(0)
    model = TinySpace().build(TinySpace().sample(3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(70, 3, 32, 32, generator=g), torch.randint(0, 10, (70,), generator=g)
    model.train()
    mask = correct_mask(model, x, y, batch_size=32)
    assert mask.dtype == bool and mask.shape == (70,)
    assert mask.mean() == accuracy(model, x, y, batch_size=32)
    assert model.training  # the mode is restored
    with pytest.raises(ValueError, match="as many labels"):
        correct_mask(model, x, y[:3])
