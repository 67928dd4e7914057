"""Do winners keep their budget on the device? No margin, `auto`, and a fixed 10 % (issue 23).

1. `tiny` on the embedded digits with the demo's settings (`nas.app.demo_config`: supernet,
   inherited-weight accuracy, a GP predictor on 40 archs), `--seeds` seeds, on
   `pixel3-emulated` (priced whole) and `ort-cpu-1t` (measured on this machine). Each device's
   latency model is the run's own (`nas.app.builtin_stages.stage_latency`: a LUT, checked on
   held-out archs against the device's figure and corrected where that pays). Budgets at the
   25th / 50th / 75th percentile of the device's whole-network figure over uniformly sampled
   archs. Per budget and margin, the winners are picked as the run picks them, with one
   shortcut, stated in the table: instead of a 200-trial study, a seeded pool of archs is
   ranked by the accuracy predictor among those predicted within budget (predicted x (1 +
   margin) <= budget), the best `--shortlist` get their inherited validation accuracy, and the
   `top_k` best of those are the winners. The margin decides feasibility exactly as in the
   study. Each winner's device figure (priced, or measured; on `ort-cpu-1t` measured three
   times for its test-retest spread) and its test accuracy (inherited weights, BN
   recalibrated) are recorded.
2. `nb201` with the calibrated cost model of the `nb201-pixel3` (CIFAR-10) and `nb201-raspi4`
   (CIFAR-100) table devices: real phone figures; the model is fitted on 100 archs and checked
   on 100 others; budgets at the same percentiles of the table; winners the `top_k` most
   accurate archs (the CSV's test accuracy) predicted within budget; checked against the
   table's own figure.

Shares are taken before the run's re-check (which replaces a winner over budget, so after it
every winner is within budget wherever any arch is). Accuracy costs are the winners' mean test
accuracy without a margin minus with it; on `tiny` they are judged with the interval of
`benchmarks/accuracy_noise.py` (`targets.diff_ci95_pts`).

    python benchmarks/budgets.py --out benchmarks/results/budgets [--seeds 3] [--quick]

Resumable: supernets, inherited accuracies, LUTs and measured networks are kept in --out.
Writes results.json (per-case rows, medians, targets, the commit) and table.md into --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

import latency_models as lm
from benchmarks._budgets_report import MARGINS, summarise, table, with_earlier
from nas.app.budgets import (
    FREE_CHECK_ARCHS,
    LatencyBudget,
    budget_margins,
    device_figures,
    recheck,
)
from nas.app.builtin_stages import (
    RunState,
    make_test_evaluator,
    stage_accuracy,
    stage_latency,
    stage_supernet,
)
from nas.app.config import DeviceConfig, git_commit
from nas.app.demo import demo_config
from nas.core.space import Arch, SearchSpace
from nas.data import load_dataset
from nas.predictors import load_predictor
from nas.search import auto_margin
from nas.search.objectives import latency_metric_name
from nas.supernet import SubnetEvaluator
from search_spaces import NB201Space, TinySpace

ROOT = Path(__file__).resolve().parents[1]
NB201_CSV = ROOT.parent / "shared" / "benchmarks" / "nb201" / "nb201.csv"
PERCENTILES = (25, 50, 75)
TOP_K = 2
QUICK_DATA: dict[str, Any] = {"copies_train": 1, "copies_val": 1, "copies_test": 1}
NB201 = {"nb201-pixel3": ("pixel3", "cifar10_acc"), "nb201-raspi4": ("raspi4", "cifar100_acc")}
log = logging.getLogger("budgets")


# -- tiny: the run's own pieces ---------------------------------------------------------------
def _latency_state(out: Path, space: SearchSpace, quick: bool) -> RunState:
    """Both devices' tables and latency models, checked on held-out archs (the run's stage)."""
    n_check = 10 if quick else FREE_CHECK_ARCHS
    config = demo_config(search={"budgets": {}})
    config.devices = [
        DeviceConfig("pixel3-emulated", lut_archs=50 if quick else 200, calibration_archs=n_check),
        DeviceConfig("ort-cpu-1t", lut_archs=5 if quick else 30, calibration_archs=n_check),
    ]
    state = RunState(config, out / "latency-run", space, data=None)
    state.run_dir.mkdir(parents=True, exist_ok=True)
    stage_latency(state, progress=False)
    return state


def _budgets(state: RunState, space: SearchSpace, label: str, quick: bool) -> dict[int, float]:
    """Budgets at percentiles of the device's own figure over uniformly sampled archs: priced
    whole where free (500 archs), else the archs the latency stage measured."""
    device = state.devices[label]
    if device.kind == "real":
        figures = json.loads((state.run_dir / "latency" / f"{label}-networks.json").read_text())
        values = np.array(list(figures.values()))
    else:
        rng = np.random.default_rng(12345)
        archs = [space.sample(rng) for _ in range(100 if quick else 500)]
        values = np.array([device.measure_arch(space, a).latency_ms for a in archs])
    return {p: float(np.percentile(values, p)) for p in PERCENTILES}


def _seed_state(out: Path, space: SearchSpace, data: Any, seed: int, quick: bool) -> RunState:
    over: dict[str, Any] = {"seed": seed, "name": f"budgets-{seed}"}
    if quick:
        over |= {"supernet": {"epochs": 1}, "accuracy": {"train_archs": 12}}
    config = demo_config(**over)
    state = RunState(config, out / f"tiny-seed-{seed}", space, data)
    state.run_dir.mkdir(parents=True, exist_ok=True)
    stage_supernet(state, progress=False)
    stage_accuracy(state, progress=False)
    return state


def _tiny(args: argparse.Namespace, rows: list[dict[str, Any]], info: dict[str, Any]) -> None:
    space = TinySpace()
    lat = _latency_state(args.out, space, args.quick)
    info["latency_quality"] = lat.latency_quality
    metric_of = {label: latency_metric_name(m) for label, m in lat.latency_models.items()}
    budgets = {label: _budgets(lat, space, label, args.quick) for label in lat.latency_models}
    info["tiny_budgets_ms"] = budgets
    data = load_dataset("digits", **(QUICK_DATA if args.quick else {}))
    rng = np.random.default_rng(777)
    pool = list({space.key(a): a for a in (space.sample(rng) for _ in range(args.pool))}.values())
    predicted_ms = {
        label: np.asarray(m.predict_many(space, pool)) for label, m in lat.latency_models.items()
    }
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        state = _seed_state(args.out, space, data, seed, args.quick)
        predictor = load_predictor(state.run_dir / "accuracy" / "predictor.npz")
        predicted_acc = np.asarray(predictor.predict(space.encode_many(pool)))
        test_eval = make_test_evaluator(state)
        for label, model in lat.latency_models.items():
            device = lat.devices[label]
            for pct, bound in budgets[label].items():
                margins = budget_margins({metric_of[label]: bound}, lat.heldout, metric_of, "auto")
                for mode, margin in MARGINS.items():
                    m = margins[metric_of[label]].value if margin == "auto" else float(margin)
                    ok = predicted_ms[label] * (1 + m) <= bound
                    ranked = _ranked(state, pool, predicted_acc, ok, args.shortlist)
                    row = {
                        "space": "tiny",
                        "device": label,
                        "kind": device.kind,
                        "seed": seed,
                        "percentile": pct,
                        "budget_ms": bound,
                        "margin_mode": mode,
                        "margin": m,
                        "n_feasible_pool": int(ok.sum()),
                    }
                    row |= _tiny_winners(lat, label, model, ranked, bound, test_eval, space)
                    rows.append(row)
                    log.info(
                        "tiny seed %d %s p%d %s: margin %.3f, within %s, acc %s",
                        seed, label, pct, mode, m, row["within"], row["test_accuracy"],
                    )  # fmt: skip
        info.setdefault("tiny_seed_s", []).append(time.perf_counter() - t0)
        save(args, rows, info, partial=seed + 1 < args.seeds)  # a killed run keeps its seeds


def _ranked(
    state: RunState, pool: list[Arch], acc: np.ndarray, ok: np.ndarray, shortlist: int
) -> list[Arch]:
    """The run's candidates, from the pool instead of a study: the predictor's best feasible
    `shortlist` archs ranked by inherited validation accuracy (the first TOP_K are the
    winners before the re-check)."""
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return []
    best = idx[np.argsort(-acc[idx], kind="stable")[:shortlist]]
    short = [pool[int(i)] for i in best]
    val = state.evaluator.evaluate(short, progress=False)
    return [short[int(i)] for i in np.argsort(-np.asarray(val), kind="stable")]


def _rechecked(
    space: SearchSpace, ranked: list[Arch], bound: float, figure: Any
) -> tuple[list[Arch], int]:
    """The run's re-check (`nas.app.budgets.recheck`) over `ranked`: the first TOP_K within the
    budget on the device's figure (`figure(arch) -> ms`), and how many were replaced."""
    by_key = {space.key(a): a for a in ranked}
    budget = LatencyBudget("latency", "device", bound)
    rows = [{"arch_key": k, "accuracy": -i} for i, k in enumerate(by_key)]
    checked = recheck(rows, TOP_K, [budget], lambda _, k: figure(by_key[k]), lambda _, k: 0.0)
    return [by_key[str(r["arch_key"])] for r, _ in checked.kept], len(checked.rejected)


def _tiny_winners(
    lat: RunState,
    label: str,
    model: Any,
    ranked: list[Arch],
    bound: float,
    test_eval: SubnetEvaluator,
    space: SearchSpace,
) -> dict[str, Any]:
    """The winners before the re-check (the first TOP_K) and after it, with their figures and
    test accuracies; on a real runtime each winner after the re-check is measured twice more
    (its test-retest spread, and a fresh figure the re-check did not choose on)."""
    device = lat.devices[label]
    cache = lat.run_dir / "latency" / f"{label}-networks.json"

    def figure(arch: Arch) -> float:
        return device_figures(space, device, model.dtype, [arch], cache)[space.key(arch)]

    before = ranked[:TOP_K]
    after, replaced = _rechecked(space, ranked, bound, figure)
    fresh: list[float] = []
    retest: list[float] = []
    if device.kind == "real":
        for a in after:
            again = [device.measure_arch(space, a, model.dtype).latency_ms for _ in range(2)]
            every = [figure(a), *again]
            retest.append((max(every) - min(every)) / min(every))
            fresh.append(again[-1])
    return {
        **_winner_fields(space, model, before, [figure(a) for a in before], bound, test_eval),
        **{
            f"after_{k}": v
            for k, v in _winner_fields(
                space, model, after, [figure(a) for a in after], bound, test_eval
            ).items()
        },
        "replaced": replaced,
        "retest_spread": retest,
        "fresh_ms": fresh,
        "fresh_within": [f <= bound for f in fresh],
    }


def _winner_fields(
    space: SearchSpace,
    model: Any,
    winners: list[Arch],
    figures: list[float],
    bound: float,
    test_eval: SubnetEvaluator,
) -> dict[str, Any]:
    test = [100 * float(test_eval.evaluate_one(a)) for a in winners]
    return {
        "winners": [space.key(a) for a in winners],
        "predicted_ms": [float(model.predict_arch(space, a)) for a in winners],
        "device_ms": figures,
        "within": [f <= bound for f in figures],
        "test_accuracy": test,
        "mean_test_accuracy": float(np.mean(test)) if test else None,
    }


# -- nb201: table devices with the calibrated cost model --------------------------------------
def _nb201(args: argparse.Namespace, rows: list[dict[str, Any]], info: dict[str, Any]) -> None:
    import pandas as pd

    space = NB201Space()
    csv = pd.read_csv(args.csv)
    runtime_specs = lm.RuntimeSpecs()
    rng = np.random.default_rng(4242)
    pool_size = min(args.nb201_pool, len(csv))
    for name, (profile, acc_col) in NB201.items():
        table = lm.get_device(name, table=args.csv, space=space)
        assert isinstance(table, lm.TabularDevice)
        archs = table.archs()
        figure = np.array(table.latencies_ms(archs))
        acc = csv[acc_col].to_numpy(float)
        # a degenerate cell (no path from input to output) is no network: never a candidate
        live = np.array([space.canonical_key(a) != "degenerate" for a in archs])
        budgets = {p: float(np.percentile(figure, p)) for p in PERCENTILES}
        info.setdefault("nb201_budgets_ms", {})[name] = budgets
        phone = lm.EmulatedDevice(lm.PROFILES[profile], runtime_specs=runtime_specs)
        pool_idx = np.sort(rng.choice(np.flatnonzero(live), pool_size, replace=False))
        pool = [archs[int(i)] for i in pool_idx]
        for seed in range(args.seeds):
            pick = np.random.default_rng(seed).choice(np.flatnonzero(live), 200, replace=False)
            fit, held = pick[:100], pick[100:]
            fit_archs = [archs[i] for i in fit]
            cal = lm.calibrate(phone, space, fit_archs, figure[fit], runtime_specs=runtime_specs)
            held_pred = np.array([cal.device.arch_ms(space, archs[i]) for i in held])
            auto = auto_margin(figure[held], held_pred)
            pred = np.array([cal.device.arch_ms(space, a) for a in pool])
            for pct, bound in budgets.items():
                for mode, margin in MARGINS.items():
                    m = auto.value if margin == "auto" else float(margin)
                    ok = np.flatnonzero(pred * (1 + m) <= bound)
                    order = ok[np.argsort(-acc[pool_idx[ok]], kind="stable")]
                    best = order[:TOP_K]
                    idx = pool_idx[best]
                    kept = [i for i in pool_idx[order] if figure[i] <= bound][:TOP_K]
                    after = np.array(kept, dtype=int)
                    rows.append(
                        {
                            "space": "nb201",
                            "device": name,
                            "kind": "tabular",
                            "seed": seed,
                            "percentile": pct,
                            "budget_ms": bound,
                            "margin_mode": mode,
                            "margin": m,
                            "heldout_mape_pct": float(
                                100 * np.mean(np.abs(held_pred / figure[held] - 1))
                            ),
                            "n_feasible_pool": int(ok.size),
                            "winners": [space.key(archs[int(i)]) for i in idx],
                            "predicted_ms": pred[best].tolist(),
                            "device_ms": figure[idx].tolist(),
                            "within": (figure[idx] <= bound).tolist(),
                            "retest_spread": [],
                            "test_accuracy": acc[idx].tolist(),
                            "mean_test_accuracy": float(acc[idx].mean()) if idx.size else None,
                            "after_winners": [space.key(archs[int(i)]) for i in after],
                            "after_device_ms": figure[after].tolist(),
                            "after_within": (figure[after] <= bound).tolist(),
                            "after_test_accuracy": acc[after].tolist(),
                            "after_mean_test_accuracy": (
                                float(acc[after].mean()) if after.size else None
                            ),
                            "replaced": _n_replaced(figure[pool_idx[order]] <= bound),
                        }
                    )
            log.info("nb201 %s seed %d: auto margin %.3f", name, seed, auto.value)


def _n_replaced(within: np.ndarray) -> int:
    """Candidates over budget that the re-check skipped before it kept TOP_K (or ran out)."""
    kept = skipped = 0
    for ok in within:
        if kept == TOP_K:
            break
        kept, skipped = kept + int(ok), skipped + int(not ok)
    return skipped


# -- summary ----------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pool", type=int, default=3000, help="tiny archs ranked per budget")
    parser.add_argument("--shortlist", type=int, default=10, help="archs given inherited val acc")
    parser.add_argument("--nb201-pool", type=int, default=4000)
    parser.add_argument("--csv", type=Path, default=NB201_CSV)
    parser.add_argument("--only", choices=("tiny", "nb201"), default=None)
    parser.add_argument("--quick", action="store_true", help="1 seed, small tables and pools")
    args = parser.parse_args()
    args.commit = git_commit(ROOT, mark_dirty=True)
    if args.quick:
        args.seeds, args.pool, args.shortlist, args.nb201_pool = 1, 300, 4, 500
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    if args.only in (None, "tiny"):
        _tiny(args, rows, info)
    if args.only in (None, "nb201"):
        _nb201(args, rows, info)
    info["wall_s"] = info.get("wall_s", 0.0) + time.perf_counter() - t0
    print(save(args, rows, info))


def save(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    info: dict[str, Any],
    partial: bool = False,
) -> str:
    """Write results.json and table.md (with the other part's rows of an earlier call kept)."""
    if args.only is not None:
        rows, info = with_earlier(args.out / "results.json", args.only, rows, info)
    info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    noise_file = ROOT / "benchmarks" / "results" / "accuracy_noise" / "results.json"
    noise = json.loads(noise_file.read_text())["targets"]["diff_ci95_pts"]
    summary = summarise(rows, noise)
    results = {
        "benchmark": "budgets",
        # taken when the run started: the code it loaded (a long run may see main move on)
        "commit": args.commit,
        "python": platform.python_version(),
        "settings": {k: str(v) for k, v in vars(args).items() if k != "commit"},
        "partial": partial,
        "shortcut": "winners picked from a ranked pool (predictor + inherited val accuracy), "
        "not a 200-trial study; the margin decides feasibility as in the study",
        "info": info,
        "rows": rows,
        **summary,
    }
    results["targets"]["commit"] = results["commit"]
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    text = table(summary, info)
    (args.out / "table.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
