from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from nas import predictors as P
from tests.nas.search.search_toy import FakeLatency, ToySpace, toy_accuracy


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One-hot codes of 6 five-way choices; the target is additive plus one interaction."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, 5, size=(n, 6))
    x = np.zeros((n, 30))
    x[np.arange(n)[:, None], idx + 5 * np.arange(6)] = 1.0
    w = np.random.default_rng(99).normal(size=30)
    y = 70 + 3 * x @ w + 4 * (idx[:, 0] == idx[:, 1]) + rng.normal(0, 0.3, n)
    return x, y


FACTORIES: dict[str, Callable[[], P.Predictor]] = {
    "ridge": lambda: P.RidgePredictor(alpha=1.0),
    "gbt": lambda: P.GBTPredictor(n_estimators=150, seed=0),
    "gp": lambda: P.GPPredictor(n_restarts=1, seed=0),
    "mlp": lambda: P.MLPPredictor(hidden=(64, 64), epochs=60, seed=0),
    "ensemble": lambda: P.EnsemblePredictor(n_members=3, hidden=(32,), epochs=60, seed=0),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_predictors_rank_a_synthetic_target_and_round_trip(name: str, tmp_path: Path) -> None:
    x, y = _synthetic(400, seed=1)
    model = FACTORIES[name]().fit(x[:200], y[:200])
    m = P.ranking_metrics(y[200:], model.predict(x[200:]))
    assert m.kendall_tau > 0.6, m
    assert m.spearman > 0.75, m
    path = model.save(tmp_path / f"{name}.npz")
    with np.load(path, allow_pickle=False) as data:  # plain arrays + JSON: no pickle needed
        assert "__header__" in data.files
    loaded = P.load_predictor(path)
    np.testing.assert_allclose(loaded.predict(x[200:]), model.predict(x[200:]), rtol=1e-6)
    if isinstance(model, P.UncertainPredictor):
        mean, std = model.predict_with_std(x[200:])
        assert std.shape == mean.shape and np.all(std >= 0) and std.mean() > 0


def test_gp_is_unsure_away_from_data() -> None:
    x, y = _synthetic(300, seed=2)
    near = x[:100]
    gp = P.GPPredictor(seed=0).fit(near, y[:100])
    _, std_seen = gp.predict_with_std(near)
    far = np.zeros((5, 30))  # no active choice at all: unlike every training row
    _, std_far = gp.predict_with_std(far)
    assert std_far.mean() > 3 * std_seen.mean()


def test_compare_predictors_frame() -> None:
    x, y = _synthetic(300, seed=3)
    frame = P.compare_predictors(
        x, y, {"ridge": FACTORIES["ridge"]}, n_train=(50, 100), seeds=(0, 1)
    )
    assert len(frame) == 4
    assert set(frame.columns) >= {"kendall_tau", "spearman", "rmse", "n_train", "fit_s"}


def test_arch_features_and_fit_on_archs() -> None:
    space, lat = ToySpace(), FakeLatency()
    archs = list(space.enumerate())
    feats = P.ArchFeatures(space, costs={"lat": lambda a: lat.predict_many(space, a)}).fit(archs)
    x = feats.transform(archs)
    assert x.shape == (len(archs), len(feats.names)) and feats.groups.count(1) == 1
    assert abs(x[:, -1].mean()) < 1e-9  # the cost column is standardised over the pool
    model = P.fit_on_archs(P.RidgePredictor(), feats, archs[::3], toy_accuracy)
    m = P.ranking_metrics([toy_accuracy(a) for a in archs], model.predict(x))
    assert m.kendall_tau > 0.6


def test_predictor_errors_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(P.NotFittedError, match="fit"):
        P.RidgePredictor().predict(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="rows"):
        P.RidgePredictor().fit(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="Did you mean 'gp'"):
        P.make_predictor("gpp")
    bogus = tmp_path / "x.npz"
    np.savez(bogus, a=np.zeros(2))
    with pytest.raises(ValueError, match="not a saved predictor"):
        P.load_predictor(bogus)


def test_predicted_accuracy_is_an_objective_source() -> None:
    import optuna

    from nas import search

    space, lat = ToySpace(), FakeLatency()
    archs = list(space.enumerate())
    feats = P.ArchFeatures(space).fit(archs)
    model = P.fit_on_archs(P.RidgePredictor(), feats, archs[::4], toy_accuracy)
    predicted = P.PredictedAccuracy(model, feats)
    assert predicted(archs[0]) == pytest.approx(float(predicted.many(archs[:1])[0]))
    study = search.run_search(space, ["accuracy", lat], accuracy=predicted, n_evaluations=12)
    assert search.count_evaluations(study) == 12
    cheap = search.run_search(space, [lat, FakeLatency("pi", 3.0)], n_evaluations=5)  # auto
    assert isinstance(cheap.sampler, optuna.samplers.NSGAIISampler)


def test_gp_kernel_scales_each_group_by_its_own_length_scale() -> None:
    """`kernel` (one product over scaled columns) is the Matérn 5/2 kernel on the sum of the
    groups' squared distances, each over its own squared length scale."""
    from nas.predictors import GPPredictor

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    gp = GPPredictor(groups=[0, 0, 1, 2, 2], n_restarts=0).fit(x, x[:, 0] - x[:, 3])
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(4, 5))
    ls = np.exp(gp.log_lengthscales_)[[0, 0, 1, 2, 2]]
    r = np.sqrt(5.0 * (((a[:, None, :] - b[None, :, :]) / ls) ** 2).sum(-1))
    want = gp.signal_variance * (1.0 + r + r * r / 3.0) * np.exp(-r)
    assert np.allclose(gp.kernel(a, b), want, atol=1e-10)
    mean, sd = gp.predict_with_std(x[:5])
    assert np.allclose(mean, x[:5, 0] - x[:5, 3], atol=0.3) and (sd < 0.5).all()
