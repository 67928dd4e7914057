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
- `supernet-dp@E` (Dirichlet only, one per `--dp-epsilons` level): the supernet with Flower's
  local DP (each client's update clipped to `--dp-clip` and noised for (E, `--dp-delta`)); its
  accuracy cost is the supernet's accuracy without DP minus with it, per tier.

Accuracy is on the whole test split after batch norm is re-estimated on server-side validation
images; differences are judged with a paired bootstrap over test source images on the
seed-averaged per-image scores, plus the seed-to-seed spread of the difference
(`nas.supernet.resolvable_difference`); one inside it is "not resolvable".

    python benchmarks/federated.py --out runs/bench/federated [--seeds 5] [--rounds 20]
        [--local-epochs 1] [--dp-epsilons 10,1000] [--quick]

Resumable: every run keeps its server state under --out; a finished one is read, not rerun.
Writes results.json (rows, targets, commit at the start, load), table.md and one plot per tier
into --out; the figures and the table are made by benchmarks/_federated_report.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

import latency_models
from benchmarks._federated_args import parse_args
from benchmarks._federated_budgets import tier_budgets, width_model_ms
from benchmarks._federated_report import (
    DP_PREFIX,
    METHODS,
    PARTITIONS,
    plots,
    table,
    targets,
    verdicts,
)
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

_RULES = {"macs": "most MACs", "depth": "most blocks (then most MACs)"}


def _device() -> Any:
    return latency_models.CostModelPredictor(latency_models.get_device("pixel3-emulated"))


def _tiers(space: Any, clients: int, args: argparse.Namespace) -> tuple[TierSpec, ...]:
    device = _device()
    candidates = args.candidates
    budgets = tier_budgets(args.budgets, space, device, candidate_archs(space, candidates, seed=0))
    return choose_tiers(
        space,
        [
            TierBudget(n, device, b, clients)
            for n, b in zip(("fast", "mid", "slow"), budgets, strict=True)
        ],
        candidates=candidates,
        seed=0,
        rule=args.tier_rule,
        min_macs_ratio=args.min_macs_ratio,
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

    kind, base, dp = "supernet", None, None
    if method.startswith(DP_PREFIX):  # the supernet with local DP at one epsilon
        eps = float(method.removeprefix(DP_PREFIX))
        dp = {"clipping_norm": args.dp_clip, "epsilon": eps, "delta": args.dp_delta}
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
        dp=dp,
        server_momentum=args.server_momentum,
        # the width row stays HeteroFL's (each client its own width); FedAvg has one tier
        tier_sampling=args.tier_sampling if kind == "supernet" else "own",
    )


def _scores(spec: FederatedSpec, out: Path) -> dict[str, Any]:
    """Per tier, the per-image correctness of the final weights (cached in scores.npz, with
    the round it scores in scores.json: a run resumed to more rounds is scored again)."""
    cache, stamp = out / "scores.npz", out / "scores.json"
    family, data = resolve(spec)
    scored = json.loads(stamp.read_text()).get("round") if stamp.exists() else None
    if cache.exists() and scored != spec.rounds:  # unstamped (older) caches are scored again
        cache.unlink()
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
        write_json_atomic(stamp, {"round": state.round})
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
    out = args.out / f"{partition}" / f"seed-{seed}" / method.replace("@", "-eps")
    run_in_process(
        server_app, client_app, spec.num_clients, {"spec": spec.to_json(), "out": str(out)}
    )
    history = json.loads((out / "server_state.json").read_text())["history"]
    return _scores(spec, out), history


def _central_settings(args: argparse.Namespace, train_images: int, clients: int) -> LocalSettings:
    """Centralized training's budget: `samples`, the federated run's sample-gradient steps
    (rounds x local epochs epochs over the pooled data, the issue's ceiling; its steps run in
    one sequence, `clients` times the sequential steps of clients stepping side by side), or
    `sequential`, the steps one average client takes in the whole run (each of rounds x local
    epochs passes stops after that client's batches per epoch: the same wall-clock steps)."""
    epochs = args.rounds * args.local_epochs
    if args.central_budget == "samples":
        return LocalSettings(epochs=epochs, batch_size=args.batch_size, lr=args.lr)
    per_epoch = math.ceil(train_images / clients / args.batch_size)
    return LocalSettings(epochs, args.batch_size, args.lr, max_batches=per_epoch)


def _central(tiers: Any, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Each tier's subnet on the pooled train split, for `_central_settings`' budget."""
    folder = "central" if args.central_budget == "samples" else f"central-{args.central_budget}"
    out = args.out / folder / f"seed-{seed}"
    cache = out / "scores.npz"
    spec = _spec("supernet", tiers, args, "iid", None, seed)
    family, data = resolve(spec)
    settings = _central_settings(args, len(data.train.tensors[1]), spec.num_clients)
    budget = {"spec": spec.digest, "local": dataclasses.asdict(settings)}
    if cache.exists() and _read_budget(out) != budget:  # made for other rounds or settings
        cache.unlink()
    if not cache.exists():
        found = {}
        for t in spec.tiers:
            model = family.full_model(seed)
            train_local(family, model, t.sub_model, *data.train.tensors, settings, seed)
            cal = data.val.tensors[0][: spec.calibration_images]
            found[t.name] = evaluate_tier(family, model, t.sub_model, cal, *data.test.tensors)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **found)
        write_json_atomic(out / "budget.json", budget)
    with np.load(cache) as z:
        return {k: z[k] for k in z.files}


def _read_budget(out: Path) -> Any:
    """The settings a cached centralized row was trained with (None when unrecorded)."""
    path = out / "budget.json"
    return json.loads(path.read_text()) if path.exists() else None


def _resume_check(tiers: Any, args: argparse.Namespace) -> float:
    """Run the supernet (Dirichlet, seed 0) for half the rounds, resume it to the end, and
    return the largest difference from the uninterrupted run's weights."""
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


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The run's settings (`benchmarks/_federated_args.py`), defaults filled in."""
    return parse_args(argv, __doc__.splitlines()[0])


def _run_all(tiers: Sequence[Any], args: argparse.Namespace) -> tuple[Any, Any, list[Any]]:
    """Every federated and centralized run, seed-major (a stopped run leaves whole seeds): the
    test scores per partition and method, the round histories, a row per federated run."""
    scores: dict[str, dict[str, list[dict[str, Any]]]] = {}
    histories: dict[tuple[str, str], list[Any]] = {}
    rows_runs: list[dict[str, Any]] = []
    for part, _ in PARTITIONS:
        scores[part] = {m: [] for m in METHODS}
    scores["dirichlet"].update({m: [] for m in args.dp_methods})
    for seed in range(args.seeds):  # seed-major: a stopped run leaves whole seeds
        if args.only_seeds is not None and seed not in args.only_seeds:
            continue
        for part, alpha in PARTITIONS:
            methods = (
                [*args.dirichlet_methods, *args.dp_methods]
                if part == "dirichlet"
                else args.iid_methods
            )
            if part == "iid" and seed >= args.iid_seeds:
                methods = []
            for method in methods:
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
            if seed < args.central_seeds:
                scores[part]["central"].append(_central(tiers, args, seed))
    return scores, histories, rows_runs


def _tier_rows(scores: Any, tiers: Sequence[Any]) -> list[dict[str, Any]]:
    """Mean test accuracy (%) of each method per partition and tier."""
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
                runs = scores[part][m]
                row[m] = 100 * float(np.mean([s[tier].mean() for s in runs])) if runs else None
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    commit = git_commit()  # at the start: main may move while a long run works
    load_before = list(os.getloadavg())
    torch.set_num_threads(1)
    began = time.perf_counter()
    import search_spaces

    space = search_spaces.get_space("tiny")
    tiers = _tiers(space, 4, args)
    scores, histories, rows_runs = _run_all(tiers, args)
    _, data = resolve(_spec("supernet", tiers, args, "iid", None, 0))
    groups = data.groups("test")
    rows = _tier_rows(scores, tiers)
    results = {
        "benchmark": "federated",
        "commit": commit,
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
        "tier_rule": f"{_RULES[args.tier_rule]} under the budget on pixel3-emulated's cost model "
        "(no client data)"
        + (
            f", each at most 1/{args.min_macs_ratio:g} of the MACs of the tier above"
            if args.min_macs_ratio
            else ""
        ),
        "min_macs_ratio": args.min_macs_ratio,
        "budget_rule": args.budgets,
        "width_predicted_ms": dict(
            zip(
                [t.name for t in tiers],
                width_model_ms(space, _device().emulated, tiers[0].arch),
                strict=True,
            )
        ),
        "rows": rows,
        "runs": rows_runs,
        "loadavg": list(os.getloadavg()),
        "loadavg_at_start": load_before,
        "shared_load": "timings taken on a shared 2-core host under the load recorded here",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "wall_s": time.perf_counter() - began,
        "note": args.note,
        "seeds_run": {p: {m: len(r) for m, r in s.items()} for p, s in scores.items()},
    }
    results["targets"] = {
        **targets(scores, tiers, groups),
        "commit": results["commit"],
        "resume_max_abs_diff": _resume_check(tiers, args) if args.resume_check else None,
        "non_loopback_sockets": _non_loopback(),
    }
    results["verdicts"] = verdicts(results["targets"], [t.name for t in tiers])
    results["plots"] = plots(args.out, histories, tiers)
    write_json_atomic(args.out / "results.json", results)
    write_text_atomic(args.out / "table.md", table(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
