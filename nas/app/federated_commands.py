"""`nas federated tiers` and `nas federated run`: device tiers to subnets, then the rounds.

A tier is ``NAME:DEVICE:BUDGET_MS:CLIENTS`` (``phone:pixel3-emulated:0.5:4``). Each tier's
subnet is the arch with the most MACs whose latency, predicted by the device's cost model, meets
its budget (`nas.federated.choose_tiers`; no client data). `run` trains the federated supernet
(``--kind supernet``), FedAvg of the slowest tier's subnet on every client (``fedavg``) or
HeteroFL's width slicing of the fastest tier's arch (``width``), on the in-process grid or on
Flower's deployment runtime (``--runtime deployment``, loopback only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nas.app.errors import InputError, stage_work

__all__ = [
    "KINDS",
    "add_federated_parser",
    "make_spec",
    "parse_tier",
    "pick_tiers",
    "run_cmd",
    "run_federated",
    "tiers_cmd",
]

KINDS = ("supernet", "fedavg", "width")


def parse_tier(text: str) -> tuple[str, str, float, int]:
    """``NAME:DEVICE:BUDGET_MS:CLIENTS`` as its four parts, or InputError naming what is wrong."""
    parts = text.split(":")
    if len(parts) != 4 or not all(parts):
        raise InputError(
            f"--tier {text!r}: write NAME:DEVICE:BUDGET_MS:CLIENTS, e.g. phone:pixel3-emulated:0.5:4"
        )
    name, device, budget, clients = parts
    try:
        budget_ms, count = float(budget), int(clients)
    except ValueError:
        raise InputError(
            f"--tier {text!r}: BUDGET_MS must be a number and CLIENTS an int"
        ) from None
    if not budget_ms > 0 or count < 1:
        raise InputError(f"--tier {text!r}: BUDGET_MS must be > 0 and CLIENTS >= 1")
    return name, device, budget_ms, count


def pick_tiers(
    space: Any,
    budgets: list[Any],
    candidates: int,
    seed: int,
    rule: str = "macs",
    min_macs_ratio: float | None = None,
) -> tuple[Any, ...]:
    """Each tier's subnet (`nas.federated.choose_tiers` with `rule` and `min_macs_ratio`), a
    budget no arch meets as InputError naming the fastest arch's latency."""
    from nas.federated import choose_tiers

    try:
        return choose_tiers(
            space,
            budgets,
            candidates=candidates,
            seed=seed,
            rule=rule,
            min_macs_ratio=min_macs_ratio,
        )
    except ValueError as err:
        raise InputError(str(err)) from None


def _tiers(args: argparse.Namespace) -> tuple[Any, tuple[Any, ...]]:
    import latency_models
    import search_spaces
    from nas.federated import TierBudget

    if not args.tier:
        raise InputError("give at least one --tier NAME:DEVICE:BUDGET_MS:CLIENTS")
    space = search_spaces.get_space(args.space)
    budgets = []
    for text in args.tier:
        name, device, budget_ms, clients = parse_tier(text)
        predictor = latency_models.CostModelPredictor(latency_models.get_device(device))
        budgets.append(TierBudget(name, predictor, budget_ms, clients))
    return space, pick_tiers(
        space, budgets, args.candidates, args.seed, args.tier_rule, args.min_macs_ratio
    )


def tiers_cmd(args: argparse.Namespace) -> int:
    """Print each tier's subnet, its predicted latency and MACs."""
    _, tiers = _tiers(args)
    for t in tiers:
        print(f"{t.name}: {t.clients} clients on {t.device}, budget {t.budget_ms:g} ms -> "
              f"{t.predicted_ms:.4g} ms, {t.mmacs:.3g} MMACs")  # fmt: skip
    return 0


def make_spec(tiers: tuple[Any, ...], kind: str, local: Any, **fields: Any) -> Any:
    """The `FederatedSpec` of a run of `kind` over `tiers` (`supernet`: each tier its subnet;
    `fedavg`: every tier the slowest tier's subnet; `width`: HeteroFL's widths 1, 1/2, 1/4, ...
    of the fastest tier's arch, each client training its own width whatever `tier_sampling`
    says); bad settings as InputError."""
    from dataclasses import replace

    from nas.federated import FederatedSpec

    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if fields.get("partition") == "dirichlet" and not (fields.get("alpha") or 0) > 0:
        raise InputError(f"alpha must be > 0 for a Dirichlet partition; got {fields.get('alpha')}")
    base_arch = None
    if kind == "fedavg":
        slowest = min(tiers, key=lambda t: t.mmacs)
        tiers = tuple(replace(t, arch=slowest.arch) for t in tiers)
    elif kind == "width":
        base_arch = max(tiers, key=lambda t: t.mmacs).arch
        tiers = tuple(replace(t, arch=None, width=0.5**i) for i, t in enumerate(tiers))
        fields["tier_sampling"] = "own"  # the baseline is HeteroFL's: each client its width
    try:
        return FederatedSpec(
            tiers=tiers,
            kind="width" if kind == "width" else "supernet",
            base_arch=base_arch,
            local=local,
            **fields,
        )
    except ValueError as err:
        raise InputError(str(err)) from None


def _spec(args: argparse.Namespace) -> Any:
    from nas.federated import LocalSettings

    if not 0.0 <= args.server_momentum < 1.0:
        raise InputError(
            f"--server-momentum must be in [0, 1) (0: FedAvg; 0.9 is usual); got "
            f"{args.server_momentum}"
        )
    _, tiers = _tiers(args)
    dp = None
    if args.dp_clip is not None:
        dp = {"clipping_norm": args.dp_clip, "epsilon": args.dp_epsilon, "delta": args.dp_delta}
    local = LocalSettings(args.local_epochs, args.batch_size, args.lr, max_batches=args.max_batches)
    return make_spec(
        tiers, args.kind, local, space=args.space, dataset=args.data, rounds=args.rounds,
        partition=args.partition, alpha=args.alpha, seed=args.seed,
        min_clients=args.min_clients, test_images=args.test_images, dp=dp,
        server_lr=args.server_lr, server_momentum=args.server_momentum,
        tier_sampling=args.tier_sampling,
    )  # fmt: skip


def _check_sources(spec: Any) -> None:
    from nas.app.federated_apps import resolve
    from nas.federated import check_partitions

    _, data = resolve(spec)
    try:
        check_partitions(spec, data)
    except ValueError as err:
        raise InputError(str(err)) from None


def run_federated(spec: Any, out: Path, runtime: str = "grid") -> dict[str, Any]:
    """Run (or resume at its last finished round) `spec`'s rounds into `out`, on the in-process
    grid or Flower's deployment runtime; the saved server state (JSON) at the end. The caller
    holds `out`'s lock: the CLI's `run` and the run config's `federated` stage share this."""
    from nas.app.federated_apps import client_app, server_app
    from nas.core.files import write_json_atomic
    from nas.federated import run_deployment, run_in_process

    _check_sources(spec)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "spec.json", json.loads(spec.to_json()))
    if runtime == "deployment":
        run_deployment(spec, out)
    else:
        config = {"spec": spec.to_json(), "out": str(out)}
        run_in_process(server_app, client_app, spec.num_clients, config)
    state: dict[str, Any] = json.loads((out / "server_state.json").read_text())
    return state


def run_cmd(args: argparse.Namespace) -> int:
    """Run (or resume) the rounds into --out; print the last round's accuracy per tier."""
    from nas.app.lock import folder_lock

    if args.partition == "dirichlet" and (args.alpha is None or not args.alpha > 0):
        raise InputError(f"--alpha must be > 0 for a Dirichlet partition; got {args.alpha}")
    spec = _spec(args)
    _check_sources(spec)  # before the folder is made: bad input leaves nothing behind
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out), stage_work("federated", out):
        state = run_federated(spec, out, args.runtime)
    last: dict[str, Any] = state["history"][-1] if state["history"] else {"tiers": {}}
    tiers = ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in last["tiers"].items())
    print(f"federated run in {out}: round {state['round']} of {spec.rounds}; accuracy {tiers}")
    return 0


def add_federated_parser(sub: Any) -> None:
    """`nas federated {tiers,run}` (argument-parser builder)."""
    from nas.app.arg_checks import positive_float, positive_int

    fed = sub.add_parser("federated", help="federated learning: each device tier trains its subnet")
    cmds = fed.add_subparsers(dest="federated_command", required=True)
    for name, func, help_text in (
        ("tiers", tiers_cmd, "the subnet of each device tier under its latency budget"),
        ("run", run_cmd, "run (or resume) federated rounds into --out"),
    ):
        p = cmds.add_parser(name, help=help_text)
        p.add_argument(
            "--tier", action="append", default=[], metavar="NAME:DEVICE:BUDGET_MS:CLIENTS"
        )
        p.add_argument("--space", default="tiny")
        p.add_argument("--candidates", type=positive_int, default=500, help="archs priced per tier")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument(
            "--tier-rule",
            choices=("macs", "depth"),
            default="macs",
            help="each tier's subnet: the most MACs under its budget, or the most blocks",
        )
        p.add_argument(
            "--min-macs-ratio",
            type=float,
            default=None,
            metavar="R",
            help="keep each tier's subnet at most 1/R of the MACs of the tier with the next "
            "larger budget (2: tiers at least 2x apart in compute)",
        )
        p.set_defaults(func=func)
        if name == "tiers":
            continue
        p.add_argument("--out", required=True, help="the run's folder (resumes what it holds)")
        p.add_argument("--kind", choices=KINDS, default="supernet")
        p.add_argument("--rounds", type=positive_int, default=10)
        p.add_argument("--partition", choices=("iid", "dirichlet"), default="iid")
        p.add_argument("--alpha", type=float, default=None, help="Dirichlet concentration (> 0)")
        p.add_argument("--data", default="digits", help="'digits' or an image folder")
        p.add_argument("--local-epochs", type=positive_int, default=1)
        p.add_argument("--batch-size", type=positive_int, default=32)
        p.add_argument("--lr", type=positive_float, default=0.05)
        p.add_argument("--max-batches", type=positive_int, default=None, help="per local epoch")
        p.add_argument("--min-clients", type=positive_int, default=None)
        p.add_argument("--test-images", type=positive_int, default=None)
        p.add_argument("--runtime", choices=("grid", "deployment"), default="grid")
        p.add_argument("--dp-clip", type=positive_float, default=None, help="local DP: L2 clip")
        p.add_argument("--dp-epsilon", type=positive_float, default=1.0)
        p.add_argument("--dp-delta", type=positive_float, default=1e-5)
        p.add_argument(
            "--server-momentum",
            type=float,
            default=0.0,
            help="FedAvgM: the server's momentum on the averaged update, in [0, 1) (0: FedAvg)",
        )
        p.add_argument("--server-lr", type=positive_float, default=1.0, help="the server's step")
        p.add_argument(
            "--tier-sampling",
            choices=("own", "nested", "sandwich"),
            default="sandwich",
            help="per local step a client trains its own tier and the smallest one nested in it "
            "(sandwich, the default), its own tier only (own: runs made before session 14), or "
            "one of the nested tiers, uniformly (nested: FjORD)",
        )
