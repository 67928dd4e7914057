"""What a search optimises: metrics of an arch (accuracy, latency per device, MACs, params,
memory, size), which of them are objectives, and budgets on them (`constraints.py`).

Accuracy is the expensive metric: it comes from any callable `arch -> accuracy` (a supernet with
inherited weights, a table, a predictor, a user's training run). Everything else is free to
compute for every candidate: MACs, params and peak activation memory from the space's layer
specs, and latency from latency-model objects (`.device`, `.dtype`, `predict_arch`,
`predict_many`) handed in by the caller; this module never imports a latency model package.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nas.core.layers import DTYPE_BYTES
from nas.core.protocols import LatencyModel
from nas.core.space import Arch, SearchSpace
from nas.search.constraints import Constraint, parse_constraint

log = logging.getLogger(__name__)

__all__ = ["ACCURACY", "LATENCY_PREFIX", "Metric", "SearchProblem", "latency_metric_name"]

ACCURACY = "accuracy"
LATENCY_PREFIX = "latency_ms@"
_ALIASES = {
    "memory": "peak_activation_bytes",
    "peak_memory_bytes": "peak_activation_bytes",
    "peak_memory": "peak_activation_bytes",
    "model_size": "size_bytes",
    "size": "size_bytes",
    "acc": ACCURACY,
    "predicted_accuracy": ACCURACY,
}


@dataclass(frozen=True)
class Metric:
    """One measurable quantity of an arch."""

    name: str
    direction: str  # "minimize" or "maximize"
    cheap: bool  # free to compute for every candidate (latency, MACs, ...), or paid (accuracy)
    many: Callable[[Sequence[Arch]], np.ndarray] = field(compare=False, repr=False)
    unit: str = ""

    def __call__(self, arch: Arch) -> float:
        return float(np.asarray(self.many([arch]), dtype=np.float64)[0])

    @property
    def sign(self) -> float:
        """Multiply by this to turn the metric into one that is minimised."""
        return 1.0 if self.direction == "minimize" else -1.0


def latency_metric_name(model: LatencyModel) -> str:
    """`latency_ms@<device>`, with `:<dtype>` appended when the dtype is not fp32."""
    name = f"{LATENCY_PREFIX}{model.device}"
    return name if model.dtype in ("fp32", "") else f"{name}:{model.dtype}"


def _check_latency_model(model: object) -> LatencyModel:
    missing = [
        a for a in ("device", "dtype", "predict_arch", "predict_many") if not hasattr(model, a)
    ]
    if missing:
        raise TypeError(
            f"a latency model needs .device, .dtype, .predict_arch(space, arch) and "
            f".predict_many(space, archs); {type(model).__name__} lacks {missing}"
        )
    return model  # type: ignore[return-value]


class SearchProblem:
    """A space, its metrics, the objectives among them, and the budgets.

    `objectives` items are metric names (`accuracy`, `macs`, `params`, `peak_activation_bytes`
    (alias `memory`), `size_bytes`, `latency_ms@<device>`, or `latency_ms` when exactly one
    latency model is given) or latency-model objects (added to `latency_models`). `constraints`
    are strings like `"latency_ms@pixel3 <= 20"`, `Constraint`s, or a mapping metric -> bound
    (`<=` for minimised metrics, `>=` for maximised ones). `accuracy` is the paid metric:
    any callable `arch -> accuracy` (higher is better). `margins` maps a metric to the relative
    margin its `<=` budget keeps (`Constraint.margin`: feasible when predicted x (1 + margin)
    <= bound), e.g. from `auto_margin` over the latency model's held-out error. `metrics` adds
    further free metrics as `Metric` objects (made by the caller, e.g. the app's
    `train_memory_bytes@MODE` from `nas.ondevice`), usable as objectives and in budgets.
    """

    def __init__(
        self,
        space: SearchSpace,
        objectives: Sequence[str | LatencyModel] = (ACCURACY,),
        accuracy: Callable[[Arch], float] | None = None,
        latency_models: Sequence[LatencyModel] = (),
        constraints: Sequence[str | Constraint] | Mapping[str, float] | None = None,
        model_dtype: str = "fp32",
        margins: Mapping[str, float] | None = None,
        metrics: Sequence[Metric] = (),
    ) -> None:
        if not objectives:
            raise ValueError("a search needs at least one objective, got none")
        if model_dtype not in DTYPE_BYTES:
            raise ValueError(f"model_dtype must be one of {list(DTYPE_BYTES)}, got {model_dtype!r}")
        self.space = space
        self.accuracy_fn = accuracy
        self.model_dtype = model_dtype
        models = [_check_latency_model(m) for m in latency_models]
        names: list[str] = []
        for obj in objectives:
            if isinstance(obj, str):
                names.append(obj)
            else:
                model = _check_latency_model(obj)
                if model not in models:
                    models.append(model)
                names.append(latency_metric_name(model))
        self.latency_models = models
        self.metrics: dict[str, Metric] = self._build_metrics()
        for metric in metrics:
            if not isinstance(metric, Metric) or not metric.cheap:
                raise TypeError(f"further metrics are free `Metric` objects, got {metric!r}")
            if metric.name in self.metrics or metric.name in (ACCURACY, *_ALIASES):
                raise ValueError(f"metric {metric.name!r} is already defined")
            self.metrics[metric.name] = metric
        self.objectives = [self.resolve(n) for n in names]
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objectives repeat a metric: {self.objectives}")
        self.constraints = self._with_margins(self._build_constraints(constraints), margins)
        if ACCURACY in self.used_metrics and accuracy is None:
            raise ValueError(
                "'accuracy' is an objective or budget but no accuracy source was given: pass "
                "accuracy=<callable arch -> accuracy> (a supernet evaluator, a table, a "
                "predictor)"
            )

    # -- metrics -----------------------------------------------------------------------------
    def _build_metrics(self) -> dict[str, Metric]:
        space = self.space

        def cost(field_name: str) -> Callable[[Sequence[Arch]], np.ndarray]:
            return lambda archs: np.array(
                [getattr(space.cost(a), field_name) for a in archs], dtype=np.float64
            )

        elem = DTYPE_BYTES[self.model_dtype]
        metrics = {
            "macs": Metric("macs", "minimize", True, cost("macs"), "MACs"),
            "params": Metric("params", "minimize", True, cost("params"), "parameters"),
            "peak_activation_bytes": Metric(
                "peak_activation_bytes", "minimize", True, cost("peak_activation_bytes"), "bytes"
            ),
            "size_bytes": Metric(
                "size_bytes",
                "minimize",
                True,
                lambda archs: cost("params")(archs) * elem,
                "bytes",
            ),
        }
        if self.accuracy_fn is not None:
            fn = self.accuracy_fn
            metrics[ACCURACY] = Metric(
                ACCURACY,
                "maximize",
                False,
                lambda archs: np.array([float(fn(a)) for a in archs], dtype=np.float64),
                "%",
            )
        for model in self.latency_models:
            name = latency_metric_name(model)
            if name in metrics:
                raise ValueError(
                    f"two latency models are both named {name!r}: give them distinct devices or "
                    "dtypes"
                )
            metrics[name] = Metric(
                name,
                "minimize",
                True,
                (lambda m: lambda archs: np.asarray(m.predict_many(space, list(archs)), float))(
                    model
                ),
                "ms",
            )
        return metrics

    def resolve(self, name: str) -> str:
        """The canonical metric name for `name` (aliases, bare `latency_ms`), or an error."""
        name = _ALIASES.get(name, name)
        if name == ACCURACY:
            return name
        if name == "latency_ms":
            lat = [m for m in self.metrics if m.startswith(LATENCY_PREFIX)]
            if len(lat) == 1:
                return lat[0]
            raise ValueError(
                f"'latency_ms' is ambiguous with {len(lat)} latency models; name the device: "
                f"{lat or ['(pass latency_models=[...])']}"
            )
        if name in self.metrics:
            return name
        valid = [*self.metrics, ACCURACY, "memory", "size_bytes", "latency_ms@<device>"]
        close = difflib.get_close_matches(name, list(self.metrics), n=2, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        extra = (
            " (a latency objective needs its latency model: pass it in objectives or "
            "latency_models)"
            if name.startswith(LATENCY_PREFIX)
            else ""
        )
        if "@" in name and not extra:
            extra = (
                f" (a metric of another package, such as {name.partition('@')[0]}@..., needs "
                "its Metric object: pass metrics=[...])"
            )
        raise ValueError(
            f"unknown metric {name!r}.{hint}{extra} Valid: {', '.join(dict.fromkeys(valid))}"
        )

    def _build_constraints(
        self, constraints: Sequence[str | Constraint] | Mapping[str, float] | None
    ) -> list[Constraint]:
        out: list[Constraint] = []
        if constraints is None:
            return out
        if isinstance(constraints, Mapping):
            for name, bound in constraints.items():
                metric = self.resolve(name)
                op = "<=" if self.direction(metric) == "minimize" else ">="
                out.append(Constraint(metric, op, float(bound)))
            return out
        for c in constraints:
            if isinstance(c, Constraint):
                out.append(Constraint(self.resolve(c.metric), c.op, c.bound, c.margin))
            else:
                name, op, bound = parse_constraint(c)
                out.append(Constraint(self.resolve(name), op, bound))
        return out

    def _with_margins(
        self, constraints: list[Constraint], margins: Mapping[str, float] | None
    ) -> list[Constraint]:
        by_metric = {self.resolve(k): float(v) for k, v in (margins or {}).items()}
        budgeted = {c.metric for c in constraints if c.op == "<="}
        unknown = sorted(set(by_metric) - budgeted)
        if unknown:
            raise ValueError(
                f"margins given for {unknown}, which carry no '<=' budget; budgets: "
                f"{[str(c) for c in constraints] or 'none'}"
            )
        return [
            Constraint(c.metric, c.op, c.bound, by_metric.get(c.metric, c.margin))
            if c.op == "<="
            else c
            for c in constraints
        ]

    @property
    def margins(self) -> dict[str, float]:
        """The non-zero margins of the budgets, by metric."""
        return {c.metric: c.margin for c in self.constraints if c.margin}

    def direction(self, metric: str) -> str:
        if metric == ACCURACY:
            return "maximize"
        return self.metrics[metric].direction

    @property
    def directions(self) -> list[str]:
        return [self.direction(m) for m in self.objectives]

    @property
    def used_metrics(self) -> list[str]:
        """Objectives, then budget metrics, then every latency model's metric (all recorded)."""
        names = list(self.objectives) + [c.metric for c in self.constraints]
        names += [latency_metric_name(m) for m in self.latency_models]
        return list(dict.fromkeys(names))

    @property
    def cheap_objectives(self) -> list[str]:
        return [m for m in self.objectives if m != ACCURACY]

    @property
    def cheap_used(self) -> list[str]:
        return [m for m in self.used_metrics if m != ACCURACY]

    def cheap_matrix(self, archs: Sequence[Arch], names: Sequence[str]) -> np.ndarray:
        """Values of cheap metrics `names` for `archs` (len(archs) x len(names))."""
        cols = []
        for n in names:
            if n == ACCURACY:
                raise ValueError("accuracy is not a cheap metric")
            col = np.asarray(self.metrics[n].many(list(archs)), dtype=np.float64).ravel()
            if col.shape[0] != len(archs):
                raise ValueError(
                    f"metric {n!r} returned {col.shape[0]} values for {len(archs)} archs"
                )
            cols.append(col)
        return np.stack(cols, axis=1) if cols else np.zeros((len(archs), 0))

    def feasible_cheap(self, values: Mapping[str, np.ndarray]) -> np.ndarray | bool:
        """Whether budgets on cheap metrics hold (element-wise over arrays of values)."""
        ok: np.ndarray | bool = True
        for c in self.constraints:
            if c.metric != ACCURACY and c.metric in values:
                ok = ok & (np.vectorize(c.violation)(values[c.metric]) <= 0)
        return ok

    def describe(self) -> dict[str, Any]:
        """A JSON-able description stored with a study, checked when a worker joins."""
        return {
            "space": self.space.name,
            "objectives": list(self.objectives),
            "directions": self.directions,
            "constraints": [str(c) for c in self.constraints],
            # only when some budget keeps one, so studies made before margins still match
            **({"margins": self.margins} if self.margins else {}),
        }
