"""Accuracy predictors: learn accuracy from (arch, accuracy) pairs, and say how well they rank.

Scikit-learn's shape: the constructor stores settings, `fit(X, y)` returns self, `predict(X)`
returns one value per row. `X` is a float matrix, usually a space's encoding of archs (see
`ArchFeatures`), optionally with free cost features (MACs, latency) beside it. Predictors with
uncertainty (`GPPredictor`, `EnsemblePredictor`) also give `predict_with_std`. Every predictor
saves to one `.npz` file of plain arrays plus a JSON header and loads without pickle
(`load_predictor`).

Side by side, as in the literature they come from: an MLP on one-hot codes (Once-for-All, Cai et
al. 2020: 3 x 400), gradient-boosted trees, ridge regression, a Gaussian process (Matérn 5/2,
hyper-parameters by marginal likelihood), and a deep ensemble (Lakshminarayanan et al. 2017).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import pandas as pd
from scipy import linalg, optimize, stats

from nas.core.protocols import NotFittedError
from nas.core.space import Arch, RngLike, SearchSpace, as_rng

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

#: An accuracy source: any callable from an arch to its accuracy (%, higher is better): a
#: supernet with inherited weights, a table look-up, a user's training run.
AccuracyFn = Callable[[Arch], float]


@runtime_checkable
class Predictor(Protocol):
    """What every accuracy predictor offers."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> Predictor: ...

    def predict(self, X: np.ndarray) -> np.ndarray: ...

    def save(self, path: str | Path) -> Path: ...


@runtime_checkable
class UncertainPredictor(Predictor, Protocol):
    """A predictor that also says how unsure it is (one standard deviation per row)."""

    def predict_with_std(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


# -- checks and helpers ----------------------------------------------------------------------
def _check_xy(X: np.ndarray, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.asarray(X, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"X must be a 2-D matrix (rows = archs), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("X holds NaN or infinite values; encode archs with ArchFeatures")
    if y is None:
        return x, None
    t = np.asarray(y, dtype=np.float64).ravel()
    if t.shape[0] != x.shape[0]:
        raise ValueError(f"X has {x.shape[0]} rows but y has {t.shape[0]} values")
    if t.shape[0] < 2:
        raise ValueError(f"a predictor needs at least 2 (arch, accuracy) pairs, got {t.shape[0]}")
    if not np.isfinite(t).all():
        raise ValueError("y holds NaN or infinite accuracies")
    return x, t


def one_blas_thread() -> Any:
    """Context: BLAS on one thread. The matrices here are small (hundreds of rows), where
    threads cost more than they give, and much more on a shared 2-core box."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        import contextlib

        return contextlib.nullcontext()


def _need_fit(fitted: bool, obj: object) -> None:
    if not fitted:
        raise NotFittedError(f"{type(obj).__name__} is not fitted yet: call fit(X, y) first")


def _save_npz(path: str | Path, kind: str, config: Mapping[str, Any], arrays: dict) -> Path:
    p = Path(path)
    if p.suffix != ".npz":
        p = p.with_suffix(p.suffix + ".npz") if p.suffix else p.with_suffix(".npz")
    p.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"kind": kind, "version": FORMAT_VERSION, "config": dict(config)})
    payload: dict[str, Any] = {k: np.asarray(v) for k, v in arrays.items()}
    payload["__header__"] = np.array(header)
    np.savez(p, **payload)
    return p


def _load_npz(path: str | Path) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    with np.load(Path(path), allow_pickle=False) as data:
        if "__header__" not in data:
            raise ValueError(f"{path} is not a saved predictor (no __header__ entry)")
        header = json.loads(str(data["__header__"]))
        arrays = {k: data[k] for k in data.files if k != "__header__"}
    if header.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: predictor format version {header.get('version')!r}, this code reads "
            f"{FORMAT_VERSION}"
        )
    return str(header["kind"]), dict(header["config"]), arrays


class _Scaler:
    """Standardises targets; predictors learn on z-scores and answer in the target's unit."""

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        self.mean, self.std = mean, std

    @classmethod
    def fit(cls, y: np.ndarray) -> _Scaler:
        std = float(np.std(y))
        return cls(float(np.mean(y)), std if std > 1e-12 else 1.0)


# -- ridge -----------------------------------------------------------------------------------
class RidgePredictor:
    """Ridge regression in closed form (intercept not penalised)."""

    kind: ClassVar[str] = "ridge"

    def __init__(self, alpha: float = 1.0) -> None:
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = alpha
        self.coef_: np.ndarray | None = None
        self.intercept_ = 0.0

    def fit(self, X: np.ndarray, y: np.ndarray) -> RidgePredictor:
        x, t = _check_xy(X, y)
        assert t is not None
        xm, tm = x.mean(axis=0), t.mean()
        xc = x - xm
        a = xc.T @ xc + self.alpha * np.eye(x.shape[1])
        self.coef_ = np.linalg.solve(a, xc.T @ (t - tm))
        self.intercept_ = float(tm - xm @ self.coef_)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        _need_fit(self.coef_ is not None, self)
        assert self.coef_ is not None
        x, _ = _check_xy(X)
        return x @ self.coef_ + self.intercept_

    def save(self, path: str | Path) -> Path:
        _need_fit(self.coef_ is not None, self)
        return _save_npz(
            path,
            self.kind,
            {"alpha": self.alpha, "intercept": self.intercept_},
            {"coef": self.coef_},
        )

    @classmethod
    def _from_saved(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> RidgePredictor:
        p = cls(alpha=float(config["alpha"]))
        p.coef_, p.intercept_ = arrays["coef"], float(config["intercept"])
        return p


# -- gradient-boosted trees ------------------------------------------------------------------
class GBTPredictor:
    """Gradient-boosted regression trees (scikit-learn), stored as plain node arrays.

    After fitting, the trees are copied out of scikit-learn into arrays (children, feature,
    threshold, value), and prediction walks those arrays; so a loaded predictor needs no pickle
    and gives bit-identical answers.
    """

    kind: ClassVar[str] = "gbt"

    def __init__(
        self,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        max_depth: int = 3,
        subsample: float = 0.8,
        seed: int = 0,
    ) -> None:
        self.n_estimators, self.learning_rate = n_estimators, learning_rate
        self.max_depth, self.subsample, self.seed = max_depth, subsample, seed
        self._trees: dict[str, np.ndarray] | None = None
        self._init = 0.0

    def fit(self, X: np.ndarray, y: np.ndarray) -> GBTPredictor:
        from sklearn.ensemble import GradientBoostingRegressor

        x, t = _check_xy(X, y)
        model = GradientBoostingRegressor(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            max_depth=self.max_depth,
            subsample=self.subsample,
            random_state=self.seed,
        ).fit(x, t)
        trees = [est[0].tree_ for est in model.estimators_]
        offsets = np.cumsum([0] + [tr.node_count for tr in trees])
        left = np.concatenate([tr.children_left for tr in trees])
        right = np.concatenate([tr.children_right for tr in trees])
        # child indices become global; leaves stay -1
        for i, tr in enumerate(trees):
            sl = slice(offsets[i], offsets[i + 1])
            left[sl] = np.where(tr.children_left >= 0, tr.children_left + offsets[i], -1)
            right[sl] = np.where(tr.children_right >= 0, tr.children_right + offsets[i], -1)
        self._trees = {
            "left": left.astype(np.int64),
            "right": right.astype(np.int64),
            "feature": np.concatenate([tr.feature for tr in trees]).astype(np.int64),
            "threshold": np.concatenate([tr.threshold for tr in trees]),
            "value": np.concatenate([tr.value.reshape(-1) for tr in trees]) * self.learning_rate,
            "roots": offsets[:-1].astype(np.int64),
        }
        self._init = float(model.init_.predict(x[:1])[0])
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        _need_fit(self._trees is not None, self)
        assert self._trees is not None
        x, _ = _check_xy(X)
        tr = self._trees
        out = np.full(x.shape[0], self._init)
        rows = np.arange(x.shape[0])
        for root in tr["roots"]:
            node = np.full(x.shape[0], root)
            while True:
                inner = tr["left"][node] >= 0
                if not inner.any():
                    break
                f = tr["feature"][node]
                go_left = x[rows, np.maximum(f, 0)] <= tr["threshold"][node]
                nxt = np.where(go_left, tr["left"][node], tr["right"][node])
                node = np.where(inner, nxt, node)
            out += tr["value"][node]
        return out

    def save(self, path: str | Path) -> Path:
        _need_fit(self._trees is not None, self)
        assert self._trees is not None
        config = {
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "max_depth": self.max_depth,
            "subsample": self.subsample,
            "seed": self.seed,
            "init": self._init,
        }
        return _save_npz(path, self.kind, config, dict(self._trees))

    @classmethod
    def _from_saved(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> GBTPredictor:
        init = float(config.pop("init"))
        p = cls(**config)
        p._trees, p._init = dict(arrays), init
        return p


# -- Gaussian process ------------------------------------------------------------------------
class GPPredictor:
    """Gaussian-process regression with a Matérn 5/2 (or RBF) kernel and its uncertainty.

    One length scale per feature group (`groups[j]` is the group of column j; by default one
    group), a signal variance, a noise variance and a constant mean; all fitted by maximising
    the log marginal likelihood (L-BFGS-B with analytic gradients, `n_restarts` extra random
    starts from `seed`; `init_theta`, e.g. a previous fit's `theta_`, is tried first).
    A log-normal prior (std `lengthscale_prior_std`, None for plain maximum likelihood) keeps
    each length scale near the median distance of its group in `X` (the inputs, not the
    targets): without it, a few hundred points often let one group's length scale run to its
    bound, and the GP silently ignores, say, the arch encoding in favour of latency alone.
    `min_noise` floors the noise variance (standardised units). `predict_with_std` gives the
    posterior std of the latent function.
    """

    kind: ClassVar[str] = "gp"
    _LOG_BOUNDS: ClassVar[dict[str, tuple[float, float]]] = {
        "lengthscale": (math.log(0.05), math.log(100.0)),
        "signal": (math.log(1e-2), math.log(20.0)),
        "noise": (math.log(1e-5), math.log(2.0)),
    }

    def __init__(
        self,
        kernel: str = "matern52",
        groups: Sequence[int] | None = None,
        n_restarts: int = 2,
        seed: int = 0,
        init_theta: Sequence[float] | None = None,
        lengthscale_prior_std: float | None = 1.0,
        min_noise: float = 1e-5,
    ) -> None:
        if kernel not in ("matern52", "rbf"):
            raise ValueError(f"kernel must be 'matern52' or 'rbf', got {kernel!r}")
        self.kernel_name, self.n_restarts, self.seed = kernel, n_restarts, seed
        self.groups = None if groups is None else [int(g) for g in groups]
        self.init_theta = None if init_theta is None else [float(v) for v in init_theta]
        self.lengthscale_prior_std = lengthscale_prior_std
        if not 0 < min_noise < 1:
            raise ValueError(
                f"min_noise is a variance in standardised units in (0, 1), got {min_noise}"
            )
        self.min_noise = min_noise
        self._x: np.ndarray | None = None
        self._alpha = np.zeros(0)
        self._chol = np.zeros((0, 0))
        self.log_lengthscales_ = np.zeros(0)
        self.log_signal_ = 0.0
        self.log_noise_ = math.log(1e-2)
        self._scaler = _Scaler()

    # kernel on per-group squared distances
    def _group_index(self, n_features: int) -> np.ndarray:
        g = np.zeros(n_features, dtype=np.int64) if self.groups is None else np.array(self.groups)
        if g.shape[0] != n_features:
            raise ValueError(f"groups has {g.shape[0]} entries but X has {n_features} columns")
        if g.min() < 0:
            raise ValueError("groups must be non-negative integers")
        return g

    def _sqdists(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Squared distances per group: (n_groups, len(a), len(b))."""
        g = self._group_index(a.shape[1])
        out = []
        for k in range(int(g.max()) + 1):
            cols = g == k
            aa, bb = a[:, cols], b[:, cols]
            d = (aa * aa).sum(1)[:, None] + (bb * bb).sum(1)[None, :] - 2.0 * aa @ bb.T
            out.append(np.maximum(d, 0.0))
        return np.stack(out)

    def _k(self, d: np.ndarray, log_ls: np.ndarray, log_sig: float) -> np.ndarray:
        r2 = np.tensordot(np.exp(-2.0 * log_ls), d, axes=1)
        if self.kernel_name == "rbf":
            return np.exp(log_sig) * np.exp(-0.5 * r2)
        r = np.sqrt(5.0 * r2)
        return np.exp(log_sig) * (1.0 + r + r * r / 3.0) * np.exp(-r)

    def _dk(self, d: np.ndarray, log_ls: np.ndarray, log_sig: float) -> list[np.ndarray]:
        """Derivatives of the kernel matrix w.r.t. each log length scale."""
        w = np.exp(-2.0 * log_ls)
        r2 = np.tensordot(w, d, axes=1)
        # d r2 / d log l_k = -2 w_k d_k, so dk / d log l_k = -2 (dk / d r2) w_k d_k = base w_k d_k
        if self.kernel_name == "rbf":
            base = np.exp(log_sig) * np.exp(-0.5 * r2)
        else:
            r = np.sqrt(5.0 * r2)
            base = np.exp(log_sig) * (5.0 / 3.0) * (1.0 + r) * np.exp(-r)
        return [base * (w[k] * d[k]) for k in range(d.shape[0])]

    def _nlml(
        self, theta: np.ndarray, d: np.ndarray, t: np.ndarray, prior_mu: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """Negative log marginal likelihood (plus the length-scale prior) and its gradient."""
        n_g = d.shape[0]
        log_ls, log_sig, log_noise = theta[:n_g], float(theta[n_g]), float(theta[n_g + 1])
        k = self._k(d, log_ls, log_sig)
        n = t.shape[0]
        kn = k + (np.exp(log_noise) + 1e-8) * np.eye(n)
        try:
            c = linalg.cho_factor(kn, lower=True, check_finite=False)
        except linalg.LinAlgError:
            return 1e10, np.zeros_like(theta)
        alpha = linalg.cho_solve(c, t, check_finite=False)
        logdet = 2.0 * np.log(np.diag(c[0])).sum()
        nlml = 0.5 * t @ alpha + 0.5 * logdet + 0.5 * n * math.log(2 * math.pi)
        kinv = linalg.cho_solve(c, np.eye(n), check_finite=False)
        inner = np.outer(alpha, alpha) - kinv
        grads = [0.5 * np.sum(inner * dk) for dk in self._dk(d, log_ls, log_sig)]
        grads.append(0.5 * np.sum(inner * k))  # d/d log signal
        grads.append(0.5 * np.exp(log_noise) * np.trace(inner))  # d/d log noise
        grad = -np.asarray(grads)
        if self.lengthscale_prior_std is not None:
            dev = (log_ls - prior_mu) / self.lengthscale_prior_std
            nlml += 0.5 * float(dev @ dev)
            grad[:n_g] += dev / self.lengthscale_prior_std
        return float(nlml), grad

    def fit(self, X: np.ndarray, y: np.ndarray) -> GPPredictor:
        with one_blas_thread():
            return self._fit(X, y)

    def _fit(self, X: np.ndarray, y: np.ndarray) -> GPPredictor:
        x, t = _check_xy(X, y)
        assert t is not None
        self._scaler = _Scaler.fit(t)
        z = (t - self._scaler.mean) / self._scaler.std
        d = self._sqdists(x, x)
        n_g = d.shape[0]
        b = self._LOG_BOUNDS
        noise_bounds = (math.log(self.min_noise), b["noise"][1])
        bounds = [b["lengthscale"]] * n_g + [b["signal"], noise_bounds]
        # start: length scale at the median distance of each group, unit signal, 10 % noise
        med = [
            0.5 * math.log(max(float(np.median(dk[dk > 0])) if (dk > 0).any() else 1.0, 1e-6))
            for dk in d
        ]
        starts = [np.array([*med, 0.0, math.log(0.1)])]
        if self.init_theta is not None and len(self.init_theta) == n_g + 2:
            starts = [np.array(self.init_theta)]
        rng = np.random.default_rng(self.seed)
        for _ in range(self.n_restarts):
            starts.append(np.array([rng.uniform(lo, hi) for lo, hi in bounds]))
        best: tuple[float, np.ndarray] | None = None
        for s in starts:
            s = np.clip(s, [lo for lo, _ in bounds], [hi for _, hi in bounds])
            res = optimize.minimize(
                self._nlml,
                s,
                args=(d, z, np.array(med)),
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"maxiter": 200},
            )
            if best is None or res.fun < best[0]:
                best = (float(res.fun), res.x)
        assert best is not None
        theta = best[1]
        self.log_lengthscales_ = theta[:n_g]
        self.log_signal_, self.log_noise_ = float(theta[n_g]), float(theta[n_g + 1])
        self._condition(x, z)
        return self

    def _condition(self, x: np.ndarray, z: np.ndarray) -> None:
        """Cache the Cholesky factor and weights for fixed hyper-parameters."""
        k = self._k(self._sqdists(x, x), self.log_lengthscales_, self.log_signal_)
        kn = k + (math.exp(self.log_noise_) + 1e-8) * np.eye(len(x))
        self._chol = linalg.cholesky(kn, lower=True)
        self._alpha = linalg.cho_solve((self._chol, True), z)
        self._x, self._z = x, z

    def kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Prior covariance (standardised units) between rows of `a` and rows of `b`."""
        return self._k(self._sqdists(a, b), self.log_lengthscales_, self.log_signal_)

    def posterior(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Latent posterior mean (in target units) and `V = L^-1 k(X_train, X)`, for callers
        that update the posterior covariance themselves (batch selection)."""
        _need_fit(self._x is not None, self)
        assert self._x is not None
        x, _ = _check_xy(X)
        with one_blas_thread():
            ks = self.kernel(self._x, x)  # (n_train, n)
            mean = ks.T @ self._alpha
            v = linalg.solve_triangular(self._chol, ks, lower=True, check_finite=False)
        return self._scaler.mean + self._scaler.std * mean, v

    @property
    def theta_(self) -> list[float]:
        """Fitted log hyper-parameters (length scales, signal, noise): a warm start."""
        return [*map(float, self.log_lengthscales_), self.log_signal_, self.log_noise_]

    @property
    def target_std(self) -> float:
        """The scale that converts standardised (kernel) units into target units."""
        return self._scaler.std

    @property
    def signal_variance(self) -> float:
        return math.exp(self.log_signal_)

    def predict_with_std(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, v = self.posterior(X)
        var = np.maximum(self.signal_variance - (v * v).sum(0), 1e-12)
        return mean, np.sqrt(var) * self._scaler.std

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_with_std(X)[0]

    def save(self, path: str | Path) -> Path:
        _need_fit(self._x is not None, self)
        config = {
            "kernel": self.kernel_name,
            "groups": self.groups,
            "n_restarts": self.n_restarts,
            "seed": self.seed,
            "lengthscale_prior_std": self.lengthscale_prior_std,
            "min_noise": self.min_noise,
            "log_signal": self.log_signal_,
            "log_noise": self.log_noise_,
            "y_mean": self._scaler.mean,
            "y_std": self._scaler.std,
        }
        return _save_npz(
            path,
            self.kind,
            config,
            {"x": self._x, "z": self._z, "log_lengthscales": self.log_lengthscales_},
        )

    @classmethod
    def _from_saved(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> GPPredictor:
        p = cls(
            config["kernel"],
            config["groups"],
            config["n_restarts"],
            config["seed"],
            lengthscale_prior_std=config.get("lengthscale_prior_std"),
            min_noise=float(config.get("min_noise", 1e-5)),
        )
        p.log_signal_, p.log_noise_ = float(config["log_signal"]), float(config["log_noise"])
        p.log_lengthscales_ = arrays["log_lengthscales"]
        p._scaler = _Scaler(float(config["y_mean"]), float(config["y_std"]))
        p._condition(arrays["x"], arrays["z"])
        return p


# -- MLPs (torch) ----------------------------------------------------------------------------
def _train_mlp(
    x: np.ndarray,
    z: np.ndarray,
    hidden: Sequence[int],
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
) -> dict[str, np.ndarray]:
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    torch_rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # layer init; restored below so callers' torch RNG is untouched
    try:
        layers: list[nn.Module] = []
        width = x.shape[1]
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        net = nn.Sequential(*layers)
    finally:
        torch.random.set_rng_state(torch_rng_state)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small net trains several times faster on one thread
    try:
        return _fit_net(net, x, z, epochs, lr, weight_decay, batch_size, gen)
    finally:
        torch.set_num_threads(threads)


def _fit_net(
    net: Any,
    x: np.ndarray,
    z: np.ndarray,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    gen: Any,
) -> dict[str, np.ndarray]:
    import torch
    from torch import nn

    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    xt = torch.as_tensor(x, dtype=torch.float32)  # N x F
    zt = torch.as_tensor(z, dtype=torch.float32)  # N
    n = len(xt)
    bs = min(batch_size, n)
    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, bs):
                idx = perm[i : i + bs]
                loss = nn.functional.mse_loss(net(xt[idx]).squeeze(1), zt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def _mlp_forward(x: np.ndarray, weights: Mapping[str, np.ndarray], n_layers: int) -> np.ndarray:
    h = x
    for i in range(n_layers):
        h = h @ weights[f"{2 * i}.weight"].T + weights[f"{2 * i}.bias"]
        if i < n_layers - 1:
            h = np.maximum(h, 0.0)
    return h[:, 0]


class MLPPredictor:
    """A multi-layer perceptron on (one-hot) arch codes, as Once-for-All's accuracy predictor.

    Trained with AdamW and a cosine schedule on standardised targets; inference is numpy, so a
    loaded predictor does not need torch at all.
    """

    kind: ClassVar[str] = "mlp"

    def __init__(
        self,
        hidden: Sequence[int] = (400, 400, 400),
        epochs: int = 200,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        self.hidden, self.epochs, self.lr = tuple(int(h) for h in hidden), epochs, lr
        self.weight_decay, self.batch_size, self.seed = weight_decay, batch_size, seed
        self._weights: dict[str, np.ndarray] | None = None
        self._scaler = _Scaler()

    def fit(self, X: np.ndarray, y: np.ndarray) -> MLPPredictor:
        x, t = _check_xy(X, y)
        assert t is not None
        self._scaler = _Scaler.fit(t)
        z = (t - self._scaler.mean) / self._scaler.std
        self._weights = _train_mlp(
            x, z, self.hidden, self.epochs, self.lr, self.weight_decay, self.batch_size, self.seed
        )
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        _need_fit(self._weights is not None, self)
        assert self._weights is not None
        x, _ = _check_xy(X)
        z = _mlp_forward(x, self._weights, len(self.hidden) + 1)
        return self._scaler.mean + self._scaler.std * z

    def _config(self) -> dict[str, Any]:
        return {
            "hidden": list(self.hidden),
            "epochs": self.epochs,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }

    def save(self, path: str | Path) -> Path:
        _need_fit(self._weights is not None, self)
        assert self._weights is not None
        config = {**self._config(), "y_mean": self._scaler.mean, "y_std": self._scaler.std}
        return _save_npz(path, self.kind, config, self._weights)

    @classmethod
    def _from_saved(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> MLPPredictor:
        scaler = _Scaler(float(config.pop("y_mean")), float(config.pop("y_std")))
        p = cls(**config)
        p._weights, p._scaler = dict(arrays), scaler
        return p


class EnsemblePredictor:
    """A deep ensemble: `n_members` MLPs from different seeds (and bootstrap resamples);
    the spread of their answers is the uncertainty."""

    kind: ClassVar[str] = "ensemble"

    def __init__(
        self,
        n_members: int = 5,
        hidden: Sequence[int] = (128, 128),
        epochs: int = 200,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        bootstrap: bool = True,
        seed: int = 0,
    ) -> None:
        if n_members < 2:
            raise ValueError(f"an ensemble needs n_members >= 2, got {n_members}")
        self.n_members, self.bootstrap, self.seed = n_members, bootstrap, seed
        self.member_config: dict[str, Any] = {
            "hidden": tuple(int(h) for h in hidden),
            "epochs": epochs,
            "lr": lr,
            "weight_decay": weight_decay,
            "batch_size": batch_size,
        }
        self.members_: list[MLPPredictor] = []

    def fit(self, X: np.ndarray, y: np.ndarray) -> EnsemblePredictor:
        x, t = _check_xy(X, y)
        assert t is not None
        rng = np.random.default_rng(self.seed)
        self.members_ = []
        for m in range(self.n_members):
            idx = rng.integers(0, len(t), len(t)) if self.bootstrap else np.arange(len(t))
            member = MLPPredictor(**self.member_config, seed=self.seed * 1000 + m)
            self.members_.append(member.fit(x[idx], t[idx]))
        return self

    def predict_with_std(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _need_fit(bool(self.members_), self)
        preds = np.stack([m.predict(X) for m in self.members_])
        return preds.mean(0), preds.std(0)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_with_std(X)[0]

    def save(self, path: str | Path) -> Path:
        _need_fit(bool(self.members_), self)
        arrays: dict[str, np.ndarray] = {}
        scalers = []
        for i, m in enumerate(self.members_):
            assert m._weights is not None
            arrays.update({f"m{i}/{k}": v for k, v in m._weights.items()})
            scalers.append([m._scaler.mean, m._scaler.std])
        config = {
            "n_members": self.n_members,
            "bootstrap": self.bootstrap,
            "seed": self.seed,
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in self.member_config.items()},
            "scalers": scalers,
        }
        return _save_npz(path, self.kind, config, arrays)

    @classmethod
    def _from_saved(
        cls, config: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> EnsemblePredictor:
        scalers = config.pop("scalers")
        p = cls(**config)
        for i, (mean, std) in enumerate(scalers):
            m = MLPPredictor(**p.member_config, seed=p.seed * 1000 + i)
            prefix = f"m{i}/"
            m._weights = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            m._scaler = _Scaler(float(mean), float(std))
            p.members_.append(m)
        return p


PREDICTORS: dict[str, Any] = {
    c.kind: c for c in (RidgePredictor, GBTPredictor, GPPredictor, MLPPredictor, EnsemblePredictor)
}


def make_predictor(name: str, **kwargs: Any) -> Predictor:
    """A predictor by kind name (`ridge`, `gbt`, `gp`, `mlp`, `ensemble`)."""
    if name not in PREDICTORS:
        import difflib

        close = difflib.get_close_matches(name, list(PREDICTORS), n=2, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown predictor {name!r}.{hint} Valid: {', '.join(PREDICTORS)}")
    return PREDICTORS[name](**kwargs)


def load_predictor(path: str | Path) -> Predictor:
    """Load any predictor saved with `.save(path)` (plain arrays and JSON, no pickle)."""
    kind, config, arrays = _load_npz(path)
    if kind not in PREDICTORS:
        raise ValueError(f"{path}: unknown predictor kind {kind!r}; valid: {list(PREDICTORS)}")
    return PREDICTORS[kind]._from_saved(config, arrays)


# -- features --------------------------------------------------------------------------------
class ArchFeatures:
    """Turns archs into predictor inputs: the space's encoding, plus free cost features.

    `costs` maps a feature name to a function of a list of archs (MACs, a latency model's
    `predict_many`, ...). Cost features are log-transformed (they span orders of magnitude) and
    standardised with statistics taken from the archs passed to `fit` (a pool of candidates,
    not accuracies), so they are free to compute. `groups` labels columns for `GPPredictor`:
    group 0 is the encoding, group 1 the cost features.
    """

    def __init__(
        self,
        space: SearchSpace,
        encoding: str = "onehot",
        costs: Mapping[str, Callable[[Sequence[Arch]], np.ndarray]] | None = None,
    ) -> None:
        self.space, self.encoding = space, encoding
        self.costs = dict(costs or {})
        self._mean = np.zeros(len(self.costs))
        self._std = np.ones(len(self.costs))

    @property
    def names(self) -> list[str]:
        return self.space.feature_names(self.encoding) + [f"log_{c}" for c in self.costs]

    @property
    def groups(self) -> list[int]:
        return [0] * len(self.space.feature_names(self.encoding)) + [1] * len(self.costs)

    def _raw_costs(self, archs: Sequence[Arch], costs: np.ndarray | None) -> np.ndarray:
        if costs is None:
            cols = [np.asarray(fn(archs), dtype=np.float64) for fn in self.costs.values()]
            costs = np.stack(cols, axis=1) if cols else np.zeros((len(archs), 0))
        return np.log(np.maximum(np.asarray(costs, dtype=np.float64), 1e-12))

    def fit(self, archs: Sequence[Arch], costs: np.ndarray | None = None) -> ArchFeatures:
        """Take standardisation statistics of the cost features from `archs` (no accuracy)."""
        raw = self._raw_costs(archs, costs)
        if raw.shape[1]:
            self._mean = raw.mean(0)
            std = raw.std(0)
            self._std = np.where(std > 1e-12, std, 1.0)
        return self

    def transform(self, archs: Sequence[Arch], costs: np.ndarray | None = None) -> np.ndarray:
        """Feature matrix (len(archs) x len(names)); `costs` (len(archs) x len(self.costs)) may
        be passed when already computed."""
        enc = self.space.encode_many(list(archs), self.encoding).astype(np.float64)
        raw = self._raw_costs(archs, costs)
        return np.concatenate([enc, (raw - self._mean) / self._std], axis=1)


# -- how well a predictor ranks --------------------------------------------------------------
@dataclass(frozen=True)
class RankingMetrics:
    """Rank agreement and error of predictions on held-out archs."""

    kendall_tau: float
    spearman: float
    rmse: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def ranking_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> RankingMetrics:
    """Kendall tau (tau-b), Spearman rho and RMSE of `y_pred` against `y_true`."""
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} values but y_pred has {p.size}")
    if t.size < 2:
        raise ValueError(f"ranking needs at least 2 held-out archs, got {t.size}")
    tau = stats.kendalltau(t, p).statistic
    rho = stats.spearmanr(t, p).statistic
    return RankingMetrics(
        kendall_tau=float(np.nan_to_num(tau)),
        spearman=float(np.nan_to_num(rho)),
        rmse=float(np.sqrt(np.mean((t - p) ** 2))),
        n=int(t.size),
    )


def compare_predictors(
    X: np.ndarray,
    y: np.ndarray,
    predictors: Mapping[str, Callable[[], Predictor]],
    n_train: Sequence[int] = (100, 300),
    n_test: int | None = 2000,
    seeds: Sequence[int] = (0,),
) -> pd.DataFrame:
    """Fit each predictor on `n` random rows and score it on other held-out rows.

    `predictors` maps a name to a factory (a fresh, unfitted predictor per fit). Returns one
    row per (predictor, n_train, seed) with Kendall tau, Spearman, RMSE and the fit time.
    """
    import time

    x, t = _check_xy(X, y)
    assert t is not None
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(t))
        for n in n_train:
            if n >= len(t):
                raise ValueError(f"n_train={n} leaves no held-out rows of {len(t)}")
            tr, te = perm[:n], perm[n:]
            if n_test is not None:
                te = te[:n_test]
            for name, factory in predictors.items():
                t0 = time.perf_counter()
                model = factory().fit(x[tr], t[tr])
                fit_s = time.perf_counter() - t0
                m = ranking_metrics(t[te], model.predict(x[te]))
                rows.append(
                    {"predictor": name, "n_train": n, "seed": seed, **m.as_dict(), "fit_s": fit_s}
                )
    return pd.DataFrame(rows)


class PredictedAccuracy:
    """A fitted predictor as an accuracy source (`arch -> accuracy`), e.g. the "predicted
    accuracy" objective of a study, or a cheap stand-in for a supernet."""

    def __init__(self, predictor: Predictor, features: ArchFeatures) -> None:
        self.predictor, self.features = predictor, features

    def __call__(self, arch: Arch) -> float:
        return float(self.predictor.predict(self.features.transform([arch]))[0])

    def many(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.asarray(self.predictor.predict(self.features.transform(list(archs))))


def fit_on_archs(
    predictor: Predictor,
    features: ArchFeatures,
    archs: Sequence[Arch],
    accuracy: Sequence[float] | AccuracyFn,
) -> Predictor:
    """Fit `predictor` on archs and their accuracies (a list, or a callable evaluated here)."""
    acc = [accuracy(a) for a in archs] if callable(accuracy) else list(accuracy)
    return predictor.fit(features.transform(archs), np.asarray(acc, dtype=np.float64))


def sample_archs(space: SearchSpace, n: int, rng: RngLike = None) -> list[Arch]:
    """`n` archs with distinct canonical keys (fewer if the space has fewer)."""
    g = as_rng(rng)
    seen: set[str] = set()
    out: list[Arch] = []
    for _ in range(50 * n):
        a = space.sample(g)
        k = space.canonical_key(a)
        if k not in seen:
            seen.add(k)
            out.append(a)
            if len(out) == n:
                break
    return out
