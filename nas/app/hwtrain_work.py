"""The work of hardware-aware training that `nas hwtrain` and the run's `hwtrain` stage share:
the relaxed supernet and its logits, one cost term per device (its target checked against the
space's latency range there), then train, derive, score and plot (`train_and_derive`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.app.errors import InputError

__all__ = ["HwDevice", "HwWork", "cost_terms", "relaxed_supernet", "train_and_derive"]


@dataclass
class HwDevice:
    """One device in the loss: its name in the results, target (ms, or none), share of the
    loss, the margin its target keeps (aim = target / (1 + margin)), its latency model and the
    device itself."""

    name: str
    target: float | None
    weight: float = 1.0
    margin: float = 0.0
    model: Any = None
    device: Any = None
    latency_check: dict[str, Any] = field(default_factory=dict)  # held-out check of `model`


@dataclass
class HwWork:
    """What a run of hardware-aware training needs beside its training settings. `where`
    names the flags or config keys an error points at (`--target`, `hwtrain.targets`)."""

    relaxation: str = "gumbel"
    paths: int = 1
    freeze: Mapping[str, str] = field(default_factory=dict)
    terms: Sequence[str] = ()  # "params", "peak_memory"
    tolerance: float = 0.05
    mc: int = 1000
    top: int = 5
    seed: int = 0
    where: Mapping[str, str] = field(default_factory=dict)

    def key(self, what: str) -> str:
        return self.where.get(what, f"--{what.replace('_', '-')}")


def _frozen(space: Any, roles: dict[str, Any], given: Mapping[str, str], key: str) -> dict:
    """The input dims (a resolution): their largest value unless frozen to one, or `sample`."""
    from nas.hwtrain import SAMPLE

    dims = space.dimensions()
    unknown = [k for k in given if k not in dims or roles[k].kind != "input"]
    if unknown:
        inputs = [k for k, r in roles.items() if r.kind == "input"]
        raise InputError(f"{key}: {unknown} are not input dims of {space.name!r} ({inputs})")
    out: dict[str, Any] = {}
    for k, r in roles.items():
        if r.kind != "input":
            continue
        text = given.get(k)
        if text is None:
            out[k] = max(dims[k].values)
        elif str(text) == SAMPLE:
            out[k] = SAMPLE
        else:
            match = [v for v in dims[k].values if str(v) == str(text)]
            if not match:
                raise InputError(f"{key}: {k}={text} is not one of {list(dims[k].values)}")
            out[k] = match[0]
    return out


def relaxed_supernet(space: Any, work: HwWork, net: Any = None) -> tuple[Any, Any, Any]:
    """The supernet (`net`, or a fresh one of the space), its dims' roles and the logits; a
    space it cannot relax is bad input."""
    import torch

    from nas.hwtrain import ArchLogits, NotRelaxableError, probe_dims

    torch.manual_seed(work.seed)
    net = space.supernet() if net is None else net
    try:
        roles = probe_dims(net)
    except NotRelaxableError as err:
        raise InputError(f"{work.key('space')}: {err}") from None
    relaxed = [k for k, r in roles.items() if r.kind != "input"]
    frozen = _frozen(space, roles, work.freeze, work.key("freeze"))
    return net, roles, ArchLogits(space, relaxed, frozen)


def cost_terms(space: Any, logits: Any, devices: Sequence[HwDevice], work: HwWork) -> list[Any]:
    """One cost term per device (its aim checked against the space's range there, before any
    training), plus the extra terms (`params`, `peak_memory`)."""
    import latency_models as lm
    from nas.core.protocols import CannotPriceLayersError
    from nas.hwtrain import CostTerm, ExpectedCost, arch_cost_fn, price_fn

    terms = []
    for d in devices:
        try:
            pricer = lm.layer_pricer(d.model)
        except CannotPriceLayersError as err:
            raise InputError(f"{work.key('latency_model')}: {err}") from None
        cost = ExpectedCost(logits, price_fn(pricer, space))
        if d.target is not None:
            low, high = cost.value_range()
            if not low <= d.target / (1 + d.margin) <= high:
                kept = f" less its margin of {d.margin:.1%}" if d.margin else ""
                raise InputError(
                    f"{work.key('target')}: {d.target} ms{kept} on {d.name!r} is outside the "
                    f"space's latency range there, {low:.4g} to {high:.4g} ms"
                )
        terms.append(CostTerm(d.name, cost, d.weight, target=d.target, margin=d.margin))
    for what in work.terms:
        terms.append(CostTerm(what, ExpectedCost(logits, arch_cost_fn(space, what))))
    return terms


def _measured(d: HwDevice, space: Any, arch: Any) -> float:
    return float(d.device.measure_arch(space, arch, d.model.dtype).latency_ms)


def train_and_derive(
    space: Any,
    devices: Sequence[HwDevice],
    config: Any,
    relaxed: tuple[Any, Any, Any],
    data: Any,
    out: Path,
    work: HwWork,
    figure: Callable[[HwDevice, Any], float] | None = None,
    precision: Any = None,
) -> dict[str, Any]:
    """Train weights and logits (resuming `out`'s checkpoint), derive the arch, score it and
    plot the logits' trajectory; returns what `hwtrain.json` holds (written there too).
    `figure(device, arch)` is the device's own figure of the derived arch (measured on a real
    runtime, priced whole on an emulated device, the table's entry). `precision` (a
    `nas.supernet.Precision`; default fp32 on the CPU) is where and how the supernet trains and
    its derived archs are scored."""
    from nas.core.files import write_json_atomic
    from nas.hwtrain import Relaxation, derive, monte_carlo_check, train_hw
    from nas.supernet import evaluate_archs

    net, roles, logits = relaxed
    started = time.perf_counter()
    terms = cost_terms(space, logits, devices, work)
    uniform_mc = [monte_carlo_check(t.expected, n=work.mc, seed=work.seed) for t in terms]
    relax = Relaxation(net, logits, roles, work.relaxation, work.paths)
    result = train_hw(net, logits, relax, terms, data, config, out, precision=precision)
    train_s = time.perf_counter() - started
    report = derive(logits, terms, tolerance=work.tolerance, top=work.top)
    archs = [report["derived"]["arch"], report["argmax"]["arch"]]
    scoring = {"precision": precision} if precision is not None else {}
    acc = evaluate_archs(
        net, archs, data.split("train"), data.split("test"), seed=work.seed, **scoring
    )
    report["accuracy"] = {"derived": float(acc[0]), "argmax": float(acc[1])}
    if figure is None:
        report["device_ms"] = {d.name: _measured(d, space, archs[0]) for d in devices}
    else:
        report["device_ms"] = {d.name: figure(d, archs[0]) for d in devices}
    report["monte_carlo"] = {
        t.name: {"uniform": u, "final": monte_carlo_check(t.expected, n=work.mc, seed=work.seed)}
        for t, u in zip(terms, uniform_mc, strict=True)
    }
    report["latency_check"] = {d.name: d.latency_check for d in devices if d.latency_check}
    report["expectation_method"] = {t.name: t.expected.method for t in terms}
    report["history"] = result.history
    report["resumed_from_epoch"] = result.resumed_from_epoch
    report["train_s"] = train_s
    report["settings"] = {
        **config.to_json(),
        "space": space.name,
        "devices": [d.name for d in devices],
    }
    write_json_atomic(out / "hwtrain.json", report)
    if result.trajectory:
        from nas.viz import close, plot_logit_trajectory

        close(plot_logit_trajectory(result.trajectory, path=out / "trajectory.png"))
    return report
