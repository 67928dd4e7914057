"""The built-in stages of a run: supernet -> accuracy -> latency -> search -> winners ->
compress -> report, each a library call on a `RunState`, registered with what it reads and
writes (`nas.app.stages`). A later stage (hardware-aware training, on-device learning,
federated rounds) joins by one more `register_stage` call.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nas.app.config import DeviceConfig, RunConfig
from nas.app.errors import FileProblem, InputError
from nas.app.stages import Stage, register_stage
from nas.core.files import write_json_atomic
from nas.core.space import Arch, SearchSpace, as_rng

__all__ = [
    "RunState",
    "chain_devices",
    "stage_accuracy",
    "stage_compress",
    "stage_latency",
    "stage_report",
    "stage_search",
    "stage_supernet",
    "stage_winners",
    "unmet_budgets",
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


def _device_label(dev: DeviceConfig) -> str:
    return f"{dev.name}-{dev.dtype}"


# -- stages -----------------------------------------------------------------------------------


def stage_supernet(state: RunState, progress: bool) -> None:
    from nas.supernet import train_supernet

    cfg = state.config.supernet
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
    )
    state.supernet = result.supernet.eval()
    log.info("supernet: step %d, %.0f images/s", result.step, result.images_per_s)


def stage_accuracy(state: RunState, progress: bool) -> None:
    """Inherited-weight accuracy of sampled archs; fit the predictor and measure its ranking."""
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
    )
    rng = as_rng(state.config.seed)
    archs = _distinct(state.space, cfg.train_archs, rng)
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


def _distinct(space: SearchSpace, n: int, rng: np.random.Generator) -> list[Arch]:
    seen: dict[str, Arch] = {}
    for _ in range(50 * n):
        a = space.sample(rng)
        seen.setdefault(space.key(a), a)
        if len(seen) == n:
            break
    return list(seen.values())


def stage_latency(state: RunState, progress: bool) -> None:
    """One table per device (resumable CSV: the space's layers, or the runtime's kernels with
    `latency_model: kernels`), a latency model on it, its error on whole networks."""
    import latency_models as lm
    from latency_models.validate import metrics as latency_metrics

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
        if dev.calibration_archs > 0:
            rng = as_rng(state.config.seed + 100 + i)
            archs = _distinct(state.space, 2 * dev.calibration_archs, rng)
            fit, test = archs[: dev.calibration_archs], archs[dev.calibration_archs :]
            cache = out / f"{label}-networks.json"
            measured = _measured_networks(state.space, device, dev.dtype, fit + test, cache)
            y_fit = np.array([measured[state.space.key(a)] for a in fit])
            y_test = np.array([measured[state.space.key(a)] for a in test])
            plain = np.asarray(model.predict_many(state.space, test))
            model = lm.create_latency_model(
                kind, state.space, device, dtype=dev.dtype, table=table, fit=(fit, y_fit)
            )
            corrected = np.asarray(model.predict_many(state.space, test))
            state.latency_quality[label] = {
                **{f"lut_{k}": v for k, v in latency_metrics(plain, y_test).items()},
                **{f"corrected_{k}": v for k, v in latency_metrics(corrected, y_test).items()},
                "n_fit": len(fit),
                "n_test": len(test),
            }
        model.device = dev.name
        model.dtype = dev.dtype
        state.latency_models[label] = model


def _measured_networks(
    space: SearchSpace, device: Any, dtype: str, archs: Sequence[Arch], cache: Path
) -> dict[str, float]:
    """Whole-network latencies (ms, the headline minimum of `latency_models.measure`), cached
    per arch key so a killed run re-measures nothing."""
    done: dict[str, float] = {}
    if cache.exists():
        try:
            done = dict(json.loads(cache.read_text()))
        except (ValueError, TypeError) as err:
            raise FileProblem(
                cache,
                f"not a JSON object of arch key -> latency in ms ({err})",
                "delete it: the networks are measured again",
            ) from None
    for a in archs:
        key = space.key(a)
        if key not in done:
            done[key] = float(device.measure_arch(space, a, dtype).latency_ms)
            write_json_atomic(cache, done, indent=0, sort_keys=False)
    return done


def stage_search(state: RunState, progress: bool) -> None:
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
    state.study = run_search(
        state.space,
        objectives,
        accuracy=lambda arch: 100 * evaluator.evaluate_one(arch),
        latency_models=models,
        constraints={run_metric(k, devices): v for k, v in cfg.budgets.items()},
        sampler=cfg.sampler,
        n_evaluations=cfg.trials,
        storage=storage,
        study_name=state.config.name,
        seed=state.config.seed,
    )


def stage_winners(state: RunState, progress: bool) -> None:
    """The best feasible archs by accuracy; test accuracy and latency measured again."""
    from nas.search import pareto_frame, trials_frame

    frame = trials_frame(state.study)
    frame.to_csv(state.run_dir / "trials.csv", index=False)
    front = pareto_frame(state.study)
    front.to_csv(state.run_dir / "pareto.csv", index=False)
    feasible = frame[frame["feasible"]] if "feasible" in frame.columns else frame
    if feasible.empty:
        raise InputError(unmet_budgets(frame, state.study))
    top = (
        feasible.sort_values("accuracy", ascending=False)
        .drop_duplicates("arch_key")
        .head(state.config.compress.top_k)
    )
    rows = []
    for _, row in top.iterrows():
        arch = state.space.from_key(str(row["arch_key"]))
        test_acc = _test_accuracy(state, arch)
        out: dict[str, Any] = {
            "arch_key": row["arch_key"],
            "val_accuracy": row["accuracy"],
            "test_accuracy": test_acc,
        }
        cost = state.space.cost(arch)
        out.update(macs=cost.macs, params=cost.params, peak_bytes=cost.peak_activation_bytes)
        for label, model in state.latency_models.items():
            out[f"predicted_ms@{label}"] = float(model.predict_arch(state.space, arch))
            dev = state.devices[label]
            out[f"measured_ms@{label}"] = float(
                dev.measure_arch(state.space, arch, model.dtype).latency_ms
            )
        rows.append(out)
    state.winners = pd.DataFrame(rows)
    state.winners.to_csv(state.run_dir / "winners.csv", index=False)


def unmet_budgets(frame: pd.DataFrame, study: Any) -> str:
    """The sentence for a search none of whose archs keeps every budget: for each budget, the
    best value found against the bound."""
    from nas.search import parse_constraint

    stored = study.user_attrs.get("edge_nas", {}).get("constraints", []) if study else []
    parts = []
    for text in stored:
        metric, op, bound = parse_constraint(str(text))
        if metric not in frame.columns or frame.empty:
            continue
        best = frame[metric].min() if op == "<=" else frame[metric].max()
        word = "fastest" if metric.startswith("latency_ms@") else "best"
        kept = int(((frame[metric] <= bound) if op == "<=" else (frame[metric] >= bound)).sum())
        parts.append(
            f"the {word} {metric} found is {best:.4g} against the budget {op} {bound:g} "
            f"({kept} of {len(frame)} archs keep it)"
        )
    found = "; ".join(parts) or f"{len(frame)} archs tried"
    return (
        f"no arch the search tried keeps every budget: {found}. Loosen search.budgets (a "
        "rerun redoes only the search and what follows it) or search longer (search.trials)"
    )


def _test_accuracy(state: RunState, arch: Arch) -> float:
    from nas.supernet import SubnetEvaluator

    test_eval = SubnetEvaluator(
        state.supernet,
        state.data.train,
        state.data.test,
        calib_images=state.config.accuracy.bn_batches * 128,
        seed=state.config.seed,
        cache_path=state.run_dir / "accuracy" / "test.jsonl",
    )
    return 100 * float(test_eval.evaluate_one(arch))


def stage_compress(state: RunState, progress: bool) -> None:
    from latency_models import RealDevice
    from nas.compress import ChainConfig, render_report, run_chain

    cfg = state.config.compress
    if not cfg.steps or state.winners is None:
        return
    chain_config = ChainConfig.from_dict(dict(cfg.options))
    # the run's real devices themselves (emulated and table devices time no module)
    real = chain_devices([d for d in state.devices.values() if isinstance(d, RealDevice)])
    model = next(iter(state.latency_models.values()), None)
    for _, row in state.winners.iterrows():
        arch = state.space.from_key(str(row["arch_key"]))
        result = run_chain(
            state.run_dir,
            arch,
            space=state.space,
            data=state.data,
            steps=list(cfg.steps),
            config=chain_config,
            student=state.supernet.export,
            teacher="largest",
            devices=real,
            latency_predictor=model,
            seed=state.config.seed,
        )
        state.compress_tables[str(row["arch_key"])] = render_report(result.rows)
        state.compress_rows[str(row["arch_key"])] = list(result.rows)


def chain_devices(real: Sequence[Any]) -> list[Any]:
    """The devices a compression chain times on: the given real devices (models and the
    artifacts of their runtime), and for each artifact runtime none of them runs, an
    artifact-only timer named by the registry's 1-thread device of that runtime
    (`xnnpack-1t`, `ort-cpu-1t`), so every exported file is timed where it runs."""
    import latency_models as lm
    from nas.compress import ArtifactTimer

    devices = list(real)
    covered = {d.runtime for d in devices}
    for name in lm.DEVICES:
        if lm.DEVICES.factory(name).kind != "real":  # type: ignore[attr-defined]
            continue
        device = lm.get_device(name)
        if device.runtime not in covered | {"torch"} and device.threads == 1:
            devices.append(ArtifactTimer(device.name, device.runtime, device.threads))
            covered.add(device.runtime)
    return devices


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
        keys=("data", "seed", "space", "supernet"),
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
        doc="the Optuna study over accuracy and the free metrics",
    )
)
register_stage(
    Stage(
        "winners",
        stage_winners,
        extends=("compress.top_k",),
        after=("search",),
        reads=("study.db",),
        writes=("pareto.csv", "trials.csv", "winners.csv"),
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
