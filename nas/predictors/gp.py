"""A Gaussian-process accuracy predictor (Matérn 5/2 or RBF kernel, hyper-parameters by
marginal likelihood) with its uncertainty."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from scipy import linalg, optimize

from nas.predictors.base import _check_xy, _need_fit, _save_npz, _Scaler, one_blas_thread

__all__ = ["GPPredictor"]


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
        return self._k_r2(np.tensordot(np.exp(-2.0 * log_ls), d, axes=1), log_sig)

    def _k_r2(self, r2: np.ndarray, log_sig: float) -> np.ndarray:
        """The kernel on scaled squared distances r2 = sum_k d_k / l_k^2."""
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
        kinv = _chol_inverse(c[0])
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
        # columns scaled by their group's length scale give r2 in one product, with no
        # (groups x len(a) x len(b)) block: against a pool of thousands that block is most of
        # a search step's time and memory traffic
        g = self._group_index(a.shape[1])
        scale = np.exp(-self.log_lengthscales_)[g] if len(g) else np.ones(0)
        sa, sb = a * scale, b * scale
        r2 = (sa * sa).sum(1)[:, None] + (sb * sb).sum(1)[None, :] - 2.0 * sa @ sb.T
        return self._k_r2(np.maximum(r2, 0.0), self.log_signal_)

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


def _chol_inverse(lower: np.ndarray) -> np.ndarray:
    """The inverse of L L^T from its lower Cholesky factor (LAPACK potri: about a third of
    the work of solving against the identity)."""
    inv, info = linalg.lapack.dpotri(lower, lower=1)
    if info != 0:
        raise linalg.LinAlgError(f"potri failed (info {info})")
    return np.tril(inv) + np.tril(inv, -1).T
