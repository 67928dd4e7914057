"""How far a test accuracy moves: the demo's training over seeds, and a bootstrap over sources.

Every accuracy target is judged against this (issue 23 item 5): a difference inside the
interval it gives is reported as not resolvable.

1. The demo's settings (`nas.app.demo_config`: the `tiny` supernet, sandwich rule, its epochs,
   batch and learning rate; inherited-weight accuracy with BN recalibrated on the demo's
   images; the compression chain's KD fine-tune) run with `--seeds` seeds (the run's seed,
   which seeds the supernet, the recalibration subset and the fine-tune). Measured on the test
   split of the embedded digits: the inherited-weight accuracy of five fixed archs (smallest,
   the 25 / 50 / 75 % quantiles by MACs of a seeded pool, largest) and the test accuracy of
   the median arch after the chain's `distill` step (KD from the supernet's largest subnet).
2. A bootstrap over the test set's source images (each has five augmented copies, whose errors
   are correlated), through `nas.supernet.accuracy_interval` and `difference_interval`: the
   95 % interval of one model's accuracy (and, for contrast, the one per-image resampling
   would claim), and of the difference between two models scored on the same images (paired).
3. The seed-to-seed spread, and the half-width a difference must exceed to be resolvable:
   test-set noise and training noise added as independent errors,
   `sqrt(h_paired^2 + (1.96 * sd_diff)^2)` (`nas.supernet.resolvable_difference`), with
   `sd_diff = sqrt(2) * sd_seed` for two models trained in separate runs (the headline,
   `targets.diff_ci95_pts`) and the measured spread of the difference for two archs of one
   supernet. As a check, the same interval drawn directly: replicates that pick two seeds and
   resample the sources.

    python benchmarks/accuracy_noise.py --out runs/bench/accuracy_noise [--seeds 5] [--quick]

Seeds can be trained by parallel processes first (`--only 0 2 4`, `--only 1 3`); the call
without `--only` then reads them and writes the results.

Resumable: each seed's results are kept in `--out`/seed-N/ (the supernet's checkpoints and the
chain's folder too), and a seed already done with the same settings is read, not run again.
Writes results.json (per-run values, medians, targets, commit) and table.md into --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch.utils.data import TensorDataset

from nas.app.config import git_commit
from nas.app.demo import demo_config
from nas.compress import ChainConfig, largest_arch, run_chain
from nas.core.space import Arch, SearchSpace
from nas.data import ImageDataset, load_embedded_digits
from nas.supernet import (
    SubnetEvaluator,
    accuracy_interval,
    correct_mask,
    difference_interval,
    recalibrate_bn,
    resolvable_difference,
    seed_sd,
    train_supernet,
)
from search_spaces import get_space

ROOT = Path(__file__).resolve().parents[1]
LEVEL = 0.95
QUANTILES = {"q25": 0.25, "median": 0.5, "q75": 0.75}
KD_ARCH = "median"
# two archs of one supernet, compared within a run (the comparisons a search makes)
WITHIN_RUN = [
    ("inherited median", "inherited q25"),
    ("inherited q75", "inherited median"),
    ("kd median", "inherited median"),
]

log = logging.getLogger("accuracy_noise")


def demo_settings(quick: bool) -> dict[str, Any]:
    """What sets accuracy in the demo, read from its config; `quick` cuts the training short
    (a smoke run: its figures say nothing)."""
    cfg = demo_config()
    return {
        "space": cfg.space.name,
        "supernet": {
            "schedule": cfg.supernet.schedule,
            "epochs": cfg.supernet.epochs,
            "batch_size": cfg.supernet.batch_size,
            "lr": cfg.supernet.lr,
            "options": dict(cfg.supernet.options),
            "max_steps": 3 if quick else None,
        },
        "calib_images": cfg.accuracy.bn_batches * 128,  # as the pipeline's SubnetEvaluator
        "chain": {
            "distill": {**dict(cfg.compress.options).get("distill", {})}
            | ({"max_steps": 2} if quick else {}),
            "bn_calibration_images": 128 if quick else 512,
        },
        "train_images": 1024 if quick else 0,  # 0: the whole train split
        "quick": quick,
    }


def fixed_archs(space: SearchSpace, pool: int = 2000, seed: int = 0) -> dict[str, Arch]:
    """The archs measured: smallest, MAC quantiles of a seeded pool of samples, largest."""
    rng = np.random.default_rng(seed)
    unique: dict[str, Arch] = {}
    for _ in range(pool):
        a = space.sample(rng)
        unique.setdefault(space.key(a), space.normalize(a))
    ranked = sorted(unique.values(), key=lambda a: (space.cost(a).macs, space.key(a)))
    supernet: Any = space.supernet()
    archs = {"smallest": dict(supernet.smallest_arch())}
    for name, q in QUANTILES.items():
        archs[name] = dict(ranked[round(q * (len(ranked) - 1))])
    archs["largest"] = largest_arch(space)
    return archs


def load_data(settings: dict[str, Any]) -> ImageDataset:
    data = load_embedded_digits()
    n = settings["train_images"]
    if n:
        data = dataclasses.replace(data, train=TensorDataset(*(t[:n] for t in data.train.tensors)))
    return data


def run_seed(
    out: Path,
    seed: int,
    settings: dict[str, Any],
    data: ImageDataset,
    archs: dict[str, Arch],
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One run of the demo's training with `seed`: the record and, per model, which test images
    it gets right. Read back when this seed is done with the same settings."""
    d = out / f"seed-{seed}"
    done = d / "result.json"
    if done.exists():
        record = json.loads(done.read_text())
        if record["settings"] == settings:
            with np.load(d / "correct.npz") as npz:
                return record, {k.replace("_", " "): npz[k] for k in npz.files}
        log.info("seed %d: settings changed, run again", seed)
    space = get_space(settings["space"])
    t0 = time.perf_counter()
    s = settings["supernet"]
    result = train_supernet(
        space,
        data,
        d / "supernet",
        schedule=s["schedule"],
        epochs=s["epochs"],
        batch_size=s["batch_size"],
        lr=s["lr"],
        options=s["options"],
        seed=seed,
        max_steps=s["max_steps"],
        progress=False,
    )
    net = result.supernet.eval()
    supernet_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    x, y = data.test.tensors
    # the evaluator's recalibration images (seeded subset), so each figure is its figure
    calib = SubnetEvaluator(
        net, data.train, data.test, calib_images=settings["calib_images"], seed=seed
    ).calib_batches
    correct: dict[str, np.ndarray] = {}
    for name, arch in archs.items():
        size = space.input_shape(arch)[1:]
        model = net.export(arch)
        recalibrate_bn(model, calib, input_size=size)
        correct[f"inherited {name}"] = correct_mask(model, x, y, input_size=size)
    inherited_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    chain = run_chain(
        d,
        archs[KD_ARCH],
        space=space,
        data=data,
        steps=["distill"],
        config=ChainConfig.from_dict(settings["chain"]),
        student=net.export,
        teacher="largest",
        seed=seed,
    )
    correct[f"kd {KD_ARCH}"] = correct_mask(chain.models["distill"], x, y)
    chain_acc = next(r.accuracy for r in chain.rows if r.step == "distill")
    record = {
        "seed": seed,
        "settings": settings,
        "accuracy_pts": {k: 100 * float(v.mean()) for k, v in correct.items()},
        "chain_reported_kd_accuracy_pts": None if chain_acc is None else 100 * chain_acc,
        "supernet_steps": result.step,
        "wall_s": {
            "supernet": supernet_s,
            "inherited_eval": inherited_s,
            "kd_finetune": time.perf_counter() - t0,
        },
    }
    arrays: dict[str, Any] = {k.replace(" ", "_"): v for k, v in correct.items()}
    np.savez(d / "correct.npz", **arrays)
    done.write_text(json.dumps(record, indent=1))
    return record, correct


def _pts(interval: Any) -> dict[str, float]:
    return {k: 100 * v for k, v in interval.to_dict().items() if k not in ("groups", "images")}


def _seeds_and_sources(
    correct: list[np.ndarray], groups: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Replicates (points) of the difference between two runs of one model: an ordered pair of
    distinct seeds and a resample of the sources, drawn together."""
    inverse = np.unique(groups, return_inverse=True)[1].ravel()
    counts = np.bincount(inverse).astype(np.float64)
    sums = np.stack([np.bincount(inverse, weights=c.astype(np.float64)) for c in correct])
    pairs = np.array(list(itertools.permutations(range(len(correct)), 2)))
    pick = pairs[rng.integers(0, len(pairs), n_boot)]
    k = counts.size
    draws = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(np.float64)
    diff = sums[pick[:, 0]] - sums[pick[:, 1]]  # n_boot x groups
    return 100 * (draws * diff).sum(1) / (draws @ counts)


def _model_stats(
    runs: list[np.ndarray], groups: np.ndarray, n_boot: int, seed: int
) -> dict[str, Any]:
    """One model over seeds: spread, one-model intervals, same-arch paired differences."""
    acc = [100 * float(c.mean()) for c in runs]
    one = [accuracy_interval(c, groups, level=LEVEL, n_boot=n_boot, seed=seed) for c in runs]
    iid = [accuracy_interval(c, None, level=LEVEL, n_boot=n_boot, seed=seed) for c in runs]
    paired = [
        difference_interval(runs[i], runs[j], groups, level=LEVEL, n_boot=n_boot, seed=seed)
        for i, j in itertools.combinations(range(len(runs)), 2)
    ]
    sd = seed_sd(acc)
    paired_hw = statistics.median(100 * p.half_width for p in paired)
    return {
        "accuracy_pts": acc,
        "mean_pts": statistics.mean(acc),
        "median_pts": statistics.median(acc),
        "range_pts": max(acc) - min(acc),
        "seed_sd_pts": sd,
        "accuracy_ci95_pts": [_pts(i) for i in one],
        "accuracy_ci95_half_width_pts": statistics.median(100 * i.half_width for i in one),
        "iid_ci95_half_width_pts": statistics.median(100 * i.half_width for i in iid),
        "paired_same_arch_ci95_pts": [_pts(p) for p in paired],
        "paired_same_arch_ci95_half_width_pts": paired_hw,
        "resolvable_separate_runs_pts": resolvable_difference(paired_hw, math.sqrt(2) * sd, LEVEL),
    }


def analyse(
    correct: dict[int, dict[str, np.ndarray]],
    groups: np.ndarray,
    n_boot: int = 2000,
    boot_seed: int = 0,
) -> dict[str, Any]:
    """Every figure of the benchmark from the per-seed, per-model correct masks."""
    seeds = sorted(correct)
    models = list(correct[seeds[0]])
    per_model = {
        m: _model_stats([correct[s][m] for s in seeds], groups, n_boot, boot_seed) for m in models
    }
    pooled_sd = seed_sd([per_model[m]["accuracy_pts"] for m in models])
    paired_hw = statistics.median(
        p["half_width"] for m in models for p in per_model[m]["paired_same_arch_ci95_pts"]
    )
    within: dict[str, dict[str, Any]] = {}
    for a, b in WITHIN_RUN:
        if a not in per_model or b not in per_model:
            continue
        diffs = [100 * float(correct[s][a].mean() - correct[s][b].mean()) for s in seeds]
        hws = [
            100
            * difference_interval(
                correct[s][a], correct[s][b], groups, level=LEVEL, n_boot=n_boot, seed=boot_seed
            ).half_width
            for s in seeds
        ]
        sd = seed_sd(diffs)
        within[f"{a} - {b}"] = {
            "difference_pts": diffs,
            "seed_sd_pts": sd,
            "paired_ci95_half_width_pts": statistics.median(hws),
            "resolvable_pts": resolvable_difference(statistics.median(hws), sd, LEVEL),
        }
    rng = np.random.default_rng(boot_seed)
    direct = np.concatenate(
        [_seeds_and_sources([correct[s][m] for s in seeds], groups, n_boot, rng) for m in models]
    )
    lo, hi = np.quantile(direct, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    one_hw = statistics.median(per_model[m]["accuracy_ci95_half_width_pts"] for m in models)
    iid_hw = statistics.median(per_model[m]["iid_ci95_half_width_pts"] for m in models)
    targets = {
        "diff_ci95_pts": resolvable_difference(paired_hw, math.sqrt(2) * pooled_sd, LEVEL),
        "diff_ci95_pts_within_run": max(float(w["resolvable_pts"]) for w in within.values())
        if within
        else None,
        "diff_ci95_pts_direct": float(hi - lo) / 2,
        "accuracy_ci95_pts": one_hw,
        "accuracy_ci95_pts_if_images_were_independent": iid_hw,
        "paired_diff_ci95_pts": paired_hw,
        "seed_sd_pts": pooled_sd,
    }
    return {"models": per_model, "within_run": within, "targets": targets}


def run(
    out: Path,
    settings: dict[str, Any],
    seeds: list[int],
    n_boot: int,
    boot_seed: int,
    data: ImageDataset | None = None,
) -> dict[str, Any]:
    """The whole benchmark into `out`: every seed (resuming), then the analysis; `data`
    replaces the data of `settings` (tests)."""
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    space = get_space(settings["space"])
    archs = fixed_archs(space)
    data = data or load_data(settings)
    groups = data.groups("test")
    records, correct = {}, {}
    for seed in seeds:
        records[seed], correct[seed] = run_seed(out, seed, settings, data, archs)
        log.info("seed %d: %s", seed, records[seed]["accuracy_pts"])
    analysis = analyse(correct, groups, n_boot, boot_seed)
    per_seed_s = [sum(r["wall_s"].values()) for r in records.values()]
    results: dict[str, Any] = {
        "benchmark": "accuracy_noise",
        "commit": git_commit(ROOT),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "settings": settings,
        "seeds": seeds,
        "level": LEVEL,
        "n_boot": n_boot,
        "boot_seed": boot_seed,
        "test_images": len(groups),
        "test_sources": len(np.unique(groups)),
        "archs": {
            n: {"key": space.key(a), "macs": space.cost(a).macs, "arch": a}
            for n, a in archs.items()
        },
        "per_seed": [records[s] for s in seeds],
        "medians": {m: v["median_pts"] for m, v in analysis["models"].items()},
        **analysis,
        "targets": {**analysis["targets"], "commit": git_commit(ROOT)},
        "wall_s": {
            "per_seed": per_seed_s,
            "median_seed": statistics.median(per_seed_s),
            "this_call": time.perf_counter() - t_start,
        },
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "table.md").write_text(table(results))
    return results


def train_seeds(out: Path, settings: dict[str, Any], seeds: list[int]) -> None:
    """Only the training of `seeds` into `out` (resuming), no analysis: one of several
    processes that share the seeds of one benchmark."""
    out.mkdir(parents=True, exist_ok=True)
    archs = fixed_archs(get_space(settings["space"]))
    data = load_data(settings)
    for seed in seeds:
        record, _ = run_seed(out, seed, settings, data, archs)
        log.info("seed %d: %s", seed, record["accuracy_pts"])


def table(r: dict[str, Any]) -> str:
    """The readable summary (table.md)."""
    t, s = r["targets"], r["settings"]
    lines = [
        f"# Accuracy noise (demo settings, {len(r['seeds'])} seeds) — commit {r['commit'][:10]}",
        "",
        f"`{s['space']}` supernet ({s['supernet']['schedule']}, {s['supernet']['epochs']} "
        f"epochs), inherited weights with BN recalibrated on {s['calib_images']} images, KD "
        f"fine-tune as the chain's `distill` step ({'quick' if s['quick'] else 'full'} run). "
        f"Test split: {r['test_images']} images of {r['test_sources']} source digits; "
        f"bootstrap over sources, {r['n_boot']} replicates, 95 % percentile intervals; "
        "all figures in accuracy points.",
        "",
        "| model | MACs | test acc per seed | median | seed SD | +- one model (sources) | "
        "+- one model (images, wrong) | +- paired, same arch | resolvable, separate runs |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in r["models"].items():
        macs = r["archs"][name.split(" ", 1)[1]]["macs"]
        lines.append(
            f"| {name} | {macs / 1e6:.2f} M | {', '.join(f'{v:.2f}' for v in m['accuracy_pts'])} "
            f"| {m['median_pts']:.2f} | {m['seed_sd_pts']:.2f} | "
            f"{m['accuracy_ci95_half_width_pts']:.2f} | {m['iid_ci95_half_width_pts']:.2f} | "
            f"{m['paired_same_arch_ci95_half_width_pts']:.2f} | "
            f"{m['resolvable_separate_runs_pts']:.2f} |"
        )
    lines += [
        "",
        "| two models of one run | difference per seed | seed SD | +- paired | resolvable |",
        "|---|---|---:|---:|---:|",
    ]
    for name, w in r["within_run"].items():
        lines.append(
            f"| {name} | {', '.join(f'{v:+.2f}' for v in w['difference_pts'])} | "
            f"{w['seed_sd_pts']:.2f} | {w['paired_ci95_half_width_pts']:.2f} | "
            f"{w['resolvable_pts']:.2f} |"
        )
    within = t["diff_ci95_pts_within_run"]
    lines += [
        "",
        "| figure | points |",
        "|---|---:|",
        f"| 95 % interval of one accuracy, +- (sources resampled) | {t['accuracy_ci95_pts']:.2f} |",
        f"| the same if the images were independent (they are not) | "
        f"{t['accuracy_ci95_pts_if_images_were_independent']:.2f} |",
        f"| 95 % interval of a paired difference, +- (test-set noise alone) | "
        f"{t['paired_diff_ci95_pts']:.2f} |",
        f"| seed-to-seed SD of one accuracy (pooled over models) | {t['seed_sd_pts']:.2f} |",
        f"| **resolvable difference, two separate runs** (`diff_ci95_pts`) | "
        f"**{t['diff_ci95_pts']:.2f}** |",
        f"| the same drawn directly (two seeds and the sources resampled) | "
        f"{t['diff_ci95_pts_direct']:.2f} |",
        f"| resolvable difference, two models of one run (largest pair above) | "
        f"{'-' if within is None else f'{within:.2f}'} |",
        f"| wall time per seed, median (s) | {r['wall_s']['median_seed']:.0f} |",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 supernet steps")
    parser.add_argument("--seeds", type=int, default=5, help="training seeds 0..N-1 (>= 2)")
    parser.add_argument("--boot", type=int, default=2000, help="bootstrap replicates")
    parser.add_argument("--boot-seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--only",
        type=int,
        nargs="+",
        help="train just these seeds and stop (runs them in parallel processes); "
        "a later call without --only reads them and analyses",
    )
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error(f"--seeds must be >= 2 (a spread needs two runs); got {args.seeds}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    settings = demo_settings(args.quick)
    if args.only:
        train_seeds(args.out, settings, args.only)
        return
    results = run(args.out, settings, list(range(args.seeds)), args.boot, args.boot_seed)
    print(table(results))


if __name__ == "__main__":
    main()
