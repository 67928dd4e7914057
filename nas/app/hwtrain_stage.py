"""The run's `hwtrain` stage (issue 19): hardware-aware training on the run's own supernet,
latency models and data (`nas.app.hwtrain_work`, shared with `nas hwtrain`), beside the search
or instead of it (`search.enabled: false`); its derived archs are re-checked against the
budgets on each device's own figure and handed to the compression chain like the search's
winners. Writes RUN/hwtrain/ and adds its section to the report."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from nas.app.builtin_stages import (
    REJECTED_COLUMNS,
    RunState,
    device_figure,
    metric_of,
    recheck_winners,
)
from nas.app.compute import memory_remedy, run_precision
from nas.app.errors import InputError
from nas.app.hwtrain_work import HwDevice, HwWork, relaxed_supernet, train_and_derive
from nas.app.report import register_report_section
from nas.app.stages import Stage, register_stage

__all__ = [
    "HwtrainOutcome",
    "device_metrics",
    "latency_range",
    "loss_metrics",
    "report_section",
    "stage_hwtrain",
    "train_config",
]

log = logging.getLogger(__name__)

WHERE = {
    "space": "space.name",
    "freeze": "hwtrain.freeze",
    "target": "hwtrain.targets",
    "latency_model": "devices[].latency_model",
}


@dataclass
class HwtrainOutcome:
    """What the stage leaves for the report: `hwtrain.json`'s content, the derived archs as
    winners rows, those a budget rejected, and each loss device's margin (value, method)."""

    report: dict[str, Any]
    winners: pd.DataFrame
    rejected: list[Any]
    margins: dict[str, tuple[float, str]]


def train_config(cfg: Any, seed: int) -> Any:
    """The engine's `HWTrainConfig` of a run's `hwtrain` section (ValueError when out of
    range)."""
    from nas.hwtrain import HWTrainConfig, LossConfig

    return HWTrainConfig(
        epochs=cfg.epochs,
        warmup_epochs=cfg.warmup_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        arch_lr=cfg.arch_lr,
        relaxation=cfg.relaxation,
        paths=cfg.paths,
        max_steps_per_epoch=cfg.max_steps,
        seed=seed,
        loss=LossConfig(cfg.loss, lam=cfg.lam),
        weight_rule=cfg.weight_rule,
    )


def device_metrics(devices: list[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Latency metric (`latency_ms@NAME`, `:DTYPE` when not fp32) -> (name, dtype) of each of
    the run's devices, as the search and search.budgets name them."""
    return {f"latency_ms@{n}" + ("" if d in ("fp32", "") else f":{d}"): (n, d) for n, d in devices}


def loss_metrics(
    targets: Mapping[str, float], weights: Mapping[str, float], metrics: Iterable[str]
) -> list[str]:
    """The metrics in the loss: those with a target or a weight; with neither (a `multiplicative`
    or `additive` loss), every device of the run."""
    named = list(dict.fromkeys([*targets, *weights]))
    return named or list(metrics)


def _canonical(state: RunState, named: Mapping[str, float]) -> dict[str, float]:
    """`named` keyed by the metric names the search uses (`:DTYPE` where a device's only)."""
    from nas.app.validate import run_metric

    devices = [(d.name, d.dtype) for d in state.config.devices]
    return {run_metric(k, devices): float(v) for k, v in named.items()}


_RANGES: dict[tuple[str, ...], tuple[float, float]] = {}


def latency_range(space: Any, device: str, dtype: str) -> tuple[float, float]:
    """The lowest and highest whole-network latency of a space's archs on an emulated device,
    by its cost model (the figure the device itself gives), from the expectation's tables: the
    up-front check of a target, before any training (the stage checks again with the run's
    own latency model). Kept per process (a run checks its config more than once)."""
    import json

    import latency_models as lm
    from nas.hwtrain import ArchLogits, ExpectedCost, price_fn, probe_dims

    dims = space.dimensions()
    shape = json.dumps({k: list(v.values) for k, v in dims.items()}, default=str)
    key = (space.name, shape, device, dtype)
    if key not in _RANGES:
        roles = probe_dims(space.supernet())
        relaxed = [k for k, r in roles.items() if r.kind != "input"]
        frozen = {k: max(dims[k].values) for k, r in roles.items() if r.kind == "input"}
        model = lm.create_latency_model("costmodel", space, lm.get_device(device), dtype=dtype)
        pricer = price_fn(lm.layer_pricer(model), space)
        _RANGES[key] = ExpectedCost(ArchLogits(space, relaxed, frozen), pricer).value_range()
    return _RANGES[key]


def _margins(state: RunState, labels: Mapping[str, str]) -> dict[str, tuple[float, str]]:
    """Each loss device's margin: hwtrain.margin, or search.margin when it says `search`;
    `auto` is the device's own held-out margin, as its budgets keep."""
    from nas.search.constraints import auto_margin

    margin = state.config.hwtrain.margin
    if margin == "search":
        margin = state.config.search.margin
    out: dict[str, tuple[float, str]] = {}
    for metric, label in labels.items():
        held = state.heldout.get(label)
        if margin != "auto":
            out[metric] = (float(margin), "fixed")
        elif held is None:
            out[metric] = (0.0, "none: no held-out archs on the device")
        else:
            m = auto_margin(held.measured_ms, held.predicted_ms)
            out[metric] = (m.value, m.method)
    return out


def _train(state: RunState, out: Path, margins: Mapping[str, tuple[float, str]]) -> dict:
    cfg = state.config.hwtrain
    labels = {m: label for label, m in metric_of(state).items()}
    devices = [
        HwDevice(
            m,
            _canonical(state, cfg.targets).get(m),
            _canonical(state, cfg.weights).get(m, 1.0),
            margins[m][0],
            state.latency_models[labels[m]],
            state.devices[labels[m]],
        )
        for m in margins
    ]
    work = HwWork(
        relaxation=cfg.relaxation,
        paths=cfg.paths,
        freeze={k: str(v) for k, v in cfg.freeze.items()},
        terms=list(cfg.terms),
        tolerance=cfg.tolerance,
        mc=cfg.mc,
        top=max(5, cfg.top_k),
        seed=state.config.seed,
        where=WHERE,
    )
    from nas.data import StreamedDataset

    if isinstance(state.data, StreamedDataset):
        raise InputError(
            "hwtrain: it trains on data held in memory, and this run streams its data set "
            "from disk: set data.args.stream: false (or turn hwtrain off)"
        )
    # the run's supernet is the start: its training is the weights' warm-up
    relaxed = relaxed_supernet(state.space, work, copy.deepcopy(state.supernet))
    try:
        config = train_config(cfg, state.config.seed)
    except ValueError as err:
        raise InputError(f"hwtrain: {err}") from None

    def figure(d: HwDevice, arch: Any) -> float:
        return device_figure(state, labels[d.name], state.space.key(arch))

    compute = state.config.compute  # the run's device and precision; the supernet follows it
    with memory_remedy("hwtrain", compute, "hwtrain.batch_size"):
        return train_and_derive(
            state.space,
            devices,
            config,
            relaxed,
            state.data,
            out,
            work,
            figure,
            precision=run_precision(compute),
        )


def stage_hwtrain(state: RunState, progress: bool) -> None:
    """Train (resuming RUN/hwtrain/'s checkpoint), derive, and hand the derived archs on."""
    from nas.core.files import read_json

    out = state.run_dir / "hwtrain"
    out.mkdir(parents=True, exist_ok=True)
    labels = {m: label for label, m in metric_of(state).items()}
    cfg = state.config.hwtrain
    loss = loss_metrics(_canonical(state, cfg.targets), _canonical(state, cfg.weights), labels)
    margins = _margins(state, {m: labels[m] for m in loss})
    done = out / "hwtrain.json"
    if done.exists():  # finished: removed with the folder when the stage is redone
        report = read_json(done, "the hwtrain stage's results", "run again with --force hwtrain")
    else:
        report = _train(state, out, margins)
    winners, rejected = _hand_off(state, report, out)
    state.more_winners["hwtrain"] = winners
    state.extra["hwtrain"] = HwtrainOutcome(report, winners, rejected, margins)
    log.info("hwtrain: derived %s (%s)", report["derived"]["key"], report["rule"])


def _hand_off(state: RunState, report: Mapping[str, Any], out: Path) -> tuple[pd.DataFrame, list]:
    """The derived arch, then the most probable ones, re-checked against the budgets on each
    device's own figure: the first `top_k` that keep them all, as winners rows."""
    keys = [report["derived"]["key"], *(t["key"] for t in report["top"])]
    probability = {report["derived"]["key"]: report["derived"]["probability"]}
    probability.update({t["key"]: t["probability"] for t in report["top"]})
    candidates = [_Candidate(state, key) for key in dict.fromkeys(keys)]
    frame, checked, _ = recheck_winners(state, candidates, state.config.hwtrain.top_k)
    if not frame.empty:
        frame.insert(1, "source", "hwtrain")
        frame.insert(2, "probability", [probability[str(k)] for k in frame["arch_key"]])
    frame.to_csv(out / "winners.csv", index=False)
    pd.DataFrame([vars(r) for r in checked.rejected], columns=REJECTED_COLUMNS).to_csv(
        out / "rejected.csv", index=False
    )
    if frame.empty:
        log.warning("hwtrain: none of its %d most probable archs keeps the budgets", len(keys))
    return frame, checked.rejected


class _Candidate(dict[str, Any]):
    """A candidate row whose `accuracy` is measured when the re-check first reads it: on the
    run's supernet, as the search scores its trials (the accuracy stage's evaluator:
    validation split, BN recalibrated, cached); the re-check stops at `top_k` kept."""

    def __init__(self, state: RunState, key: str) -> None:
        super().__init__(arch_key=key)
        self.state = state

    def __missing__(self, name: str) -> float:
        if name != "accuracy":
            raise KeyError(name)
        arch = self.state.space.from_key(self["arch_key"])
        self["accuracy"] = 100 * float(self.state.evaluator.evaluate_one(arch))
        return float(self["accuracy"])


register_stage(
    Stage(
        "hwtrain",
        stage_hwtrain,
        keys=("accuracy.bn_batches", "hwtrain", "search.budgets", "search.margin"),
        after=("latency", "supernet"),
        reads=("supernet", "latency"),
        writes=("hwtrain",),
        caches=("accuracy/inherited.jsonl", "accuracy/test.jsonl"),
        switch="hwtrain.enabled",
        doc="hardware-aware training: the devices in the loss; its derived archs",
    ),
    before="winners",
)


# -- its section of the run report ------------------------------------------------------------
DIFF_CI95_PTS = 8.16
"""The 95 % interval of an accuracy difference between two archs on the demo settings (test-set
and training-seed noise, benchmarks/results/accuracy_noise: `targets.diff_ci95_pts`): a smaller
difference is not resolvable there."""


def report_section(state: Any) -> list[str]:
    """Target, derived arch, predicted against device figure per device, accuracy, the search
    at equal latency, the logits' trajectory and the cost; nothing when the stage never ran."""
    outcome = getattr(state, "extra", {}).get("hwtrain")
    if outcome is None:
        return []
    report, cfg = outcome.report, state.config.hwtrain
    derived, argmax = report["derived"], report["argmax"]
    lines = [
        "## Hardware-aware training",
        "",
        f"`{cfg.relaxation}` relaxation, `{cfg.loss}` loss, {cfg.epochs} epochs from the run's "
        f"supernet ({'beside' if state.config.search.enabled else 'instead of'} the search). "
        f"Derived ({report['rule']}): `{derived['key']}`, probability "
        f"{derived['probability']:.3g}.",
        "",
    ]
    if argmax["key"] != derived["key"]:
        errors = ", ".join(f"{k} {100 * v:+.1f} %" for k, v in argmax["target_error"].items())
        lines += [f"The pure argmax, `{argmax['key']}`, misses its targets by {errors}.", ""]
    lines += [_device_table(state, outcome), ""]
    acc = report["accuracy"]
    lines += [
        f"Test accuracy with the weights hwtrain trained (BN recalibrated): derived "
        f"{100 * acc['derived']:.2f} %, argmax {100 * acc['argmax']:.2f} %. "
        + _mc_sentence(report),
        "",
    ]
    lines += _handed_lines(outcome) + _versus_search(state, outcome)
    if (state.run_dir / "hwtrain" / "trajectory.png").exists():
        lines += ["![Logit trajectory](hwtrain/trajectory.png)", ""]
    return lines + _cost_lines(state, report)


def _device_table(state: Any, outcome: HwtrainOutcome) -> str:
    report = outcome.report
    arch = report["derived"]["arch"]
    rows = []
    for label, metric in metric_of(state).items():
        target = report["targets"].get(metric)
        aim = report["aims"].get(metric)
        predicted = float(state.latency_models[label].predict_arch(state.space, arch))
        figure = device_figure(state, label, state.space.key(arch))
        margin = outcome.margins.get(metric)
        rows.append(
            {
                "device": metric,
                "target ms": target,
                "margin": f"{100 * margin[0]:.1f} % ({margin[1]})" if margin else "",
                "aim ms": aim,
                "predicted ms": predicted,
                "device ms": figure,
                "predicted vs aim %": 100 * (predicted / aim - 1) if aim else None,
                "device vs target %": 100 * (figure / target - 1) if target else None,
                "device vs predicted %": 100 * (figure / predicted - 1),
            }
        )
    frame = pd.DataFrame(rows)
    return _markdown(frame)


def _markdown(frame: pd.DataFrame) -> str:
    """A Markdown table (numbers to 4 significant digits, blanks for none; arch keys hold
    `|`, escaped to keep the columns)."""
    if frame.empty:
        return "_(none)_"

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return ""
        return (format(v, ".4g") if isinstance(v, float) else str(v)).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * frame.shape[1]]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines)


def _mc_sentence(report: Mapping[str, Any]) -> str:
    parts = [
        f"{name}: {report['expectation_method'][name]}, Monte-Carlo ratio "
        f"{checks['final']['ratio']:.2f}"
        for name, checks in report["monte_carlo"].items()
    ]
    return (
        "Expected cost against a Monte-Carlo mean at the final logits (within max(2 %, 3 SE) "
        "when the ratio is at most 1): " + "; ".join(parts) + "."
    )


def _handed_lines(outcome: HwtrainOutcome) -> list[str]:
    lines = [
        "Handed to the compression chain (re-checked, like the search's winners, against "
        "every latency budget on the device's own figure; `hwtrain/winners.csv`):",
        "",
        _markdown(outcome.winners),
        "",
    ]
    for r in outcome.rejected:
        lines += [
            f"`{r.arch_key}` was set aside: {r.device_ms:.4g} ms on the device against "
            f"`{r.budget}` (predicted {r.predicted_ms:.4g}).",
            "",
        ]
    return lines


def _versus_search(state: Any, outcome: HwtrainOutcome) -> list[str]:
    """Each handed arch against the search's best arch at the same or lower predicted latency
    on each device (validation accuracy, both with the run supernet's weights)."""
    from nas.search import trials_frame

    if state.study is None or outcome.winners.empty:
        return []
    frame = trials_frame(state.study)
    rows = []
    for _, w in outcome.winners.iterrows():
        for label, metric in metric_of(state).items():
            if metric not in frame.columns:
                continue
            ms = float(w[f"predicted_ms@{label}"])
            within = frame[frame[metric] <= ms * (1 + 1e-9)]
            best = within.sort_values("accuracy", ascending=False).head(1)
            search_acc = float(best["accuracy"].iloc[0]) if not best.empty else None
            diff = None if search_acc is None else float(w["val_accuracy"]) - search_acc
            rows.append(
                {
                    "hwtrain arch": w["arch_key"],
                    "device": metric,
                    "at most ms": ms,
                    "hwtrain val acc": float(w["val_accuracy"]),
                    "search's best val acc": search_acc,
                    "difference pts": diff,
                    "resolvable": "" if diff is None else _resolvable(diff),
                }
            )
    return [
        "Against the search at equal latency: the best arch the search tried at the same or "
        "lower predicted latency on each device (validation accuracy, both with the run's "
        f"supernet weights; a difference inside +-{DIFF_CI95_PTS} points, the 95 % interval of "
        "a difference on the demo settings, is not resolvable):",
        "",
        _markdown(pd.DataFrame(rows)),
        "",
    ]


def _resolvable(diff: float) -> str:
    return "yes" if abs(diff) > DIFF_CI95_PTS else "not resolvable"


def _cost_lines(state: Any, report: Mapping[str, Any]) -> list[str]:
    from nas.app.timings import load_timings, stage_totals

    totals = stage_totals(load_timings(state.run_dir))
    hw = totals.get("hwtrain", state.timings_s.get("hwtrain", 0.0))
    parts = [f"the hwtrain stage {hw:.0f} s (its last training {report['train_s']:.0f} s)"]
    if "search" in totals:
        parts.append(f"the search stage {totals['search']:.0f} s")
    if "supernet" in totals:
        parts.append(f"the supernet stage, which both start from, {totals['supernet']:.0f} s")
    return ["Wall time over all invocations: " + "; ".join(parts) + ".", ""]


register_report_section("hwtrain", report_section)
