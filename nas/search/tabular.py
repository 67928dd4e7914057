"""Tabular benchmark mode: search a space whose accuracy and latency come from a table.

A CSV names each arch in one column (a space's own notation such as NAS-Bench-201's
`arch_str`, an index into the space's benchmark order, or our `key` format) and has named
accuracy and latency columns. Because every row is known, the true Pareto front is known
exactly, and a search is scored by the hypervolume ratio HV(found) / HV(true), where only archs
whose accuracy was paid for count as found.

The rules that keep the figure honest (`bench_tabular`): the budget counts accuracy
evaluations, one per distinct arch (canonical key) paid for; latency look-ups are free; a
strategy sees the latency columns and only the accuracies it has paid for; nothing is fitted on
an accuracy column except through paid evaluations; and the reference point used for scoring
(a latency quantile and the median accuracy of the whole table) is never shown to a strategy.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nas.core.space import Arch, InvalidArchError, SearchSpace
from nas.search.pareto import hypervolume, pareto_mask

__all__ = [
    "BASELINES",
    "STRATEGIES",
    "ParseFn",
    "TableAccuracy",
    "TableError",
    "TableLatencyModel",
    "TabularBenchmark",
    "bench_tabular",
    "parse_key",
    "run_tabular",
    "summarize",
]

log = logging.getLogger(__name__)

ParseFn = Callable[[Any], Arch]


class TableError(ValueError):
    """A table that cannot serve as a benchmark; the message lists what is wrong."""


def parse_key(space: SearchSpace, text: str) -> Arch:
    """Inverse of `SearchSpace.key` (`dim=value|dim=value|...`) for spaces without inactive
    slots; values are matched against each dimension's choices by their string form."""
    parts = str(text).split("|")
    arch: dict[str, Any] = {}
    dims = space.dimensions()
    for part in parts:
        name, sep, value = part.partition("=")
        if not sep or name not in dims:
            raise InvalidArchError(f"not a key of space {space.name!r}: {text!r}")
        match = [v for v in dims[name].values if str(v) == value]
        if not match:
            raise InvalidArchError(f"{name}={value!r} is not a choice of {list(dims[name].values)}")
        arch[name] = match[0]
    return space.validate(arch)


def _default_parser(space: SearchSpace, column: pd.Series) -> ParseFn:
    from_index = getattr(space, "from_index", None)
    from_str = getattr(space, "from_str", None)
    if pd.api.types.is_integer_dtype(column.dtype):
        if from_index is None:
            raise TableError(
                f"the arch column holds integers but space {space.name!r} has no from_index(); "
                "pass parse=<callable value -> arch>"
            )
        return lambda v: from_index(int(v))
    if from_str is not None:
        return lambda v: from_str(str(v))
    return lambda v: parse_key(space, str(v))


def _first_rows(rows: list[tuple[int, Any, str]], total: int) -> str:
    shown = "; ".join(f"row {i}: {v!r} ({why})" for i, v, why in rows[:5])
    more = f" (and {total - 5} more)" if total > 5 else ""
    return shown + more


class TableLatencyModel:
    """A latency model that looks latencies up in a table column (the latency-model protocol:
    `.device`, `.dtype`, `predict_arch`, `predict_many`)."""

    def __init__(self, device: str, dtype: str, column: str, table: TabularBenchmark) -> None:
        self.device, self.dtype, self.column, self._table = device, dtype, column, table

    def __repr__(self) -> str:
        return f"TableLatencyModel(device={self.device!r}, column={self.column!r})"

    def predict_arch(self, space: SearchSpace, arch: Mapping[str, Any]) -> float:
        return float(self._table.lookup(dict(arch), self.column))

    def predict_many(self, space: SearchSpace, archs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        rows = self._table.rows_of(dict(a) for a in archs)
        return self._table.frame[self.column].to_numpy(dtype=np.float64)[rows]


class TableAccuracy:
    """Accuracy by table look-up, counting what was paid for (distinct arch keys)."""

    def __init__(self, table: TabularBenchmark, column: str) -> None:
        self.table, self.column = table, column
        self.paid_keys: list[str] = []
        self.n_calls = 0

    def __call__(self, arch: Arch) -> float:
        self.n_calls += 1
        key = self.table.space.key(arch)
        if key not in self.paid_keys:
            self.paid_keys.append(key)
        return float(self.table.lookup(arch, self.column))


class TabularBenchmark:
    """A table of archs with accuracy and latency columns, validated against a space.

    Raises `TableError` naming the missing columns (and the ones present), or the first rows
    whose arch cannot be read, whose values are not finite numbers, or that repeat an arch.
    """

    def __init__(
        self,
        space: SearchSpace,
        frame: pd.DataFrame,
        arch_column: str,
        accuracy_columns: Sequence[str],
        latency_columns: Sequence[str],
        parse: ParseFn | None = None,
        source: str = "table",
    ) -> None:
        self.space, self.source = space, source
        self.arch_column = arch_column
        self.accuracy_columns = list(accuracy_columns)
        self.latency_columns = list(latency_columns)
        needed = [arch_column, *self.accuracy_columns, *self.latency_columns]
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise TableError(
                f"{source}: missing column(s) {missing}; the table has {list(frame.columns)}"
            )
        if frame.empty:
            raise TableError(f"{source}: the table has no rows")
        parser = parse or _default_parser(space, frame[arch_column])
        archs: list[Arch] = []
        bad: list[tuple[int, Any, str]] = []
        n_bad = 0
        for i, value in enumerate(frame[arch_column].tolist()):
            try:
                archs.append(space.validate(parser(value)))
            except (InvalidArchError, ValueError, KeyError, TypeError) as err:
                n_bad += 1
                if len(bad) < 5:
                    bad.append((i, value, str(err).splitlines()[0][:120]))
        if n_bad:
            raise TableError(
                f"{source}: {n_bad} row(s) name no arch of space {space.name!r} in column "
                f"{arch_column!r}: {_first_rows(bad, n_bad)}"
            )
        for col in [*self.accuracy_columns, *self.latency_columns]:
            values = pd.to_numeric(frame[col], errors="coerce")
            rows = np.flatnonzero(~np.isfinite(values.to_numpy(dtype=float)))
            if len(rows):
                shown = [(int(i), frame[col].iloc[i], "not a finite number") for i in rows[:5]]
                raise TableError(
                    f"{source}: column {col!r} has {len(rows)} bad value(s): "
                    f"{_first_rows(shown, len(rows))}"
                )
        keys = [space.key(a) for a in archs]
        index: dict[str, int] = {}
        dups: list[tuple[int, Any, str]] = []
        for i, k in enumerate(keys):
            if k in index:
                dups.append((i, frame[arch_column].iloc[i], f"same arch as row {index[k]}"))
            else:
                index[k] = i
        if dups:
            raise TableError(f"{source}: repeated archs: {_first_rows(dups, len(dups))}")
        self.frame = frame.reset_index(drop=True)
        self.archs, self.keys, self._index = archs, keys, index
        dims = space.keys
        self._by_values = {tuple(a[d] for d in dims): i for i, a in enumerate(archs)}

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        space: SearchSpace,
        arch_column: str,
        accuracy_columns: Sequence[str] | str,
        latency_columns: Sequence[str] | str,
        parse: ParseFn | None = None,
    ) -> TabularBenchmark:
        p = Path(path)
        if not p.exists():
            raise TableError(f"no table at {p}")
        acc = [accuracy_columns] if isinstance(accuracy_columns, str) else list(accuracy_columns)
        lat = [latency_columns] if isinstance(latency_columns, str) else list(latency_columns)
        return cls(space, pd.read_csv(p), arch_column, acc, lat, parse, source=str(p))

    # -- look-ups ----------------------------------------------------------------------------
    def rows_of(self, archs: Iterable[Arch]) -> np.ndarray:
        rows = []
        dims = self.space.keys
        for a in archs:
            try:  # fast path: a clean arch of this space, looked up by its values
                rows.append(self._by_values[tuple(a[d] for d in dims)])
                continue
            except (KeyError, TypeError):
                pass
            k = self.space.key(a)
            if k not in self._index:
                raise KeyError(
                    f"arch {k} is not in {self.source} ({len(self.keys)} rows); a tabular search "
                    "can only visit archs the table covers"
                )
            rows.append(self._index[k])
        return np.array(rows, dtype=np.int64)

    def lookup(self, arch: Arch, column: str) -> float:
        values = self.frame[column].to_numpy(dtype=np.float64)
        return float(values[int(self.rows_of([arch])[0])])

    def accuracy(self, column: str | None = None) -> TableAccuracy:
        """A paid accuracy source reading `column` (default: the first accuracy column)."""
        col = column or self.accuracy_columns[0]
        self._check(col, self.accuracy_columns, "accuracy")
        return TableAccuracy(self, col)

    @staticmethod
    def device_of(column: str) -> str:
        return column[: -len("_ms")] if column.endswith("_ms") else column

    def latency_model(self, column: str) -> TableLatencyModel:
        self._check(column, self.latency_columns, "latency")
        return TableLatencyModel(self.device_of(column), "fp32", column, self)

    def latency_models(self) -> list[TableLatencyModel]:
        return [self.latency_model(c) for c in self.latency_columns]

    def _check(self, column: str, valid: list[str], what: str) -> None:
        if column not in valid:
            raise TableError(f"{column!r} is not one of the {what} columns {valid}")

    # -- the true front ----------------------------------------------------------------------
    def reference_point(
        self,
        accuracy_column: str,
        latency_column: str,
        latency_quantile: float = 0.95,
        accuracy_quantile: float = 0.5,
    ) -> tuple[float, float]:
        """(accuracy, latency_ms) of the scoring reference: by default the median accuracy and
        the 95th percentile latency over the whole table, so the hypervolume measures archs
        better than the typical one and faster than all but the slowest 5 %."""
        return (
            float(self.frame[accuracy_column].quantile(accuracy_quantile)),
            float(self.frame[latency_column].quantile(latency_quantile)),
        )

    def _points(self, rows: np.ndarray, accuracy_column: str, latency_column: str) -> np.ndarray:
        acc = self.frame[accuracy_column].to_numpy(dtype=float)[rows]
        lat = self.frame[latency_column].to_numpy(dtype=float)[rows]
        return np.column_stack([-acc, lat])

    def hypervolume(
        self,
        archs: Sequence[Arch] | None,
        accuracy_column: str,
        latency_column: str,
        reference: tuple[float, float] | None = None,
    ) -> float:
        """HV of `archs` (all rows when None) in (accuracy up, latency down)."""
        ref_acc, ref_lat = reference or self.reference_point(accuracy_column, latency_column)
        rows = np.arange(len(self.frame)) if archs is None else self.rows_of(archs)
        return hypervolume(self._points(rows, accuracy_column, latency_column), [-ref_acc, ref_lat])

    def true_front(self, accuracy_column: str, latency_column: str) -> pd.DataFrame:
        pts = self._points(np.arange(len(self.frame)), accuracy_column, latency_column)
        return self.frame[pareto_mask(pts)].sort_values(latency_column).reset_index(drop=True)


# -- the benchmark ---------------------------------------------------------------------------
BASELINES = ("random", "nsga2", "tpe", "gp")
STRATEGIES = (*BASELINES, "frontier")


def run_tabular(
    table: TabularBenchmark,
    strategy: str,
    accuracy_column: str,
    latency_column: str,
    n_evaluations: int,
    seed: int,
    sampler_options: dict[str, Any] | None = None,
    max_trials: int | None = None,
    feature_columns: Sequence[str] = (),
    proxy: str | None = "synflow",
) -> dict[str, Any]:
    """One search on the table; returns the paid archs' keys in order and the run's counts.

    Trials that propose an arch already paid for (same canonical key) complete from the
    recorded accuracy for free; `max_trials` (default 5 x n_evaluations) caps how long a
    sampler that keeps proposing paid archs may run, so it may end below `n_evaluations`.

    The strategy sees the objective's latency column as its latency model and nothing else of
    the table but the accuracies it pays for: a user searching for one device has that device's
    latencies only. `feature_columns` (other devices' latency columns) are handed to `frontier`
    as extra free predictor features, an explicit extra; `frontier` also gets the table's archs
    as its candidate pool, and `proxy` (a zero-cost proxy of `nas.predictors.ZeroCostProxy`,
    computed on the space's `proxy_build` network, untrained: free, no accuracy) as the prior
    that picks its initial design, unless `sampler_options` names a `prior` (None: no prior).
    Accuracy comes from a counting look-up of `accuracy_column`.
    """
    from nas.search import run_search

    acc = table.accuracy(accuracy_column)
    model = table.latency_model(latency_column)
    options = dict(sampler_options or {})
    if strategy == "frontier":
        options = _frontier_options(table, options, latency_column, feature_columns, proxy)
    t0 = time.perf_counter()
    study = run_search(
        table.space,
        ["accuracy", model],
        accuracy=acc,
        sampler=strategy,
        n_evaluations=n_evaluations,
        max_trials=max_trials or 5 * n_evaluations,
        seed=seed,
        study_name=f"{strategy}-{seed}",
        sampler_options=options,
    )
    elapsed = time.perf_counter() - t0
    log.info(
        "%s seed %d on %s/%s: %d paid evaluations in %d trials, %.1f s",
        strategy,
        seed,
        accuracy_column,
        latency_column,
        len(acc.paid_keys),
        len(study.trials),
        elapsed,
    )
    paid = sorted(
        (t.number, str(t.user_attrs["arch_key"]))
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("evaluated")
    )
    keys = [k for _, k in paid]
    if len(set(keys)) != len(keys) or len(acc.paid_keys) != len(keys):
        raise AssertionError(
            f"{strategy}: {len(keys)} paid trials, {len(set(keys))} distinct, "
            f"{len(acc.paid_keys)} distinct look-ups: an arch was paid twice"
        )
    return {
        "strategy": strategy,
        "seed": seed,
        "paid_keys": keys,
        "n_trials": len(study.trials),
        "time_s": elapsed,
        "step_s_max": getattr(study.sampler, "step_s_max", None),
        "step_cpu_s_max": getattr(study.sampler, "step_cpu_s_max", None),
        "setup_s": getattr(study.sampler, "setup_s", None),
    }


def _frontier_options(
    table: TabularBenchmark,
    options: dict[str, Any],
    latency_column: str,
    feature_columns: Sequence[str],
    proxy: str | None,
) -> dict[str, Any]:
    """`frontier`'s options in tabular mode: the table's archs as its pool, other devices'
    latency columns as features (an explicit extra), the zero-cost proxy as its prior."""
    others = {
        f"{table.device_of(c)}_ms": table.latency_model(c).predict_many
        for c in feature_columns
        if c != latency_column
    }
    if others:
        options.setdefault("features", {k: _bind(v, table.space) for k, v in others.items()})
    options.setdefault("candidates", table.archs)
    if proxy is not None and "prior" not in options:
        from nas.predictors import ZeroCostProxy

        space = table.space
        options["prior"] = ZeroCostProxy(space, proxy, build=space.proxy_build)
    return options


def _bind(
    fn: Callable[[SearchSpace, Sequence[Arch]], np.ndarray], space: SearchSpace
) -> Callable[[Sequence[Arch]], np.ndarray]:
    return lambda archs: fn(space, archs)


def _job(args: tuple[Any, ...]) -> dict[str, Any]:
    table, strategy, acc_col, lat_col, budget, seed, options, max_trials, feature_columns = args
    return run_tabular(
        table, strategy, acc_col, lat_col, budget, seed, options, max_trials, feature_columns
    )


def bench_tabular(
    table: TabularBenchmark,
    accuracy_column: str,
    latency_column: str,
    strategies: Sequence[str] = STRATEGIES,
    budgets: Sequence[int] = (50, 100, 300),
    seeds: Sequence[int] = tuple(range(10)),
    n_jobs: int = 1,
    sampler_options: dict[str, dict[str, Any]] | None = None,
    max_trials: int | None = None,
    feature_columns: Sequence[str] = (),
) -> pd.DataFrame:
    """HV(found) / HV(true) of each strategy at each budget, one row per (strategy, seed,
    budget): the first `budget` paid archs of one run with the largest budget are scored.

    The reference point is `table.reference_point(...)` (median accuracy, 95th-percentile
    latency over the whole table); HV(true) is over every row. `n_jobs` > 1 runs seeds in
    worker processes (fork). `max_trials` caps each run's trials (default 5 x the largest
    budget; paid evaluations are reported as reached); `feature_columns` go to `frontier` as
    extra features (see `run_tabular`); each run logs a progress line.
    """
    if not budgets or min(budgets) < 1:
        raise ValueError(f"budgets must be positive evaluation counts, got {list(budgets)}")
    ref = table.reference_point(accuracy_column, latency_column)
    hv_true = table.hypervolume(None, accuracy_column, latency_column, ref)
    if not hv_true > 0:
        raise TableError("the table's true front has zero hypervolume w.r.t. its reference")
    top = max(budgets)
    for c in feature_columns:
        table._check(c, table.latency_columns, "latency")
    opts = sampler_options or {}
    cap = max_trials
    jobs = [
        (table, s, accuracy_column, latency_column, top, seed, opts.get(s), cap, feature_columns)
        for s in strategies
        for seed in seeds
    ]
    if n_jobs > 1 and os.name == "posix":
        import multiprocessing

        with ProcessPoolExecutor(n_jobs, mp_context=multiprocessing.get_context("fork")) as ex:
            results = list(ex.map(_job, jobs))
    else:
        results = [_job(j) for j in jobs]
    rows = []
    by_key = {k: a for k, a in zip(table.keys, table.archs, strict=True)}
    for r in results:
        for b in budgets:
            archs = [by_key[k] for k in r["paid_keys"][:b]]
            hv = table.hypervolume(archs, accuracy_column, latency_column, ref)
            rows.append(
                {
                    "strategy": r["strategy"],
                    "seed": r["seed"],
                    "budget": b,
                    "n_paid": len(archs),
                    "hv_ratio": hv / hv_true,
                    "n_trials": r["n_trials"],
                    "time_s": r["time_s"],
                    "step_s_max": r["step_s_max"],
                    "step_cpu_s_max": r["step_cpu_s_max"],
                    "setup_s": r["setup_s"],
                }
            )
    frame = pd.DataFrame(rows)
    frame.attrs.update(
        {"reference": {"accuracy": ref[0], "latency_ms": ref[1]}, "hv_true": hv_true}
    )
    return frame


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and worst HV ratio per strategy and budget."""
    g = frame.groupby(["strategy", "budget"])["hv_ratio"]
    out = pd.DataFrame({"mean": g.mean(), "worst": g.min(), "n_seeds": g.size()}).reset_index()
    return out
