"""The run's optional `federated` stage (issue 21): device tiers train the space's subnets in
rounds, each tier's subnet re-checked on its device at the end, and its report section.

Each tier names a device of the run (`devices`), a latency budget and a client count; its subnet
is the arch with the most MACs that the run's latency model of that device puts under the
budget (`nas.federated.choose_tiers`: no client data). The rounds run through the same function
as `nas federated run` (`nas.app.federated_commands.run_federated`), on the in-process grid or
Flower's deployment runtime, into ``RUN/federated/``, and resume at the last finished round.
With ``init: supernet`` they start from the run's trained supernet weights, else from seeded
ones. At the end each tier's subnet is priced again as a whole network on its device (measured
on a real device, priced by the profile's cost model on an emulated one) against its budget.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from nas.app import builtin_stages as _builtin  # noqa: F401  (registers "report" first)
from nas.app.config import FederatedConfig
from nas.app.errors import InputError
from nas.app.report import register_report_section
from nas.app.stages import Stage, exempt_keys, key_added, register_stage
from nas.core.files import read_json, sha256_file, write_json_atomic

__all__ = ["FEDERATED_DIR", "TIERS_JSON", "device_label", "federated_section", "stage_federated"]

log = logging.getLogger(__name__)

FEDERATED_DIR = "federated"
TIERS_JSON = "tiers.json"
_HOW = {"real": "measured", "emulated": "priced", "tabular": "table"}


def device_label(devices: list[Any], name: str) -> str | None:
    """The label (``NAME-DTYPE``) of the run's device that `name` names (by name or label)."""
    for dev in devices:
        label = f"{dev.name}-{dev.dtype}"
        if name in (dev.name, label):
            return label
    return None


def _budgets(state: Any) -> list[Any]:
    from nas.federated import TierBudget

    budgets = []
    for t in state.config.federated.tiers:
        label = device_label(state.config.devices, t.device)
        if label is None or label not in state.latency_models:
            raise InputError(f"federated tier {t.name!r}: {t.device!r} is not a device of the run")
        budgets.append(TierBudget(t.name, state.latency_models[label], t.budget_ms, t.clients))
    return budgets


def _init(state: Any, out: Path) -> dict[str, str]:
    """The run's trained supernet weights as the rounds' start (`init: supernet`)."""
    from safetensors.torch import save_file

    if state.supernet is None:
        raise InputError("federated.init 'supernet' needs the run's trained supernet")
    path = out / "init.safetensors"
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.supernet.state_dict().items()}
    save_file(tensors, str(path))
    return {"init": str(path.resolve()), "init_sha256": sha256_file(path)}


def _tiers(state: Any) -> tuple[Any, ...]:
    """Each tier's subnet by the section's rule and MACs ratio, priced by the run's models."""
    from nas.app.federated_commands import pick_tiers

    cfg = state.config.federated
    return pick_tiers(
        state.space,
        _budgets(state),
        cfg.candidates,
        state.config.seed,
        cfg.tier_rule,
        cfg.min_macs_ratio,
    )


def _spec(state: Any, tiers: tuple[Any, ...], out: Path) -> Any:
    from nas.app.federated_commands import make_spec
    from nas.federated import LocalSettings

    cfg, run = state.config.federated, state.config
    local = LocalSettings(cfg.local_epochs, cfg.batch_size, cfg.lr, max_batches=cfg.max_batches)
    init = _init(state, out) if cfg.init == "supernet" else {}
    return make_spec(
        tiers, cfg.kind, local, space=run.space.name, dataset=run.data.name,
        dataset_options=dict(run.data.args), rounds=cfg.rounds, partition=cfg.partition,
        alpha=cfg.alpha, seed=run.seed, min_clients=cfg.min_clients,
        test_images=cfg.test_images, dp=dict(cfg.dp) or None, server_lr=cfg.server_lr,
        server_momentum=cfg.server_momentum, tier_sampling=cfg.tier_sampling, **init,
    )  # fmt: skip


def _recheck(state: Any, spec: Any, tiers: tuple[Any, ...], out: Path) -> list[dict[str, Any]]:
    """Each tier's trained subnet against its budget: the latency model's price and the device's
    own whole-network figure (cached in ``networks.json``)."""
    from nas.app.budgets import device_figures

    rows = []
    for t, trained in zip(tiers, spec.tiers, strict=True):
        label = device_label(state.config.devices, next(
            c.device for c in state.config.federated.tiers if c.name == t.name
        ))  # fmt: skip
        assert label is not None  # _budgets checked it
        row: dict[str, Any] = {"tier": t.name, "device": label, "budget_ms": t.budget_ms}
        row.update(clients=t.clients, mmacs=t.mmacs, arch_key=None, predicted_ms=None)
        row.update(device_ms=None, how=None, meets_budget=None)
        if trained.arch is None:  # a HeteroFL width of one arch: not an arch of the space
            row["note"] = f"width {trained.width:g} of {spec.kind} base arch: not priced"
            rows.append(row)
            continue
        arch = state.space.validate(dict(trained.arch))
        device, model = state.devices[label], state.latency_models[label]
        key = state.space.key(arch)
        figure = device_figures(state.space, device, model.dtype, [arch], out / "networks.json")
        row.update(
            arch_key=key,
            mmacs=state.space.cost(arch).macs / 1e6,
            predicted_ms=float(model.predict_arch(state.space, arch)),
            device_ms=figure[key],
            how=_HOW.get(getattr(device, "kind", ""), "measured"),
            meets_budget=bool(figure[key] <= t.budget_ms),
        )
        rows.append(row)
    return rows


def _plots(out: Path, history: list[dict[str, Any]], names: list[str]) -> list[str]:
    """One accuracy-per-round plot per tier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for name in names:
        fig, ax = plt.subplots(figsize=(4.5, 3))
        acc = [100 * r["tiers"][name]["accuracy"] for r in history]
        ax.plot(range(1, len(acc) + 1), acc, marker="o")
        ax.set(xlabel="round", ylabel="test accuracy (%)", title=f"tier {name}")
        fig.tight_layout()
        path = out / f"tier-{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path.name)
    return files


def stage_federated(state: Any, progress: bool) -> None:
    """Pick each tier's subnet, run (or resume) the rounds, re-check each subnet on its device,
    and write ``federated/tiers.json`` and one plot per tier."""
    from nas.app.federated_commands import run_federated

    cfg = state.config.federated
    out = state.run_dir / FEDERATED_DIR
    out.mkdir(parents=True, exist_ok=True)
    tiers = _tiers(state)
    spec = _spec(state, tiers, out)
    began = time.perf_counter()
    server = run_federated(spec, out, cfg.runtime)
    rows = _recheck(state, spec, tiers, out)
    summary = {
        "kind": cfg.kind,
        "runtime": cfg.runtime,
        "init": cfg.init,
        "partition": cfg.partition,
        "alpha": cfg.alpha,
        "rounds": server["round"],
        "rounds_asked": spec.rounds,
        "this_call_wall_s": time.perf_counter() - began,
        "rounds_wall_s": sum(r["wall_s"] for r in server["history"]),
        "tiers": rows,
        "plots": _plots(out, server["history"], [t.name for t in tiers]),
    }
    write_json_atomic(out / TIERS_JSON, summary)
    missed = [r["tier"] for r in rows if r["meets_budget"] is False]
    if missed:
        log.warning("federated: the subnets of tiers %s miss their budgets on the device", missed)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _tier_table(summary: dict[str, Any], last: dict[str, Any]) -> list[str]:
    bytes_by_tier: dict[str, list[int]] = {}
    for c in last.get("clients", []):
        bytes_by_tier.setdefault(c["tier"], []).append(c["bytes_down"] + c["bytes_up"])
    lines = [
        "| tier | device | clients | MMACs | budget ms | predicted ms | device ms | budget met "
        "| accuracy % | bytes sent per client per round |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["tiers"]:
        sent = bytes_by_tier.get(r["tier"], [])
        met = {True: "met", False: "**missed**", None: r.get("note", "-")}[r["meets_budget"]]
        device_ms = _ms(r["device_ms"]) + (f" ({r['how']})" if r["how"] else "")
        acc = last.get("tiers", {}).get(r["tier"], {}).get("accuracy")
        lines.append(
            f"| {r['tier']} | {r['device']} | {r['clients']} | {r['mmacs']:.3g} | "
            f"{r['budget_ms']:.4g} | {_ms(r['predicted_ms'])} | {device_ms} | {met} | "
            f"{_pct(acc)} | {max(sent) if sent else '-'} |"
        )
    return lines


def federated_section(state: Any) -> list[str]:
    """The report's section: tiers, budgets met or missed, accuracy per round, bytes, wall time
    ([] when the stage is off or has not finished)."""
    path = state.run_dir / FEDERATED_DIR / TIERS_JSON
    cfg = getattr(state.config, "federated", None)  # a stored config from before the stage
    if cfg is None or not cfg.enabled or not path.exists():
        return []
    summary = read_json(path, "the federated stage's summary", "run the stage again")
    server = json.loads((path.parent / "server_state.json").read_text())
    history = server["history"]
    names = [r["tier"] for r in summary["tiers"]]
    lines = [
        "## Federated rounds",
        "",
        f"{summary['kind']} on the {summary['runtime']} runtime, {summary['partition']} "
        f"partition, from {summary['init']} weights: {summary['rounds']} of "
        f"{summary['rounds_asked']} rounds, {summary['rounds_wall_s']:.1f} s of rounds "
        f"({summary['this_call_wall_s']:.1f} s in the last call). Each tier's subnet is priced "
        "again as a whole network on its device at the end (measured on a real device, priced "
        "by its profile on an emulated one).",
        "",
        *_tier_table(summary, history[-1] if history else {}),
        "",
        "| round | " + " | ".join(f"{n} accuracy %" for n in names) + " | wall s |",
        "|---" * (len(names) + 2) + "|",
    ]
    for r in history:
        accs = " | ".join(_pct(r["tiers"][n]["accuracy"]) for n in names)
        lines.append(f"| {r['round']} | {accs} | {r['wall_s']:.1f} |")
    lines.append("")
    for plot in summary["plots"]:
        lines += [f"![accuracy per round, {plot[5:-4]}]({FEDERATED_DIR}/{plot})", ""]
    return lines


# plain FedAvg, as the stage averaged before the server could step: older folders keep rounds
key_added("federated.server_momentum", 0.0)
key_added("federated.server_lr", 1.0)
# before session 15 the stage took the most MACs under each budget, tiers unconstrained, and
# each supernet client trained its own tier only
key_added("federated.tier_rule", "macs")
key_added("federated.min_macs_ratio", None)
key_added("federated.tier_sampling", "own")
exempt_keys(
    {
        "federated.runtime": "the in-process grid and Flower's deployment runtime run the same "
        "apps to the same weights (tested to 1e-6), so rounds begun on one resume on the other"
    }
)

register_stage(
    Stage(
        "federated",
        stage_federated,
        # more rounds continue the rounds (the server state resumes); any other key redoes them
        keys=tuple(
            f"federated.{f.name}"
            for f in fields(FederatedConfig)
            if f.name not in ("rounds", "runtime")
        ),
        extends=("federated.rounds",),
        after=("latency", "supernet"),
        reads=("supernet", "latency"),
        writes=(FEDERATED_DIR,),
        switch="federated.enabled",
        doc="federated rounds: each device tier trains the subnet its budget affords",
    ),
    before="report",
)
register_report_section("federated", federated_section)
