"""The built-in stages of a run: supernet -> accuracy -> latency -> search -> winners ->
compress -> report, each a library call on a `RunState`, registered with what it reads and
writes (`nas.app.stages`). A later stage (hardware-aware training, on-device learning,
federated rounds) joins by one more `register_stage` call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nas.app.compress_stage import chain_devices, stage_compress
from nas.app.compute import handed_on, memory_remedy, run_precision, supernet_execution
from nas.app.config import DeviceConfig, RunConfig
from nas.app.errors import InputError
from nas.app.stages import Stage, key_added, register_stage
from nas.core.files import write_json_atomic
from nas.core.space import Arch, SearchSpace, as_rng

__all__ = [
    "REJECTED_COLUMNS",
    "RunState",
    "chain_devices",
    "device_figure",
    "make_test_evaluator",
    "metric_of",
    "recheck_winners",
    "stage_accuracy",
    "stage_compress",
    "stage_latency",
    "stage_report",
    "stage_search",
    "stage_supernet",
    "stage_winners",
]

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """What the stages hand each other (objects, built once per process)."""

    config: RunConfig
    run_dir: Path
    space: SearchSpace
    data: Any
    supernet: Any = None
    evaluator: Any = None
    predictor_quality: dict[str, float] = field(default_factory=dict)
    devices: dict[str, Any] = field(default_factory=dict)
    latency_models: dict[str, Any] = field(default_factory=dict)
    latency_quality: dict[str, dict[str, float]] = field(default_factory=dict)
    study: Any = None
    winners: pd.DataFrame | None = None
    compress_tables: dict[str, str] = field(default_factory=dict)
    compress_rows: dict[str, list[Any]] = field(default_factory=dict)  # nas.compress ReportRows
    timings_s: dict[str, float] = field(default_factory=dict)
    #: per device label: its latency model against the device's figure on held-out archs
    heldout: dict[str, Any] = field(default_factory=dict)  # nas.app.budgets.HeldOut
    #: per budgeted latency metric: the margin the search kept (nas.search.Margin)
    margins: dict[str, Any] = field(default_factory=dict)
    #: winners the device's figure put over a budget, and misses nothing in the study kept
    rejected: list[Any] = field(default_factory=list)  # nas.app.budgets.Rejected
    misses: list[Any] = field(default_factory=list)  # nas.app.budgets.BudgetMiss
    #: by stage: the archs an optional stage hands to the compression chain (hwtrain's derived
    #: archs, in the columns of `winners`), and what its report section shows
    more_winners: dict[str, pd.DataFrame] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _device_label(dev: DeviceConfig) -> str:
    return f"{dev.name}-{dev.dtype}"


# -- stages -----------------------------------------------------------------------------------


def stage_supernet(state: RunState, progress: bool) -> None:
    from nas.supernet import train_supernet

    cfg, compute = state.config.supernet, state.config.compute
    with memory_remedy("supernet", compute, "supernet.batch_size"):
        result = train_supernet(
            state.space,
            state.data,
            state.run_dir / "supernet",
            schedule=cfg.schedule,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            options=dict(cfg.options),
            seed=state.config.seed,
            progress=progress,
            **supernet_execution(compute),
        )
    state.supernet = handed_on(result.supernet)  # on the CPU, for the stages that export
    log.info("supernet: step %d, %.0f images/s", result.step, result.images_per_s)


def stage_accuracy(state: RunState, progress: bool) -> None:
    """Inherited-weight accuracy of sampled archs; fit the predictor and measure its ranking."""
    from nas.app.budgets import distinct_archs
    from nas.predictors import make_predictor, ranking_metrics
    from nas.supernet import SubnetEvaluator

    cfg = state.config.accuracy
    state.evaluator = SubnetEvaluator(
        state.supernet,
        state.data.train,
        state.data.val,
        calib_images=cfg.bn_batches * 128,
        seed=state.config.seed,
        cache_path=state.run_dir / "accuracy" / "inherited.jsonl",
        precision=run_precision(state.config.compute),
    )
    rng = as_rng(state.config.seed)
    archs = distinct_archs(state.space, cfg.train_archs, rng)
    acc = np.array(state.evaluator.evaluate(archs, progress=progress)) * 100
    n_fit = max(2, int(len(archs) * 2 / 3))
    x = state.space.encode_many(archs)
    held_out = make_predictor(cfg.predictor).fit(x[:n_fit], acc[:n_fit])
    metrics = ranking_metrics(acc[n_fit:], np.asarray(held_out.predict(x[n_fit:])))
    state.predictor_quality = {
        "kendall_tau": float(metrics.kendall_tau),
        "spearman": float(metrics.spearman),
        "rmse": float(metrics.rmse),
        "n_fit": n_fit,
        "n_test": len(archs) - n_fit,
    }
    predictor = make_predictor(cfg.predictor).fit(x, acc)
    predictor.save(state.run_dir / "accuracy" / "predictor.npz")
    pd.DataFrame(
        {"arch_key": [state.space.key(a) for a in archs], "inherited_accuracy": acc}
    ).to_csv(state.run_dir / "accuracy" / "archs.csv", index=False)


def stage_latency(state: RunState, progress: bool) -> None:
    """One table per device (resumable CSV: the space's layers, or the runtime's kernels with
    `latency_model: kernels`), a latency model on it, checked against the device's own
    whole-network figure on held-out archs and corrected where that pays (`nas.app.budgets`)."""
    import latency_models as lm
    from nas.app.budgets import calibrate_latency_model, check_archs

    out = state.run_dir / "latency"
    out.mkdir(parents=True, exist_ok=True)
    for i, dev in enumerate(state.config.devices):
        label = _device_label(dev)
        device = lm.get_device(dev.name)
        state.devices[label] = device
        kind = dev.latency_model
        suffix = "" if kind == "lut" else f"-{kind}"  # a layer LUT keeps the file name it had
        table = lm.build_table(
            kind,
            state.space,
            device,
            out / f"{label}{suffix}.csv",
            dtype=dev.dtype,
            n_archs=dev.lut_archs,
            seed=state.config.seed + i,
            progress=progress,
            passes=dev.lut_passes,
        )
        model = lm.create_latency_model(kind, state.space, device, dtype=dev.dtype, table=table)
        n_check = check_archs(dev.calibration_archs, device)
        cal = calibrate_latency_model(
            state.space,
            device,
            kind,
            dev.dtype,
            table,
            model,
            n_check,
            seed=state.config.seed + 100 + i,
            cache=out / f"{label}-networks.json",
        )
        model = cal.model
        if cal.held is not None:
            state.latency_quality[label] = cal.quality
            state.heldout[label] = cal.held
            write_json_atomic(
                out / f"{label}-heldout.json",
                {"quality": cal.quality, **vars(cal.held), "arch_keys": cal.arch_keys},
            )
        model.device = dev.name
        model.dtype = dev.dtype
        state.latency_models[label] = model


def stage_search(state: RunState, progress: bool) -> None:
    from nas.app.budgets import budget_margins
    from nas.app.train_memory import train_memory_metrics
    from nas.app.validate import run_metric
    from nas.search import fail_stopped_trials, run_search, sqlite_url

    cfg = state.config.search
    models = list(state.latency_models.values())
    objectives: list[Any] = []
    for name in cfg.objectives:
        if name == "latency":
            objectives += models
        else:
            objectives.append(name)
    storage = cfg.storage or sqlite_url(state.run_dir / "study.db")
    if not cfg.storage:  # the folder's own study: under its lock, RUNNING means cut short
        fail_stopped_trials(storage, state.config.name)
    evaluator = state.evaluator
    devices = [(d.name, d.dtype) for d in state.config.devices]
    budgets = {run_metric(k, devices): v for k, v in cfg.budgets.items()}
    state.margins = budget_margins(budgets, state.heldout, metric_of(state), cfg.margin)
    for metric, margin in state.margins.items():
        log.info("budget on %s keeps a margin of %s", metric, margin.describe())
    state.study = run_search(
        state.space,
        objectives,
        accuracy=lambda arch: 100 * evaluator.evaluate_one(arch),
        latency_models=models,
        constraints=budgets,
        margins={m: margin.value for m, margin in state.margins.items() if margin.value},
        sampler=cfg.sampler,
        n_evaluations=cfg.trials,
        storage=storage,
        study_name=state.config.name,
        seed=state.config.seed,
        metrics=train_memory_metrics(state.space, objectives, budgets),
    )


def metric_of(state: RunState) -> dict[str, str]:
    """Device label -> the latency metric its model prices (`latency_ms@name[:dtype]`)."""
    from nas.search.objectives import latency_metric_name

    return {label: latency_metric_name(m) for label, m in state.latency_models.items()}


def stage_winners(state: RunState, progress: bool) -> None:
    """The best feasible archs by accuracy, each re-checked on every budgeted device's own
    figure and replaced by the next feasible arch when over a budget; test accuracy and the
    device figures on every device recorded."""
    from nas.app.budgets import unmet_budgets
    from nas.search import pareto_frame, trials_frame

    frame = trials_frame(state.study)
    frame.to_csv(state.run_dir / "trials.csv", index=False)
    front = pareto_frame(state.study)
    front.to_csv(state.run_dir / "pareto.csv", index=False)
    feasible = frame[frame["feasible"]] if "feasible" in frame.columns else frame
    if feasible.empty:
        raise InputError(unmet_budgets(frame, state.study))  # nas.app.budgets
    candidates = feasible.sort_values("accuracy", ascending=False).drop_duplicates("arch_key")
    state.winners, checked, budgets = recheck_winners(
        state, candidates.to_dict("records"), state.config.compress.top_k
    )
    state.rejected = checked.rejected
    pd.DataFrame([vars(r) for r in checked.rejected], columns=REJECTED_COLUMNS).to_csv(
        state.run_dir / "rejected.csv", index=False
    )
    state.misses = [] if checked.kept else [_miss(state, frame, b) for b in budgets]
    for miss in state.misses:
        log.warning("budget missed: %s", miss.sentence())
    state.winners.to_csv(state.run_dir / "winners.csv", index=False)


def recheck_winners(
    state: RunState, candidates: Sequence[Mapping[Any, Any]], top_k: int
) -> tuple[pd.DataFrame, Any, list[Any]]:
    """The first `top_k` of `candidates` (rows with `arch_key` and `accuracy`, best first)
    that keep every latency budget on each device's own figure, as winners rows (test
    accuracy, costs, predicted and device figures on every device); with the re-check (kept,
    rejected) and the latency budgets. The search's winners and hwtrain's derived archs."""
    from nas.app.budgets import latency_budgets, recheck, stored_constraints
    from nas.app.validate import run_metric

    devices = [(d.name, d.dtype) for d in state.config.devices]
    configured = {run_metric(k, devices): v for k, v in state.config.search.budgets.items()}
    budgets = latency_budgets(stored_constraints(state.study, configured), metric_of(state))
    checked = recheck(
        candidates,
        top_k,
        budgets,
        lambda label, key: device_figure(state, label, key),
        lambda label, key: _predicted(state, label, key),
    )
    rows = []
    for row, _ in checked.kept:
        arch = state.space.from_key(str(row["arch_key"]))
        out: dict[str, Any] = {
            "arch_key": row["arch_key"],
            "val_accuracy": row["accuracy"],
            "test_accuracy": _test_accuracy(state, arch),
        }
        cost = state.space.cost(arch)
        out.update(macs=cost.macs, params=cost.params, peak_bytes=cost.peak_activation_bytes)
        out.update({k: v for k, v in row.items() if str(k).startswith("train_memory_bytes@")})
        for label in state.latency_models:
            out[f"predicted_ms@{label}"] = _predicted(state, label, str(row["arch_key"]))
            out[f"measured_ms@{label}"] = device_figure(state, label, str(row["arch_key"]))
        rows.append(out)
    return pd.DataFrame(rows), checked, budgets


REJECTED_COLUMNS = ["arch_key", "accuracy", "budget", "predicted_ms", "device_ms", "replaced_by"]


def device_figure(state: RunState, label: str, key: str) -> float:
    """The device's own figure of one arch (cached with the latency stage's networks)."""
    from nas.app.budgets import device_figures

    device, dtype = state.devices[label], state.latency_models[label].dtype
    cache = state.run_dir / "latency" / f"{label}-networks.json"
    return device_figures(state.space, device, dtype, [state.space.from_key(key)], cache)[key]


def _predicted(state: RunState, label: str, key: str) -> float:
    return float(state.latency_models[label].predict_arch(state.space, state.space.from_key(key)))


def _miss(state: RunState, frame: pd.DataFrame, budget: Any) -> Any:
    """The fastest arch the study found on `budget`'s device, with its device figure."""
    from nas.app.budgets import BudgetMiss

    key = str(frame.sort_values(budget.metric).iloc[0]["arch_key"])
    return BudgetMiss(
        budget.text(),
        key,
        _predicted(state, budget.label, key),
        device_figure(state, budget.label, key),
    )


def _test_accuracy(state: RunState, arch: Arch) -> float:
    return 100 * float(make_test_evaluator(state).evaluate_one(arch))


def make_test_evaluator(state: RunState) -> Any:
    """Inherited-weight accuracy on the test split, BN recalibrated as in the accuracy stage,
    cached in `accuracy/test.jsonl`."""
    from nas.supernet import SubnetEvaluator

    return SubnetEvaluator(
        state.supernet,
        state.data.train,
        state.data.test,
        calib_images=state.config.accuracy.bn_batches * 128,
        seed=state.config.seed,
        cache_path=state.run_dir / "accuracy" / "test.jsonl",
        precision=run_precision(state.config.compute),
    )


def stage_report(state: RunState, progress: bool) -> None:
    from nas.app.report import write_report

    write_report(state)


# -- what each stage reads and writes ---------------------------------------------------------
def _study_elsewhere(config: Mapping[str, Any], run_dir: Path) -> None:
    """A study in a database is not the run folder's to delete."""
    storage = config.get("search", {}).get("storage")
    if storage:
        raise InputError(
            f"the search stage must be redone, but its study {config.get('name')!r} lives in "
            f"{storage}: delete it there (optuna delete-study --storage URL --study-name "
            f"{config.get('name')}) or give the run another name"
        )


register_stage(
    Stage(
        "supernet",
        stage_supernet,
        # the rest of compute is how it runs, in no fingerprint (nas.app.compute says why)
        keys=("compute.grad_accum", "compute.precision", "data", "seed", "space", "supernet"),
        writes=("supernet",),
        doc="trains (or resumes) the weight-sharing supernet",
    )
)
register_stage(
    Stage(
        "accuracy",
        stage_accuracy,
        keys=("accuracy",),
        after=("supernet",),
        reads=("supernet",),
        writes=("accuracy/predictor.npz", "accuracy/archs.csv"),
        caches=("accuracy/inherited.jsonl",),  # keyed by the checkpoint's fingerprint
        doc="inherited-weight accuracies of sampled archs; fits the accuracy predictor",
    )
)
register_stage(
    Stage(
        "latency",
        stage_latency,
        keys=("devices", "seed", "space"),
        caches=("latency",),  # each table checks its device, runtime and dtype
        doc="a table and a latency model per device",
    )
)
register_stage(
    Stage(
        "search",
        stage_search,
        keys=(
            "accuracy.bn_batches",
            "name",
            "search.budgets",
            "search.enabled",
            "search.margin",
            "search.objectives",
            "search.sampler",
            "search.storage",
        ),
        extends=("search.trials",),  # more trials continue the study
        after=("latency", "supernet"),
        reads=("supernet", "latency"),
        writes=("study.db",),
        caches=("accuracy/inherited.jsonl",),
        before_redo=_study_elsewhere,
        switch="search.enabled",  # off: hwtrain's derived archs stand in for its winners
        doc="the Optuna study over accuracy and the free metrics",
    )
)
key_added("search.enabled", True)  # run folders from before the switch keep their search
key_added("hwtrain.weight_rule", "path")  # the stage's rule before the key (and its default)
register_stage(
    Stage(
        "winners",
        stage_winners,
        extends=("compress.top_k",),
        after=("search",),
        reads=("study.db",),
        writes=("pareto.csv", "rejected.csv", "trials.csv", "winners.csv"),
        caches=("accuracy/test.jsonl",),
        doc="the best feasible archs, test accuracy and latency measured again",
    )
)
register_stage(
    Stage(
        "compress",
        stage_compress,
        keys=("compress.options", "compress.steps"),
        # a chain belongs to its arch, not to the search that chose it: a redone search keeps
        # the chains of archs it chooses again
        after=("latency", "supernet"),
        reads=("supernet", "latency", "winners.csv"),
        writes=("compress",),
        doc="the compression chain of each winner",
    )
)
register_stage(
    Stage(
        "report",
        stage_report,
        reads=("winners.csv", "trials.csv", "pareto.csv", "timings.json"),
        writes=("report.md", "report.html", "*.png"),
        doc="report.md and its plots (written again by every run)",
    )
)
