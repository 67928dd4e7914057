"""Does the tiny supernet rank archs as training them does? Kendall tau, inherited vs stand-alone.

1. Draw `--archs` archs of the `tiny` space with a fixed seed, stratified by MACs (one per MAC
   quantile bin of a large seeded pool), and write them down before anything is measured.
2. Train each from scratch with `--seeds` seeds: the same epochs, batch size, optimizer and LR
   schedule for every arch; score it on held-out images (the val and test splits together).
3. Train the tiny supernet once (sandwich rule, in-place distillation) on the embedded digits.
4. Score every arch with inherited weights after BN recalibration on the same held-out images.
5. Kendall tau between inherited accuracy and mean stand-alone accuracy, with a bootstrap
   confidence interval over archs, and tau within the middle third by MACs; throughput of the
   supernet against training the largest subnet alone, measured in this run; wall times.

    python benchmarks/supernet_ranking.py --out runs/bench/supernet_ranking [--quick] [--jobs 2]

Re-running on the same --out reuses finished stand-alone runs and resumes the supernet.

Writes results.json (per-run values, medians, commit) and table.md into --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from nas.app.config import git_commit
from nas.core.files import append_lines, read_lines
from nas.core.space import Arch
from nas.data import load_embedded_digits
from nas.supernet import SubnetEvaluator, accuracy, load_supernet, train_supernet
from search_spaces import TinySpace

ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("supernet_ranking")

FULL = {
    "archs": 12,
    "seeds": 2,
    "standalone_epochs": 4,
    "supernet_epochs": 10,
    "batch_size": 128,
    "lr": 0.1,
    "train_images": 0,  # 0: the whole train split
}
QUICK = {**FULL, "archs": 6, "seeds": 1, "standalone_epochs": 2, "supernet_epochs": 3}


def draw_archs(space: TinySpace, n: int, seed: int, pool: int = 3000) -> list[Arch]:
    """`n` distinct archs, one from each of `n` equal-count MAC bins of a seeded pool."""
    rng = np.random.default_rng(seed)
    unique: dict[str, Arch] = {}
    for _ in range(pool):
        a = space.sample(rng)
        unique.setdefault(space.key(a), space.normalize(a))
    archs = sorted(unique.values(), key=lambda a: (space.cost(a).macs, space.key(a)))
    bins = np.array_split(np.arange(len(archs)), n)
    return [archs[int(rng.choice(b))] for b in bins]


def _data(train_images: int) -> tuple[Any, Any, Any]:
    data = load_embedded_digits()
    tx, ty = data.train.tensors
    if train_images:
        tx, ty = tx[:train_images], ty[:train_images]
    held_x = torch.cat([data.val.tensors[0], data.test.tensors[0]])  # N x 3 x 32 x 32
    held_y = torch.cat([data.val.tensors[1], data.test.tensors[1]])  # N
    return (tx, ty), (held_x, held_y), data


def _optimizer(model: nn.Module, lr: float, steps: int) -> tuple[Any, Any]:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-5}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        momentum=0.9,
        nesterov=True,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))
    )
    return opt, sched


def train_standalone(
    arch: Arch,
    seed: int,
    train: tuple[torch.Tensor, torch.Tensor],
    held: tuple[torch.Tensor, torch.Tensor],
    epochs: int,
    batch_size: int,
    lr: float,
    max_steps: int | None = None,
) -> dict[str, float]:
    """Train `build(arch)` from scratch (SGD, nesterov, cosine); held-out accuracy and speed."""
    space = TinySpace()
    torch.manual_seed(seed)
    model = space.build(arch)
    x, y = train
    steps_per_epoch = len(x) // batch_size
    total = epochs * steps_per_epoch if max_steps is None else max_steps
    opt, sched = _optimizer(model, lr, total)
    g = torch.Generator().manual_seed(seed)
    model.train()
    step, t0 = 0, time.perf_counter()
    while step < total:
        order = torch.randperm(len(x), generator=g)
        for b in range(steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])  # x[idx]: B x 3 x 32 x 32
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step >= total:
                break
    train_s = time.perf_counter() - t0
    acc = accuracy(model, *held) if max_steps is None else float("nan")
    return {"accuracy": acc, "train_s": train_s, "images_per_s": step * batch_size / train_s}


_WORKER: dict[str, Any] = {}


def _init_worker(train_images: int) -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    train, held, _ = _data(train_images)
    _WORKER.update(train=train, held=held)


def _job(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One unit of work in a worker process: a stand-alone training, the supernet's training,
    or the throughput of the largest subnet alone."""
    train, held = _WORKER["train"], _WORKER["held"]
    s = job["settings"]
    if job["kind"] == "standalone":
        out = train_standalone(
            job["arch"], job["seed"], train, held, s["standalone_epochs"], s["batch_size"], s["lr"]
        )
        return job, out
    if job["kind"] == "largest_alone":
        arch = TinySpace().supernet().largest_arch()
        out = train_standalone(arch, 0, train, held, 1, s["batch_size"], s["lr"], job["steps"])
        return job, out
    t0 = time.perf_counter()
    run = train_supernet(
        TinySpace(),
        train,
        job["dir"],
        schedule="sandwich",
        epochs=s["supernet_epochs"],
        batch_size=s["batch_size"],
        lr=s["lr"],
        weight_decay=5e-5,
        seed=0,
        checkpoint_every=100,
        options={"n_random": 2},
        progress=False,
    )
    return job, {
        "steps": run.step,
        # a resumed, already finished run trained nothing in this call: use its epochs' figures
        "images_per_s": run.images_per_s or statistics.mean(h["images_per_s"] for h in run.history),
        "history": run.history,
        "wall_s": time.perf_counter() - t0,
    }


def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    tau = stats.kendalltau(a, b).statistic
    return float(tau)


def bootstrap_tau(
    a: np.ndarray, b: np.ndarray, n: int = 5000, seed: int = 0
) -> tuple[float, float]:
    """95 % percentile interval of Kendall tau over archs resampled with replacement."""
    rng = np.random.default_rng(seed)
    taus = []
    for _ in range(n):
        idx = rng.integers(0, len(a), len(a))
        t = _kendall(a[idx], b[idx])
        if not math.isnan(t):
            taus.append(t)
    lo, hi = np.percentile(taus, [2.5, 97.5])
    return float(lo), float(hi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--quick", action="store_true", help="a smoke-sized run (a few minutes)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel stand-alone trainings")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arch draw")
    for key in FULL:
        parser.add_argument(
            f"--{key.replace('_', '-')}",
            type=int if key != "lr" else float,
            help=f"default {FULL[key]} ({QUICK[key]} with --quick)",
        )
    args = parser.parse_args()
    settings = dict(QUICK if args.quick else FULL)
    for key in FULL:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    space = TinySpace()

    # 1. the archs, fixed before anything is measured
    archs = draw_archs(space, settings["archs"], args.seed)
    costs = [space.cost(a) for a in archs]
    results: dict[str, Any] = {
        "benchmark": "supernet_ranking",
        "commit": git_commit(ROOT),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "settings": {**settings, "quick": args.quick, "jobs": args.jobs, "threads": args.threads},
        "archs": [
            {"key": space.key(a), "arch": a, "macs": c.macs, "params": c.params}
            for a, c in zip(archs, costs, strict=True)
        ],
    }
    (args.out / "archs.json").write_text(json.dumps(results["archs"], indent=1))
    train, held, _ = _data(settings["train_images"])
    logger.info("train %d images, held-out %d; %d archs", len(train[0]), len(held[0]), len(archs))

    # 2 + 3. stand-alone trainings, the supernet and the largest subnet's throughput, as
    # jobs for `--jobs` single-threaded workers, longest first; finished stand-alone runs are
    # kept in standalone.jsonl and the supernet checkpoints, so a killed run picks up again.
    t0 = time.perf_counter()
    done_path = args.out / "standalone.jsonl"
    tag = json.dumps({k: settings[k] for k in FULL if k != "supernet_epochs"}, sort_keys=True)
    standalone: dict[int, dict[int, dict[str, float]]] = {i: {} for i in range(len(archs))}
    index = {space.key(a): i for i, a in enumerate(archs)}
    if done_path.exists():
        for line in read_lines(done_path):  # a record a kill cut short is left out, and said
            rec = json.loads(line)
            if rec["settings"] == tag and rec["key"] in index:
                standalone[index[rec["key"]]][rec["seed"]] = rec["result"]
    jobs: list[dict[str, Any]] = [
        {"kind": "supernet", "dir": str(args.out / "supernet"), "settings": settings},
        {"kind": "largest_alone", "steps": 10 if args.quick else 30, "settings": settings},
    ]
    jobs += sorted(
        (
            {"kind": "standalone", "i": i, "arch": a, "seed": seed, "settings": settings}
            for seed in range(settings["seeds"])
            for i, a in enumerate(archs)
            if seed not in standalone[i]
        ),
        key=lambda j: -costs[j["i"]].macs,
    )
    supernet_out: dict[str, Any] = {}
    alone: dict[str, float] = {}
    ctx = mp.get_context("spawn")
    with ctx.Pool(
        args.jobs, initializer=_init_worker, initargs=(settings["train_images"],)
    ) as pool:
        for job, out in pool.imap_unordered(_job, jobs):
            if job["kind"] == "standalone":
                standalone[job["i"]][job["seed"]] = out
                rec = {"key": space.key(job["arch"]), "seed": job["seed"], "settings": tag}
                append_lines(done_path, [json.dumps({**rec, "result": out})])
                logger.info(
                    "stand-alone arch %d seed %d: %.4f", job["i"], job["seed"], out["accuracy"]
                )
            elif job["kind"] == "supernet":
                supernet_out = out
                logger.info("supernet trained: %s", {k: out[k] for k in ("steps", "wall_s")})
            else:
                alone = out
    jobs_s = time.perf_counter() - t0
    net = load_supernet(space, args.out / "supernet")
    largest = net.largest_arch()

    # 4. inherited weights, BN recalibrated on 1024 training images
    t0 = time.perf_counter()
    evaluator = SubnetEvaluator(
        net,
        train,
        held,
        calib_images=1024,
        calib_batch_size=128,
        cache_path=args.out / "inherited_cache.jsonl",
    )
    inherited = np.asarray(evaluator.evaluate(archs))
    eval_s = time.perf_counter() - t0

    # 5. statistics
    per_seed = np.asarray(
        [
            [standalone[i][s]["accuracy"] for s in range(settings["seeds"])]
            for i in range(len(archs))
        ]
    )
    mean_alone = per_seed.mean(1)
    tau = _kendall(inherited, mean_alone)
    lo, hi = bootstrap_tau(inherited, mean_alone)
    order = np.argsort([c.macs for c in costs], kind="stable")
    third = len(archs) // 3
    middle = order[third : len(archs) - third]
    tau_mid = _kendall(inherited[middle], mean_alone[middle])
    seed_tau = _kendall(per_seed[:, 0], per_seed[:, 1]) if settings["seeds"] >= 2 else float("nan")
    results.update(
        {
            "per_arch": [
                {
                    "key": space.key(a),
                    "macs": c.macs,
                    "params": c.params,
                    "inherited_accuracy": float(inherited[i]),
                    "standalone": {str(s): standalone[i][s] for s in range(settings["seeds"])},
                    "standalone_mean_accuracy": float(mean_alone[i]),
                }
                for i, (a, c) in enumerate(zip(archs, costs, strict=True))
            ],
            "kendall_tau": tau,
            "kendall_tau_ci95": [lo, hi],
            "kendall_tau_middle_third": tau_mid,
            "middle_third_archs": [int(i) for i in middle],
            "spearman_rho": float(stats.spearmanr(inherited, mean_alone).statistic),
            "kendall_tau_between_seeds": seed_tau,
            "medians": {
                "inherited_accuracy": float(np.median(inherited)),
                "standalone_accuracy": float(np.median(mean_alone)),
                "standalone_train_s": statistics.median(
                    o["train_s"] for d in standalone.values() for o in d.values()
                ),
                "supernet_epoch_images_per_s": statistics.median(
                    h["images_per_s"] for h in supernet_out["history"]
                ),
            },
            "supernet": {"epochs": settings["supernet_epochs"], **supernet_out},
            "largest_alone": {
                "key": space.key(largest),
                "steps": 10 if args.quick else 30,
                "images_per_s": alone["images_per_s"],
            },
            "supernet_vs_largest_throughput": supernet_out["images_per_s"] / alone["images_per_s"],
            "wall_s": {
                "standalone_core_s": sum(
                    o["train_s"] for d in standalone.values() for o in d.values()
                ),
                "supernet": supernet_out["wall_s"],
                "training_jobs": jobs_s,
                "inherited_eval": eval_s,
                "total": time.perf_counter() - t_start,
            },
        }
    )
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "table.md").write_text(_table(results))
    print((args.out / "table.md").read_text())


def _table(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [
        f"# Supernet ranking (tiny, sandwich rule) — commit {r['commit'][:10]}",
        "",
        f"{len(r['per_arch'])} archs stratified by MACs; stand-alone: {s['standalone_epochs']} "
        f"epochs x {s['seeds']} seeds; supernet: {s['supernet_epochs']} epochs; batch "
        f"{s['batch_size']}, SGD nesterov lr {s['lr']} cosine; accuracy on val+test "
        f"({'quick' if s['quick'] else 'full'} run).",
        "",
        "| # | MACs (M) | params (k) | inherited acc | stand-alone acc (per seed) | mean |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for i, a in enumerate(sorted(r["per_arch"], key=lambda a: a["macs"])):
        seeds = ", ".join(f"{v['accuracy']:.3f}" for v in a["standalone"].values())
        lines.append(
            f"| {i} | {a['macs'] / 1e6:.2f} | {a['params'] / 1e3:.1f} | "
            f"{a['inherited_accuracy']:.3f} | {seeds} | {a['standalone_mean_accuracy']:.3f} |"
        )
    lo, hi = r["kendall_tau_ci95"]
    w = r["wall_s"]
    lines += [
        "",
        "| metric | value |",
        "|---|---:|",
        f"| Kendall tau, inherited vs stand-alone (95 % bootstrap CI) | {r['kendall_tau']:.3f} "
        f"[{lo:.3f}, {hi:.3f}] |",
        f"| Kendall tau, middle third by MACs ({len(r['middle_third_archs'])} archs) | "
        f"{r['kendall_tau_middle_third']:.3f} |",
        f"| Spearman rho | {r['spearman_rho']:.3f} |",
        f"| Kendall tau between the two stand-alone seeds (noise ceiling) | "
        f"{r['kendall_tau_between_seeds']:.3f} |",
        f"| supernet training images/s | {r['supernet']['images_per_s']:.0f} |",
        f"| largest subnet alone images/s | {r['largest_alone']['images_per_s']:.0f} |",
        f"| supernet / largest-alone throughput | {r['supernet_vs_largest_throughput']:.2f} |",
        f"| supernet training wall time (s) | {w['supernet']:.0f} |",
        f"| stand-alone trainings, summed over runs (s) | {w['standalone_core_s']:.0f} |",
        f"| inherited-weight evaluation of all archs, incl. BN recalibration (s) | "
        f"{w['inherited_eval']:.0f} |",
        f"| total wall time, {s['jobs']} worker processes (s) | {w['total']:.0f} |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
