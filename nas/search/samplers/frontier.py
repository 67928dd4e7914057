"""Our hardware-aware search strategy: predictor-guided expected hypervolume improvement over
candidates whose cheap objectives are already known.

Latency, MACs and memory are free for every candidate; accuracy is paid. So the strategy prices
a whole pool of candidates (every arch of a small space, one representative per isomorphism
class; or random archs plus mutants of the found front in a large one), fits a Gaussian process
(or any predictor with uncertainty) on the accuracies paid so far, using the arch encoding *and*
the free cost features, and pays next for the candidates with the largest expected hypervolume
improvement (EHVI) of the accuracy/cost front, which is exact here because only accuracy is
uncertain (`nas.search.pareto.expected_hvi`). Batches are chosen greedily with the "Kriging believer"
(a chosen candidate joins the front at its predicted accuracy, and the GP's posterior variance
is updated in closed form), so one refit serves several evaluations. Multi-objective Bayesian
optimisation in the spirit of Emmerich et al. (EHVI, 2006) and Daulton et al. (qEHVI, 2020).

Packaged as an Optuna sampler: it chooses a whole arch in `before_trial` and answers each
`suggest_*` from it, so it runs in `study.optimize`, next to other workers, and resumes from
storage (its state is the study's trials).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from nas.core.space import Arch
from nas.predictors import GPPredictor, Predictor, one_blas_thread
from nas.search.objectives import ACCURACY, SearchProblem
from nas.search.pareto import expected_hvi, pareto_mask
from nas.search.samplers._frontier_pool import Candidates, Pool

log = logging.getLogger(__name__)

__all__ = ["FrontierSampler"]


class FrontierSampler(BaseSampler):
    """Predictor-guided EHVI over the cheap-objective front (see the module docstring).

    Args:
        problem: the search problem; accuracy must be among its objectives.
        seed: seeds the initial design, the pool and the predictor.
        n_initial: archs paid for before the first fit, spread over the range of the first
            cheap objective (stratified), so the predictor sees fast and slow archs alike.
        batch_size: most evaluations chosen per predictor fit ...
        batch_divisor: ... and at most (paid so far) / batch_divisor, so early batches are small.
        predictor: "gp" (default) or a factory returning a fresh predictor that has
            `predict_with_std`.
        features: extra free cost features for the predictor, name -> function of a list of
            archs (e.g. other devices' latency); every cheap metric the problem uses is a
            feature already.
        reference: reference point per objective (metric units and directions). Defaults:
            a budget's bound where an objective has one (`latency_ms@d <= 20`,
            `accuracy >= 70`); else the worst value in the pool, and for accuracy the median
            accuracy of the first `n_initial` paid archs (the initial design, a stratified
            random sample of the pool: improving on the typical arch).
        candidates: an explicit pool (e.g. the archs a table covers).
        pool_limit: spaces with at most this many genotypes are enumerated into the pool.
        pool_size: otherwise, the size of the drawn candidate pool: random archs at first.
        pool_refresh: share of the drawn pool replaced before each batch, half by random archs,
            half by mutants and crossovers of the found front; the rest is kept from earlier
            batches. Pricing candidates is most of the sampler's cost in a large space, so
            few are new per batch, and every arch is priced once (cheap metrics, canonical key
            and features are cached by arch key).
        one_per_class: keep, per canonical key, only the members not dominated in the cheap
            objectives (isomorphic archs share an accuracy: paying twice learns nothing).
        encoding: the predictor's arch encoding: "onehot", "path" or "onehot+path"
            (`nas.predictors.ArchFeatures`), or "auto": "onehot+path" for a cell space (one
            that names its `live_edges`; on NAS-Bench-201, 10 seeds, the paths move the HV ratio
            at 300 evaluations from 0.954 to 0.977 on cifar10 x Pixel 3 and from 0.969 to 0.967
            on cifar100 x Raspberry Pi 4, the worst seed from 0.884 to 0.896, but the mean at
            100 on cifar100 from 0.840 to 0.797), "onehot" for a chain space (not measured).
        prior: a free score of archs, higher is better (e.g. a zero-cost proxy, or a
            supernet's inherited accuracy), that steers the initial design: in each stratum of
            the first cheap objective, one of the `prior_top` best-scored of `prior_sample`
            random candidates is paid for, not a random one (scoring a sample keeps the prior's
            cost to n_initial x prior_sample archs). As a predictor feature it goes in
            `features`.
        warp: a monotone map of the paid accuracies for the GP and the hypervolume: "rank"
            (normal scores of the ranks: a tail of broken archs no longer sets the GP's scale;
            NB201 @100 0.894 -> 0.958, docs/benchmarks.md), "yeo-johnson" or "none".
    """

    def __init__(
        self,
        problem: SearchProblem,
        seed: int | None = 0,
        n_initial: int = 10,
        batch_size: int = 10,
        batch_divisor: int = 5,
        predictor: str | Callable[[], Predictor] = "gp",
        features: Mapping[str, Callable[[Sequence[Arch]], np.ndarray]] | None = None,
        reference: Mapping[str, float] | None = None,
        candidates: Sequence[Arch] | None = None,
        pool_limit: int = 200_000,
        pool_size: int = 1000,
        pool_refresh: float = 0.25,
        one_per_class: bool = True,
        warp: str = "rank",
        min_noise: float = 1e-5,
        encoding: str = "auto",
        prior: Callable[[Sequence[Arch]], np.ndarray] | None = None,
        prior_top: int = 3,
        prior_sample: int = 16,
    ) -> None:
        if ACCURACY not in problem.objectives:
            raise ValueError(
                "the frontier sampler spends accuracy evaluations carefully, so 'accuracy' must "
                f"be an objective; got objectives {problem.objectives} (use 'nsga2' for cheap "
                "objectives only)"
            )
        if n_initial < 2 or batch_size < 1 or batch_divisor < 1:
            raise ValueError(
                f"need n_initial >= 2, batch_size >= 1, batch_divisor >= 1; got {n_initial}, "
                f"{batch_size}, {batch_divisor}"
            )
        self.problem = problem
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.n_initial, self.batch_size, self.batch_divisor = n_initial, batch_size, batch_divisor
        self.predictor = predictor
        self.reference = dict(reference or {})
        for name in self.reference:
            if name not in problem.objectives:
                raise ValueError(
                    f"reference names {name!r}, not an objective; objectives: {problem.objectives}"
                )
        if not 0 < pool_refresh <= 1:
            raise ValueError(f"pool_refresh is a share in (0, 1], got {pool_refresh}")
        self._candidates = Candidates(
            problem,
            candidates,
            pool_limit,
            pool_size,
            pool_refresh,
            one_per_class,
            dict(features or {}),
            _resolve_encoding(problem, encoding),
        )
        self.prior, self.prior_top = prior, max(1, prior_top)
        self.prior_sample = max(self.prior_top, prior_sample)
        self.warp = warp
        self.min_noise = min_noise
        self._fallback = RandomSampler(seed=seed)
        self._pending: dict[int, Arch] = {}
        self._queue: list[str] = []  # arch keys chosen but not yet asked for
        self.cheap_names = problem.cheap_used
        self.last_fit: dict[str, float] = {}
        # the slowest batch choice so far, wall and CPU seconds of this process (CPU time does
        # not grow with a shared machine's load); the one-time pricing of a fixed pool is not a
        # step: `setup_s` holds it
        self.step_s_max = 0.0
        self.step_cpu_s_max = 0.0
        self.setup_s = 0.0
        self._prior_s = [0.0, 0.0]  # wall, CPU seconds the prior took to score the design
        self._theta: list[float] | None = None  # last GP fit, the next fit's warm start
        self._paid_cache: dict[int, tuple[str, Arch, float]] = {}  # trial number -> paid arch

    # -- Optuna's sampler interface ----------------------------------------------------------
    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.system_attrs.get("fixed_params"):
            return  # an enqueued trial: its arch is given
        arch = self._next(study)
        if arch is not None:
            self._pending[trial._trial_id] = arch

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        arch = self._pending.get(trial._trial_id)
        if arch is not None and param_name in arch:
            return arch[param_name]
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._pending.pop(trial._trial_id, None)

    def reseed_rng(self) -> None:
        self.rng = np.random.default_rng()
        self._fallback.reseed_rng()

    @property
    def _static_pool(self) -> bool:
        """Whether the pool is fixed (given candidates or an enumerated space), not drawn."""
        return self._candidates.static

    # -- choosing ----------------------------------------------------------------------------
    def _study_state(
        self, study: optuna.Study
    ) -> tuple[dict[str, tuple[Arch, float]], set[str], list[Arch]]:
        """Paid archs by canonical key, canonical keys in flight, and in-flight archs."""
        space = self.problem.space
        paid: dict[str, tuple[Arch, float]] = {}
        busy: set[str] = set()
        busy_archs: list[Arch] = []
        n_dims = len(space.keys)
        for t in study.get_trials(deepcopy=False):
            cached = self._paid_cache.get(t.number)
            if cached is not None:
                paid.setdefault(cached[0], (cached[1], cached[2]))
                continue
            ck = t.user_attrs.get("canonical_key")
            if t.user_attrs.get("evaluated") and "accuracy" in t.user_attrs and ck is not None:
                if len(t.params) == n_dims:
                    arch = space.validate(t.params)
                    acc = float(t.user_attrs["accuracy"])
                    self._paid_cache[t.number] = (str(ck), arch, acc)
                    paid.setdefault(str(ck), (arch, acc))
            elif t.state in (TrialState.RUNNING, TrialState.WAITING):
                params = t.params or t.system_attrs.get("fixed_params", {})
                flying = self._pending.get(t._trial_id)
                if flying is None and len(params) == n_dims:
                    flying = space.validate(params)
                if flying is not None:
                    busy.add(space.canonical_key(flying))
                    busy_archs.append(flying)
        return paid, busy, busy_archs

    def _next(self, study: optuna.Study, fresh_batch: bool = False) -> Arch | None:
        space = self.problem.space
        paid, busy, _ = self._study_state(study)
        while self._queue:
            key = self._queue.pop(0)
            pool = self._candidates.pool
            if pool is None or key not in pool.index:
                continue
            i = pool.index[key]
            if pool.canon[i] not in paid and pool.canon[i] not in busy:
                return space.validate(pool.archs[i])
        if fresh_batch:  # a batch chosen just now was taken meanwhile: give up this once
            return None
        t0, c0, (s0, sc0) = time.perf_counter(), time.process_time(), self._setup_so_far()
        with one_blas_thread():
            self._queue = self._choose_batch(study)
        s1, sc1 = self._setup_so_far()
        self.setup_s = s1
        wall = time.perf_counter() - t0 - (s1 - s0)
        cpu = time.process_time() - c0 - (sc1 - sc0)
        self.step_s_max = max(self.step_s_max, wall)
        self.step_cpu_s_max = max(self.step_cpu_s_max, cpu)
        if not self._queue:
            log.info("frontier: no unpaid feasible candidate left; sampling at random")
            return None
        return self._next(study, fresh_batch=True)

    def _setup_so_far(self) -> tuple[float, float]:
        """Wall and CPU seconds of one-time work: the fixed pool's pricing, the prior's scores."""
        c = self._candidates
        return c.setup_s + self._prior_s[0], c.setup_cpu_s + self._prior_s[1]

    def _choose_batch(self, study: optuna.Study) -> list[str]:
        paid, busy, busy_archs = self._study_state(study)
        paid_archs = [a for a, _ in paid.values()]
        y = np.array([acc for _, acc in paid.values()])
        pool = self._candidates.get(self._found_front(paid_archs, y), self.rng)
        avail = pool.feasible & np.array(
            [c not in paid and c not in busy for c in pool.canon], dtype=bool
        )
        if not avail.any():
            return []
        if len(paid) < self.n_initial:
            return self._initial_design(pool, avail, self.n_initial - len(paid) - len(busy))
        return self._ehvi_batch(pool, avail, paid_archs, y, busy_archs)

    def _found_front(self, archs: list[Arch], y: np.ndarray) -> list[Arch]:
        if not archs:
            return []
        objs = [self.cheap_names.index(n) for n in self.problem.cheap_objectives]
        cheap = self._candidates.side_pool(archs).cheap[:, objs]
        signs = np.array([self.problem.metrics[n].sign for n in self.problem.cheap_objectives])
        mask = pareto_mask(np.column_stack([cheap * signs, -y]))
        return [a for a, m in zip(archs, mask, strict=True) if m]

    def _initial_design(self, pool: Pool, avail: np.ndarray, n: int) -> list[str]:
        idx = np.flatnonzero(avail)
        n = max(1, min(n, len(idx)))
        if not self.problem.cheap_objectives:
            chosen = self.rng.choice(idx, size=n, replace=False)
            return [pool.keys[i] for i in chosen]
        j = self.cheap_names.index(self.problem.cheap_objectives[0])
        order = idx[np.argsort(pool.cheap[idx, j], kind="stable")]
        strata = [b for b in np.array_split(order, n) if len(b)]
        if self.prior is not None:  # the best-scored few of a sample of each stratum
            strata = [self._best_scored(pool, b) for b in strata]
        return [pool.keys[int(self.rng.choice(b))] for b in strata]

    def _best_scored(self, pool: Pool, stratum: np.ndarray) -> np.ndarray:
        assert self.prior is not None
        n = min(self.prior_sample, len(stratum))
        sample = self.rng.choice(stratum, size=n, replace=False)
        t0, c0 = time.perf_counter(), time.process_time()
        score = np.asarray(self.prior([pool.archs[i] for i in sample]), dtype=np.float64)
        self._prior_s[0] += time.perf_counter() - t0  # a one-time cost, as the pool's pricing
        self._prior_s[1] += time.process_time() - c0
        return sample[np.argsort(-score, kind="stable")[: self.prior_top]]

    def _fit(self, x: np.ndarray, y: np.ndarray) -> Predictor:
        if self.predictor == "gp":
            features = self._candidates.features
            assert features is not None
            seed = int(self.rng.integers(2**31))
            gp = GPPredictor(
                groups=features.groups,
                n_restarts=1 if self._theta is None else 0,
                seed=seed,
                init_theta=self._theta,
                min_noise=self.min_noise,
            ).fit(x, y)
            self._theta = gp.theta_
            return gp
        if callable(self.predictor):
            model = self.predictor()
            if not hasattr(model, "predict_with_std"):
                raise TypeError(
                    f"the frontier sampler needs a predictor with predict_with_std (uncertainty); "
                    f"{type(model).__name__} has none"
                )
            return model.fit(x, y)
        raise ValueError(f"predictor must be 'gp' or a factory, got {self.predictor!r}")

    def _references(self, pool: Pool, y: np.ndarray) -> tuple[np.ndarray, float]:
        p = self.problem
        refs = []
        for name in p.cheap_objectives:
            sign = p.metrics[name].sign
            if name in self.reference:
                refs.append(sign * self.reference[name])
                continue
            j = self.cheap_names.index(name)
            worst = float(np.max(sign * pool.cheap[pool.feasible, j]))
            bounds = [c.effective_bound * sign for c in p.constraints if c.metric == name]
            refs.append(min([worst, *bounds]) if bounds else worst)
        floors = [c.bound for c in p.constraints if c.metric == ACCURACY and c.op == ">="]
        # the initial design is a stratified random sample of the pool, so its median estimates
        # the typical arch's accuracy; later archs are paid for being good, and a median over
        # them drifts up until fast archs of middling accuracy no longer count as improvements
        default = max(floors) if floors else float(np.median(y[: self.n_initial]))
        return np.array(refs), float(self.reference.get(ACCURACY, default))

    def _accuracy_floor(self) -> bool:
        return any(c.metric == ACCURACY and c.op == ">=" for c in self.problem.constraints)

    def _ehvi_batch(
        self,
        pool: Pool,
        avail: np.ndarray,
        paid_archs: list[Arch],
        y: np.ndarray,
        busy_archs: list[Arch],
    ) -> list[str]:
        p = self.problem
        paid_pool = self._candidates.side_pool(paid_archs)
        x_paid = paid_pool.x
        warp = _warp(self.warp, y)
        y_raw, y = y, warp(y)
        model = self._fit(x_paid, y)
        idx = np.flatnonzero(avail)
        xc = pool.x[idx]
        gp = model if isinstance(model, GPPredictor) else None
        if gp is not None:
            mu, v = gp.posterior(xc)
            var = np.maximum(gp.signal_variance - (v * v).sum(0), 1e-12)  # standardised units
        else:
            mu, sd0 = model.predict_with_std(xc)  # type: ignore[attr-defined]
        objs = np.array([self.cheap_names.index(n) for n in p.cheap_objectives], dtype=np.int64)
        signs = np.array([p.metrics[n].sign for n in p.cheap_objectives])
        cand = pool.cheap[np.ix_(idx, objs)] * signs
        front_cheap = paid_pool.cheap
        ok = p.feasible_cheap({n: front_cheap[:, j] for j, n in enumerate(self.cheap_names)})
        ok = np.broadcast_to(np.asarray(ok, bool), (len(paid_archs),))
        front_c = front_cheap[np.ix_(np.flatnonzero(ok), objs)] * signs  # feasible paid archs
        front_y = y[ok]
        if busy_archs:  # others' in-flight archs join the front at their predicted accuracy
            busy_pool = self._candidates.side_pool(busy_archs)
            xb = busy_pool.x
            front_c = np.vstack([front_c, busy_pool.cheap[:, objs] * signs])
            front_y = np.concatenate([front_y, model.predict(xb)])
        ref_c, ref_y = self._references(pool, y_raw)
        ref_y = float(warp(np.array([ref_y]))[0])
        if ACCURACY not in self.reference and not self._accuracy_floor():
            # the initial design's median is an estimate from n_initial archs; when it comes out
            # high, fast archs of fair accuracy never count as improvements and the fast end of
            # the front is lost (a seed at HV 0.69): the predicted median of the unpaid pool, a
            # far larger sample, caps it
            ref_y = min(ref_y, float(np.median(mu)))
        n_batch = min(self.batch_size, max(1, len(paid_archs) // self.batch_divisor))
        chosen: list[int] = []
        cols: list[np.ndarray] = []
        noise = math.exp(gp.log_noise_) if gp is not None else 0.0
        taken = np.zeros(len(idx), dtype=bool)
        best_gain = 0.0
        for _ in range(min(n_batch, len(idx))):
            sd = np.sqrt(var) * gp.target_std if gp is not None else sd0
            gain = expected_hvi(front_c, front_y, cand, mu, sd, ref_c, ref_y)
            gain[taken] = -np.inf
            s = int(np.argmax(gain))
            if not np.isfinite(gain[s]):
                break
            if not chosen:
                best_gain = float(gain[s])
            chosen.append(s)
            taken[s] = True
            front_c = np.vstack([front_c, cand[s]])
            front_y = np.append(front_y, mu[s])
            if gp is not None:  # rank-1 update of the posterior covariance (Kriging believer)
                cov = gp.kernel(xc, xc[s : s + 1])[:, 0] - v.T @ v[:, s]
                for c in cols:
                    cov -= c * c[s]
                c_new = cov / math.sqrt(max(cov[s] + noise, 1e-12))
                cols.append(c_new)
                var = np.maximum(var - c_new * c_new, 1e-12)
        self.last_fit = {"n_paid": float(len(y)), "best_ehvi": best_gain, "reference_acc": ref_y}
        log.debug("frontier: %d paid, batch of %d, best EHVI %.4g", len(y), len(chosen), best_gain)
        return [pool.keys[idx[s]] for s in chosen]


def _resolve_encoding(problem: SearchProblem, encoding: str) -> str:
    if encoding != "auto":
        return encoding
    return "onehot+path" if callable(getattr(problem.space, "live_edges", None)) else "onehot"


def _warp(kind: str, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A monotone map of accuracies, fitted on the paid values only: dominance is kept,
    the GP sees a less skewed target."""
    if kind == "none":
        return lambda v: np.asarray(v, dtype=float)
    if kind == "rank":
        from scipy import stats

        srt = np.sort(y)
        q = stats.norm.ppf((np.arange(len(srt)) + 0.5) / len(srt))
        return lambda v: np.interp(np.asarray(v, float), srt, q)
    if kind == "yeo-johnson":
        from sklearn.preprocessing import PowerTransformer

        pt = PowerTransformer(method="yeo-johnson").fit(y.reshape(-1, 1))
        return lambda v: pt.transform(np.asarray(v, float).reshape(-1, 1)).ravel()
    raise ValueError(f"warp must be 'none', 'rank' or 'yeo-johnson', got {kind!r}")
