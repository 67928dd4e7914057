"""The frontier sampler's free signals: a prior for the initial design, the path encoding, and
an accuracy reference that keeps the fast end of the front when the initial design is good."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nas import search
from nas.core.space import Arch
from nas.search.pareto import hypervolume
from tests.nas.search.search_toy import FakeLatency, ToySpace, toy_accuracy


def _oracle(sign: float, calls: list[int]):  # type: ignore[no-untyped-def]
    def score(archs: Sequence[Arch]) -> np.ndarray:
        calls.append(len(archs))
        return sign * np.array([toy_accuracy(a) for a in archs])

    return score


def _run(n: int, **options: object):  # type: ignore[no-untyped-def]
    return search.run_search(
        ToySpace(),
        ["accuracy", FakeLatency()],
        accuracy=toy_accuracy,
        sampler="frontier",
        n_evaluations=n,
        sampler_options=options,
    )


def _paid_accuracy(study) -> np.ndarray:  # type: ignore[no-untyped-def]
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    return np.array([t.user_attrs["accuracy"] for t in trials if t.user_attrs.get("evaluated")])


def test_a_prior_steers_the_initial_design_from_a_sample_of_each_stratum() -> None:
    good_calls: list[int] = []
    good = _paid_accuracy(_run(10, prior=_oracle(1.0, good_calls), prior_sample=6))
    bad = _paid_accuracy(_run(10, prior=_oracle(-1.0, [])))
    assert len(good) == len(bad) == 10
    assert good.mean() > bad.mean() + 1.0
    assert good_calls and max(good_calls) <= 6  # only a sample of each stratum is scored


def test_a_good_initial_design_keeps_the_fast_end_of_the_front() -> None:
    """An oracle prior makes the initial design's median accuracy high; the reference the
    sampler improves on must not follow it up, or fast archs of fair accuracy never count."""
    space, lat = ToySpace(), FakeLatency()
    archs = list(space.enumerate())
    acc = np.array([toy_accuracy(a) for a in archs])
    ms = lat.predict_many(space, archs)
    ref = {"accuracy": float(np.median(acc)), "latency_ms@fake": float(np.quantile(ms, 0.95))}
    true_hv = hypervolume(np.c_[-acc, ms], [-ref["accuracy"], ref["latency_ms@fake"]])
    study = _run(30, prior=_oracle(1.0, []), prior_top=1)
    assert search.front_hypervolume(study, ref) / true_hv > 0.95
    initial_median = float(np.median(_paid_accuracy(study)[:10]))
    assert initial_median > ref["accuracy"]  # the oracle's initial design is a good one ...
    # ... and the reference the sampler improves on stays below its median
    assert study.sampler.last_fit["reference_acc"] < initial_median


def test_the_path_encoding_finds_the_toy_front() -> None:
    space, lat = ToySpace(), FakeLatency()
    archs = list(space.enumerate())
    acc = np.array([toy_accuracy(a) for a in archs])
    ms = lat.predict_many(space, archs)
    ref = {"accuracy": float(np.median(acc)), "latency_ms@fake": float(ms.max())}
    true_hv = hypervolume(np.c_[-acc, ms], [-ref["accuracy"], ref["latency_ms@fake"]])
    study = _run(25, encoding="onehot+path")
    assert search.front_hypervolume(study, ref) / true_hv > 0.95


def test_the_priors_scoring_and_the_pools_pricing_are_setup_not_a_step() -> None:
    """A step is one batch choice; one-time work (the prior scoring the initial design, the
    fixed pool's pricing) is counted apart in `setup_s`, so `step_s_max` says what a step
    costs at any number of paid archs."""
    import time

    def slow_prior(archs: Sequence[Arch]) -> np.ndarray:
        time.sleep(0.3)
        return np.array([toy_accuracy(a) for a in archs])

    sampler = _run(14, prior=slow_prior).sampler
    assert sampler.setup_s >= 0.3 * 10  # ten strata, one prior call each
    assert sampler.step_cpu_s_max > 0 and 0 < sampler.step_s_max < 0.3 * 10


def test_the_rank_warp_is_the_default_and_spreads_the_front_end() -> None:
    """The GP fits normal scores of the paid accuracies' ranks (the default warp): a long tail
    of broken archs no longer sets its scale, so near-front differences weigh as much as the
    tail's; the order (dominance) is kept."""
    from nas.search.samplers.frontier import _warp

    y = np.array([10.0, 10.5, 90.0, 91.0, 92.0, 93.0])
    w = _warp("rank", y)(y)
    assert np.all(np.diff(w) > 0)  # monotone
    assert w[-1] - w[-2] > 0.2 * (w[2] - w[0])  # 92 -> 93 is no longer 1/80 of 10 -> 90
    assert np.allclose(_warp("none", y)(y), y)
    sampler = _run(12).sampler
    assert sampler.warp == "rank"
