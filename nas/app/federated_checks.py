"""The run config's `federated` section checked before any work: names, ranges, tiers against
the run's devices, budgets no arch meets, and more clients than the data has source images."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["federated_problems"]

_CHOICES = {
    "kind": ("supernet", "fedavg", "width"),
    "partition": ("iid", "dirichlet"),
    "runtime": ("grid", "deployment"),
    "init": ("scratch", "supernet"),
    "tier_rule": ("macs", "depth"),
    "tier_sampling": ("own", "nested", "sandwich"),
}


def _numbers(cfg: Any) -> Iterator[tuple[str, str]]:
    for key, low in (("rounds", 1), ("local_epochs", 1), ("batch_size", 1), ("candidates", 1)):
        value = getattr(cfg, key)
        if isinstance(value, int) and value < low:
            yield f"federated.{key}", f"expected >= {low}, got {value}"
    for key in ("max_batches", "min_clients", "test_images"):
        value = getattr(cfg, key)
        if isinstance(value, int) and value < 1:
            yield f"federated.{key}", f"expected >= 1 (or leave it out), got {value}"
    if isinstance(cfg.lr, float) and not cfg.lr > 0:
        yield "federated.lr", f"expected > 0, got {cfg.lr}"
    if isinstance(cfg.server_lr, float) and not cfg.server_lr > 0:
        yield "federated.server_lr", f"expected > 0 (1.0: take the average), got {cfg.server_lr}"
    momentum = cfg.server_momentum
    if isinstance(momentum, float) and not 0.0 <= momentum < 1.0:
        yield (
            "federated.server_momentum",
            f"expected in [0, 1) (0: FedAvg; 0.9 is usual), got {momentum}",
        )
    if cfg.partition == "dirichlet" and not (isinstance(cfg.alpha, float) and cfg.alpha > 0):
        yield (
            "federated.alpha",
            f"a Dirichlet partition needs alpha > 0 (0.5: strong label skew); got {cfg.alpha}",
        )
    ratio = cfg.min_macs_ratio
    if ratio is not None and not (isinstance(ratio, (int, float)) and ratio >= 1):
        yield (
            "federated.min_macs_ratio",
            f"expected >= 1 (2: tiers at least 2x apart in MACs) or leave it out; got {ratio}",
        )
    if cfg.dp:
        missing = {"clipping_norm", "epsilon", "delta"} - set(cfg.dp)
        if missing or not all(v > 0 for v in cfg.dp.values()):
            yield "federated.dp", f"needs clipping_norm, epsilon and delta, each > 0; got {cfg.dp}"


def _tiers(config: Any) -> Iterator[tuple[str, str]]:
    """Each tier's device among the run's, its budget met by some arch (priced by an emulated
    device's cost model; other devices are checked by the stage with the run's latency model)."""
    import latency_models as lm
    import search_spaces
    from nas.app.federated_stage import device_label
    from nas.federated import TierBudget, choose_tiers

    tiers = config.federated.tiers
    if not tiers:
        yield "federated.tiers", "list at least one tier: {name, device, budget_ms, clients}"
        return
    names = [t.name for t in tiers]
    if len(set(names)) != len(names):
        yield "federated.tiers", f"tier names must differ; got {names}"
    devices = config.devices if isinstance(config.devices, list) else []
    known = ", ".join(f"{d.name}-{d.dtype}" for d in devices) or "none"
    priced: list[Any] = []  # the tiers checked here, for the MACs ratio across them
    for i, t in enumerate(tiers):
        key = f"federated.tiers[{i}]"
        if isinstance(t.clients, int) and t.clients < 1:
            yield f"{key}.clients", f"expected >= 1, got {t.clients}"
        if not t.budget_ms > 0:
            yield f"{key}.budget_ms", f"expected > 0, got {t.budget_ms}"
            continue
        if device_label(devices, t.device) is None:
            yield f"{key}.device", f"{t.device!r} is not a device of the run ({known})"
            continue
        dev = next(d for d in devices if t.device in (d.name, f"{d.name}-{d.dtype}"))
        try:
            device = lm.get_device(dev.name)
        except (KeyError, ValueError):
            continue  # the devices' own check reports it
        if getattr(device, "kind", "") != "emulated" or config.space.args:
            continue
        space = search_spaces.get_space(config.space.name)
        budget = TierBudget(t.name, lm.CostModelPredictor(device), t.budget_ms, 1)
        try:
            choose_tiers(space, [budget], candidates=config.federated.candidates, seed=config.seed)
        except ValueError as err:
            yield f"{key}.budget_ms", str(err)
            continue
        priced.append(budget)
    ratio = config.federated.min_macs_ratio
    if isinstance(ratio, (int, float)) and ratio >= 1 and len(priced) == len(tiers) > 1:
        space = search_spaces.get_space(config.space.name)
        try:
            choose_tiers(
                space,
                priced,
                candidates=config.federated.candidates,
                seed=config.seed,
                min_macs_ratio=float(ratio),
            )
        except ValueError as err:
            yield "federated.min_macs_ratio", str(err)


def _sources(config: Any) -> Iterator[tuple[str, str]]:
    """More clients than the embedded digits' training source images (a client holds whole
    sources); a folder's count is checked by the stage when it loads the data."""
    from nas.data import DATASET_NAMES, load_embedded_digits

    clients = sum(t.clients for t in config.federated.tiers if isinstance(t.clients, int))
    if config.data.name not in DATASET_NAMES or clients < 2:
        return
    args = {k: v for k, v in config.data.args.items() if not k.startswith("copies_")}
    try:
        data = load_embedded_digits(copies_train=1, copies_val=1, copies_test=1, **args)
    except (TypeError, ValueError):
        return  # the data section's own check reports it
    sources = len(set(data.groups("train").tolist()))
    if clients > sources:
        yield (
            "federated.tiers",
            f"{clients} clients but the training split has {sources} source images (each "
            "client needs at least one): fewer clients",
        )


def federated_problems(config: Any, data_given: bool) -> list[tuple[str, str]]:
    """(key, problem) of an enabled `federated` section."""
    cfg = config.federated
    found = [
        (f"federated.{key}", f"one of {', '.join(options)}; got {getattr(cfg, key)!r}")
        for key, options in _CHOICES.items()
        if getattr(cfg, key) not in options
    ]
    if cfg.init == "supernet" and cfg.kind == "width":
        found.append(
            ("federated.init", "'supernet' weights do not fit a width (HeteroFL) run: 'scratch'")
        )
    if config.space.args:
        found.append(
            ("federated.enabled", "a federated run builds the space by name: drop space.args")
        )
    found += _numbers(cfg)
    found += _tiers(config)
    if not data_given:
        found += _sources(config)
    return found
