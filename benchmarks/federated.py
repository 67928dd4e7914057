"""Federated supernet against FedAvg of the slowest tier's subnet, HeteroFL widths and centralized.

Issue 21's benchmark: `tiny` on the embedded digits; three device tiers on `pixel3-emulated`
(its spec-sheet cost model) whose budgets are the latency of the largest subnet, the smallest,
and their geometric mean; each tier's subnet is the arch with the most MACs under its budget
(latency and cost alone: no client data). 12 clients (4 per tier), partitions by source image,
Dirichlet(0.5) and IID. Rows per partition, seed and tier:

- `supernet`: each client trains its tier's subnet, slices averaged (nas.federated);
- `width`: HeteroFL's uniform channel scaling 1, 1/2, 1/4 of the fastest tier's arch;
- `fedavg`: every client trains the slowest tier's subnet (FedAvg);
- `central`: each tier's subnet trained on the pooled data for the same number of
  sample-gradient steps (the rounds times the local epochs, over every training image).

Accuracy is on the whole test split after batch norm is re-estimated on server-side validation
images; differences are judged with a paired bootstrap over test source images on the
seed-averaged per-image scores, plus the seed-to-seed spread of the difference
(`nas.supernet.resolvable_difference`); one inside it is "not resolvable".

    python benchmarks/federated.py --out runs/bench/federated [--seeds 5] [--rounds 20]
        [--local-epochs 1] [--quick]

Resumable: every run keeps its server state under --out; a finished one is read, not rerun.
Writes results.json (rows, targets, commit, load), table.md and one plot per tier into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

import latency_models
from nas.app.config import git_commit
from nas.app.federated_apps import client_app, resolve, server_app
from nas.core.files import write_json_atomic, write_text_atomic
from nas.federated import (
    FederatedSpec,
    LocalSettings,
    TierBudget,
    TierSpec,
    candidate_archs,
    choose_tiers,
    evaluate_tier,
    load_server_state,
    run_in_process,
    train_local,
)
from nas.supernet import difference_interval, resolvable_difference

METHODS = ("supernet", "width", "fedavg", "central")
PARTITIONS = (("dirichlet", 0.5), ("iid", None))


def _tiers(space: Any, clients: int, candidates: int) -> tuple[TierSpec, ...]:
    device = latency_models.CostModelPredictor(latency_models.get_device("pixel3-emulated"))
    archs = candidate_archs(space, candidates, seed=0)
    lat = device.predict_many(space, archs)
    budgets = (float(lat.max()), float(np.sqrt(lat.max() * lat.min())), float(lat.min()) * 1.0001)
    return choose_tiers(
        space,
        [
            TierBudget(n, device, b, clients)
            for n, b in zip(("fast", "mid", "slow"), budgets, strict=True)
        ],
        candidates=candidates,
        seed=0,
    )


def _spec(
    method: str,
    tiers: tuple[TierSpec, ...],
    args: argparse.Namespace,
    partition: str,
    alpha: float | None,
    seed: int,
) -> FederatedSpec:
    from dataclasses import replace

    kind, base = "supernet", None
    if method == "fedavg":
        tiers = tuple(replace(t, arch=tiers[-1].arch) for t in tiers)
    elif method == "width":
        base = tiers[0].arch
        tiers = tuple(
            replace(t, arch=None, width=w) for t, w in zip(tiers, (1.0, 0.5, 0.25), strict=True)
        )
        kind = "width"
    return FederatedSpec(
        tiers=tiers,
        kind=kind,
        base_arch=base,
        dataset_options=args.data_options,
        rounds=args.rounds,
        local=LocalSettings(args.local_epochs, args.batch_size, args.lr),
        partition=partition,
        alpha=alpha,
        seed=seed,
    )


def _scores(spec: FederatedSpec, out: Path) -> dict[str, Any]:
    """Per tier, the per-image correctness of the final weights (cached in scores.npz)."""
    cache = out / "scores.npz"
    family, data = resolve(spec)
    if not cache.exists():
        state = load_server_state(out, spec.digest, family.full_model(spec.seed).state_dict())
        assert state is not None and state.round == spec.rounds
        found = {}
        for t in spec.tiers:
            model = family.full_model(spec.seed)
            model.load_state_dict(state.weights)
            cal = data.val.tensors[0][: spec.calibration_images]
            found[t.name] = evaluate_tier(family, model, t.sub_model, cal, *data.test.tensors)
        np.savez(cache, **found)
    with np.load(cache) as z:
        return {k: z[k] for k in z.files}


def _federated(
    method: str,
    tiers: Any,
    args: argparse.Namespace,
    partition: str,
    alpha: float | None,
    seed: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    spec = _spec(method, tiers, args, partition, alpha, seed)
    out = args.out / f"{partition}" / f"seed-{seed}" / method
    run_in_process(
        server_app, client_app, spec.num_clients, {"spec": spec.to_json(), "out": str(out)}
    )
    history = json.loads((out / "server_state.json").read_text())["history"]
    return _scores(spec, out), history


def _central(tiers: Any, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Each tier's subnet on the pooled train split, rounds x local epochs epochs."""
    out = args.out / "central" / f"seed-{seed}"
    cache = out / "scores.npz"
    if not cache.exists():
        spec = _spec("supernet", tiers, args, "iid", None, seed)
        family, data = resolve(spec)
        found = {}
        for t in spec.tiers:
            model = family.full_model(seed)
            epochs = args.rounds * args.local_epochs  # the federated runs' sample-gradient steps
            settings = LocalSettings(epochs=epochs, batch_size=args.batch_size, lr=args.lr)
            train_local(family, model, t.sub_model, *data.train.tensors, settings, seed)
            cal = data.val.tensors[0][: spec.calibration_images]
            found[t.name] = evaluate_tier(family, model, t.sub_model, cal, *data.test.tensors)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **found)
    with np.load(cache) as z:
        return {k: z[k] for k in z.files}


def _compare(
    scores: dict[str, list[dict[str, Any]]],
    a: str,
    b: str,
    tier_a: str,
    tier_b: str,
    groups: np.ndarray,
) -> dict[str, Any]:
    """Accuracy of a (tier_a) minus b (tier_b) over seeds, in points, with its resolvable width."""
    per_seed_a = np.array([s[tier_a] for s in scores[a]], dtype=np.float64)  # seeds x images
    per_seed_b = np.array([s[tier_b] for s in scores[b]], dtype=np.float64)
    diffs = per_seed_a.mean(1) - per_seed_b.mean(1)
    paired = difference_interval(per_seed_a.mean(0), per_seed_b.mean(0), groups)
    sd = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0
    need = resolvable_difference(paired.half_width, sd / np.sqrt(len(diffs)))
    mean = float(diffs.mean())
    return {
        "diff_pts": 100 * mean,
        "resolvable_half_width_pts": 100 * need,
        "resolvable": abs(mean) > need,
        "per_seed_pts": (100 * diffs).tolist(),
    }


def _targets(
    scores: dict[str, dict[str, list[dict[str, Any]]]], tiers: Any, groups: np.ndarray
) -> dict[str, Any]:
    names = [t.name for t in tiers]
    slow, faster = names[-1], names[:-1]
    out: dict[str, Any] = {"comparisons": {}}
    for part, s in scores.items():
        comp = out["comparisons"][part] = {}
        for t in names:
            comp[f"supernet-vs-fedavg/{t}"] = _compare(s, "supernet", "fedavg", t, slow, groups)
            comp[f"supernet-vs-width/{t}"] = _compare(s, "supernet", "width", t, t, groups)
            comp[f"central-vs-supernet/{t}"] = _compare(s, "central", "supernet", t, t, groups)
    d, i = out["comparisons"]["dirichlet"], out["comparisons"]["iid"]
    out.update(
        faster_tiers_gain_pts=min(d[f"supernet-vs-fedavg/{t}"]["diff_pts"] for t in faster),
        slowest_tier_gain_pts=d[f"supernet-vs-fedavg/{slow}"]["diff_pts"],
        vs_width_only_pts=min(d[f"supernet-vs-width/{t}"]["diff_pts"] for t in names),
        vs_central_dirichlet_pts=max(d[f"central-vs-supernet/{t}"]["diff_pts"] for t in names),
        vs_central_iid_pts=max(i[f"central-vs-supernet/{t}"]["diff_pts"] for t in names),
    )
    return out


def _resume_check(tiers: Any, args: argparse.Namespace) -> float:
    """Run the supernet (Dirichlet, seed 0) for half the rounds, resume it to the end, and
    return the largest difference from the uninterrupted run's weights."""
    import dataclasses

    spec = _spec("supernet", tiers, args, "dirichlet", 0.5, 0)
    whole = args.out / "dirichlet" / "seed-0" / "supernet"
    parts = args.out / "resume-check"
    half = dataclasses.replace(spec, rounds=max(1, spec.rounds // 2))
    for s in (half, spec):
        run_in_process(
            server_app, client_app, s.num_clients, {"spec": s.to_json(), "out": str(parts)}
        )
    family, _ = resolve(spec)
    like = family.full_model(spec.seed).state_dict()
    a, b = load_server_state(whole, spec.digest, like), load_server_state(parts, spec.digest, like)
    assert a is not None and b is not None
    return max(float((a.weights[k].double() - b.weights[k].double()).abs().max()) for k in like)


def _non_loopback() -> int:
    """Listening sockets of this process beyond loopback (the in-process grid opens none; the
    deployment runtime's are checked by tests/nas/federated/test_runtime.py)."""
    import psutil

    conns = psutil.Process().net_connections(kind="inet")
    return sum(
        1 for c in conns if c.status == psutil.CONN_LISTEN and not c.laddr.ip.startswith("127.")
    )


def _plots(out: Path, histories: dict[str, Any], tiers: Any) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for t in tiers:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for (part, method), runs in sorted(histories.items()):
            acc = np.mean([[r["tiers"][t.name]["accuracy"] for r in h] for h in runs], axis=0)
            ax.plot(
                np.arange(1, len(acc) + 1),
                100 * acc,
                label=f"{method} ({part})",
                linestyle="-" if part == "dirichlet" else "--",
            )
        ax.set(
            xlabel="round", ylabel="test accuracy (%)", title=f"tier {t.name} ({t.mmacs:.2f} MMACs)"
        )
        ax.legend(fontsize=6)
        fig.tight_layout()
        name = f"tier-{t.name}.png"
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        files.append(name)
    return files


def _table(results: dict[str, Any]) -> str:
    lines = [
        "| partition | tier | MMACs | " + " | ".join(METHODS) + " |",
        "|---" * (3 + len(METHODS)) + "|",
    ]
    for row in results["rows"]:
        accs = " | ".join(f"{row[m]:.1f}" for m in METHODS)
        lines.append(f"| {row['partition']} | {row['tier']} | {row['mmacs']:.2f} | {accs} |")
    t = results["targets"]
    lines += ["", "| target | value (points) |", "|---|---|"]
    for key in (
        "faster_tiers_gain_pts",
        "slowest_tier_gain_pts",
        "vs_width_only_pts",
        "vs_central_dirichlet_pts",
        "vs_central_iid_pts",
    ):
        lines.append(f"| {key} | {t[key]:+.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", type=int, default=None, help="default 5 (quick: 1)")
    p.add_argument("--rounds", type=int, default=None, help="default 20 (quick: 3)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument(
        "--quick", action="store_true", help="1 augmented copy per source, 1 seed, 3 rounds"
    )
    args = p.parse_args(argv)
    args.data_options = {"copies_train": 1, "copies_val": 1, "copies_test": 1} if args.quick else {}
    args.seeds = args.seeds or (1 if args.quick else 5)
    args.rounds = args.rounds or (3 if args.quick else 20)
    torch.set_num_threads(1)
    began = time.perf_counter()
    import search_spaces

    space = search_spaces.get_space("tiny")
    tiers = _tiers(space, 4, args.candidates)
    scores: dict[str, dict[str, list[dict[str, Any]]]] = {}
    histories: dict[tuple[str, str], list[Any]] = {}
    rows_runs: list[dict[str, Any]] = []
    for part, alpha in PARTITIONS:
        scores[part] = {m: [] for m in METHODS}
        for seed in range(args.seeds):
            for method in METHODS[:3]:
                s, h = _federated(method, tiers, args, part, alpha, seed)
                scores[part][method].append(s)
                histories.setdefault((part, method), []).append(h)
                rows_runs.append(
                    {
                        "partition": part,
                        "seed": seed,
                        "method": method,
                        "accuracy": {k: float(v.mean()) for k, v in s.items()},
                        "bytes_per_client_round": {
                            c["tier"]: c["bytes_down"] + c["bytes_up"] for c in h[-1]["clients"]
                        },
                        "wall_s": sum(r["wall_s"] for r in h),
                    }
                )
            scores[part]["central"].append(_central(tiers, args, seed))
    _, data = resolve(_spec("supernet", tiers, args, "iid", None, 0))
    groups = data.groups("test")
    rows = []
    for part, _ in PARTITIONS:
        for t in tiers:
            row = {
                "partition": part,
                "tier": t.name,
                "mmacs": t.mmacs,
                "predicted_ms": t.predicted_ms,
                "budget_ms": t.budget_ms,
            }
            for m in METHODS:
                tier = tiers[-1].name if m == "fedavg" else t.name
                row[m] = 100 * float(np.mean([s[tier].mean() for s in scores[part][m]]))
            rows.append(row)
    results = {
        "benchmark": "federated",
        "commit": git_commit(),
        "quick": bool(args.quick),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "tiers": [
            {
                "name": t.name,
                "arch": t.arch,
                "mmacs": t.mmacs,
                "predicted_ms": t.predicted_ms,
                "budget_ms": t.budget_ms,
                "device": t.device,
            }
            for t in tiers
        ],
        "tier_rule": "most MACs under the budget on pixel3-emulated's cost model (no client data)",
        "rows": rows,
        "runs": rows_runs,
        "loadavg": list(os.getloadavg()),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "wall_s": time.perf_counter() - began,
    }
    results["targets"] = {
        **_targets(scores, tiers, groups),
        "commit": results["commit"],
        "resume_max_abs_diff": _resume_check(tiers, args),
        "non_loopback_sockets": _non_loopback(),
    }
    results["plots"] = _plots(args.out, histories, tiers)
    write_json_atomic(args.out / "results.json", results)
    write_text_atomic(args.out / "table.md", _table(results))
    print(_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
