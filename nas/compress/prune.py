"""Structured channel pruning with real speed-up: channels are removed, not masked.

Dependency-aware through Torch-Pruning's DepGraph (Fang et al., CVPR 2023): removing an output
channel of a conv also removes the matching batch-norm channel, the input channel of every
consumer, the depthwise channel in between and, through residual additions, the same channel
in every coupled layer. Which channels go is decided here, by a greedy, cost-aware search in
the spirit of NetAdapt (Yang et al., ECCV 2018): each pick removes a slice of one coupled group,
the group whose removal saves the most *cost* per share of its *importance* lost (L2 magnitude of
the group's weights, normalised per group). The cost is a callable ``module -> float``: MACs by
default, or a latency model's prediction for a device, so that the pruning spends its budget
where that device actually spends time. Pruning runs in rounds, each followed by fine-tuning
with knowledge distillation from the unpruned model.

MACs are not latency: :func:`prune` reports both, and the compression chain measures the
pruned model on real runtimes, so a pruned model that is not faster shows as such.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from nas.backends import predict_logits
from nas.compress.distill import (
    FinetuneConfig,
    KDConfig,
    distill_model,
    evaluate_accuracy,
)
from nas.core.layers import cost_from_specs, trace_layer_specs
from nas.supernet import Precision

__all__ = [
    "CostFn",
    "PruneConfig",
    "PruneResult",
    "macs_params",
    "prune_channels",
    "prune_model",
]

log = logging.getLogger(__name__)

CostFn = Callable[[nn.Module], float]
"""What pruning minimises: MACs, or predicted latency (ms) of a module on a device."""


def _require_torch_pruning() -> Any:
    try:
        import torch_pruning
    except ImportError as err:
        raise ImportError(
            "structured pruning needs torch-pruning; install it without its dependencies (they "
            "would pull a CUDA build of torch): pip install --no-deps torch-pruning==1.6.1"
        ) from err
    return torch_pruning


def macs_params(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
    """MACs (batch 1) and parameter count of ``model`` at ``input_shape`` = (C, H, W)."""
    cost = cost_from_specs(trace_layer_specs(model, tuple(int(s) for s in input_shape)))
    return int(cost.macs), int(sum(p.numel() for p in model.parameters()))


@dataclass(frozen=True)
class PruneConfig:
    """How much to prune and how.

    Give ``macs_reduction`` (remove this share of the MACs, e.g. 0.4) or ``latency_budget_ms``
    (prune until the latency model predicts at most this; needs a latency callable). The target
    is reached in ``rounds`` equal steps of cost, each followed by ``finetune`` with KD from the
    unpruned model, then ``final_finetune``. Each greedy pick removes ``step_fraction`` of a
    group's current channels (at least ``round_to``); no group loses more than
    ``max_group_pruning`` of its original channels, and channel counts stay multiples of
    ``round_to`` where the original was.
    """

    macs_reduction: float | None = 0.4
    latency_budget_ms: float | None = None
    rounds: int = 2
    step_fraction: float = 0.125
    max_group_pruning: float = 0.6
    round_to: int = 4
    importance_p: int = 2
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(epochs=0.5, lr=0.01))
    final_finetune: FinetuneConfig = field(
        default_factory=lambda: FinetuneConfig(epochs=1.0, lr=0.01)
    )
    kd: KDConfig = field(default_factory=KDConfig)

    def __post_init__(self) -> None:
        problems = []
        if (self.macs_reduction is None) == (self.latency_budget_ms is None):
            problems.append(
                "give exactly one of macs_reduction and latency_budget_ms; got "
                f"macs_reduction={self.macs_reduction!r}, latency_budget_ms="
                f"{self.latency_budget_ms!r}"
            )
        if self.macs_reduction is not None and not 0 < self.macs_reduction < 1:
            problems.append(f"macs_reduction must be in (0, 1), got {self.macs_reduction!r}")
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            problems.append(f"latency_budget_ms must be > 0, got {self.latency_budget_ms!r}")
        if not (isinstance(self.rounds, int) and self.rounds >= 1):
            problems.append(f"rounds must be an int >= 1, got {self.rounds!r}")
        if not 0 < self.step_fraction <= 0.5:
            problems.append(f"step_fraction must be in (0, 0.5], got {self.step_fraction!r}")
        if not 0 < self.max_group_pruning < 1:
            problems.append(f"max_group_pruning must be in (0, 1), got {self.max_group_pruning!r}")
        if not (isinstance(self.round_to, int) and self.round_to >= 1):
            problems.append(f"round_to must be an int >= 1, got {self.round_to!r}")
        if problems:
            raise ValueError("invalid PruneConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PruneResult:
    """The pruned model (pruned in place) and what pruning did to it."""

    model: nn.Module
    objective: str
    base_cost: float
    target_cost: float
    cost: float
    target_met: bool
    base_macs: int
    macs: int
    base_params: int
    params: int
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def macs_ratio(self) -> float:
        return self.macs / self.base_macs if self.base_macs else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "model"}
        d["macs_ratio"] = self.macs_ratio
        return d


@dataclass
class _Candidate:
    name: str
    out_channels: bool
    n_channels: int
    original: int
    order: list[int]  # channel indices, least important first
    normalised: list[float]  # importance of the channels in `order`, mean 1 over the group


def _root_and_name(group: Any, names: dict[nn.Module, str], dg: Any) -> tuple[str, bool]:
    dep = group[0].dep
    return names[dep.target.module], bool(dg.is_out_channel_pruning_fn(dep.handler))


def _groups(tp: Any, model: nn.Module, example: torch.Tensor, ignored: list[nn.Module]) -> Any:
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    return dg, list(dg.get_all_groups(ignored_layers=ignored))


def _output_layers(model: nn.Module) -> list[nn.Module]:
    """Layers whose outputs are the model's outputs (the classifier): never pruned."""
    last: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            last.append(m)
    return last[-1:]


def prune_channels(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    cost_fn: CostFn,
    target_cost: float,
    rounds: int = 4,
    step_fraction: float = 0.125,
    max_group_pruning: float = 0.6,
    round_to: int = 4,
    importance_p: int = 2,
    ignored_layers: Sequence[nn.Module] | None = None,
    after_round: Callable[[nn.Module, int], dict[str, Any] | None] | None = None,
) -> tuple[nn.Module, list[dict[str, Any]], bool]:
    """Remove channels from ``model`` (in place) until ``cost_fn(model) <= target_cost``.

    The cost is brought down in ``rounds`` equal steps; ``after_round(model, round)`` runs after
    each (fine-tuning goes there) and may return figures for the log. Returns the model, one
    record per round, and whether the target was met (it is not when every group has reached
    ``max_group_pruning`` first). Deterministic: no randomness is involved.
    """
    tp = _require_torch_pruning()
    shape = tuple(int(s) for s in input_shape)
    ignored = list(ignored_layers) if ignored_layers is not None else _output_layers(model)
    search = _Search(
        tp,
        example=torch.zeros((1, *shape)),  # 1 x C x H x W; values do not matter for tracing
        ignored_names={n for n, m in model.named_modules() if any(m is i for i in ignored)},
        importance=tp.importance.GroupMagnitudeImportance(p=importance_p, normalizer="mean"),
        cost_fn=cost_fn,
        step_fraction=step_fraction,
        max_group_pruning=max_group_pruning,
        round_to=round_to,
    )
    was_training = model.training
    model.eval()
    base_cost = float(cost_fn(model))
    records: list[dict[str, Any]] = []
    for r in range(1, rounds + 1):
        round_target = base_cost - (base_cost - target_cost) * r / rounds
        cost, picks, exhausted = search.prune_to(model, round_target)
        record: dict[str, Any] = {
            "round": r,
            "round_target": round_target,
            "cost": cost,
            "picks": picks,
        }
        if after_round is not None:
            extra = after_round(model, r)
            if extra:
                record.update(extra)
        log.info(
            "pruning round %d/%d: cost %.4g (target %.4g), %d picks",
            r,
            rounds,
            cost,
            round_target,
            len(picks),
        )
        records.append(record)
        if exhausted:
            break
    met = float(cost_fn(model)) <= target_cost * (1 + 1e-9)
    model.train(was_training)
    return model, records, met


@dataclass
class _Search:
    """The greedy search of :func:`prune_channels`: its fixed parts, and each group's channel
    count when first seen (``originals``: ``max_group_pruning`` is a share of it)."""

    tp: Any
    example: torch.Tensor
    ignored_names: set[str]
    importance: Any
    cost_fn: CostFn
    step_fraction: float
    max_group_pruning: float
    round_to: int
    originals: dict[str, int] = field(default_factory=dict)

    def prune_to(self, model: nn.Module, target: float) -> tuple[float, list[str], bool]:
        """Prune ``model`` pick by pick until its cost is at most ``target``; returns the cost,
        the picks, and whether the search ran out of picks first."""
        picks: list[str] = []
        cost = float(self.cost_fn(model))
        while cost > target:
            best = self.best_pick(model, cost)
            if best is None:
                log.warning(
                    "pruning stopped at cost %.4g above the target %.4g: every group is at its "
                    "limit (max_group_pruning=%.2f) or saves nothing",
                    cost,
                    target,
                    self.max_group_pruning,
                )
                return cost, picks, True
            chosen, k = best
            # The same pruning again on the model itself: deterministic, so equal to the trial.
            _prune_group(self.tp, model, self.example, chosen, chosen.order[:k])
            picks.append(f"{chosen.name}:-{k}")
            cost = float(self.cost_fn(model))
        return cost, picks, False

    def candidates(self, model: nn.Module) -> list[_Candidate]:
        """Every coupled group of ``model`` that may lose channels, least important first."""
        names = {m: n for n, m in model.named_modules()}
        ignored = [m for n, m in model.named_modules() if n in self.ignored_names]
        dg, groups = _groups(self.tp, model, self.example, ignored)
        candidates = []
        for g in groups:
            name, out = _root_and_name(g, names, dg)
            n_ch = len(g[0].idxs)
            self.originals.setdefault(name, n_ch)
            with torch.no_grad():
                imp = self.importance(g)
            if imp is None:
                continue
            imp = imp.detach().float()
            order = torch.argsort(imp).tolist()
            candidates.append(
                _Candidate(name, out, n_ch, self.originals[name], order, imp[order].tolist())
            )
        return candidates

    def best_pick(self, model: nn.Module, cost: float) -> tuple[_Candidate, int] | None:
        """The group, and how many of its channels, whose removal saves the most cost per share
        of importance lost (each tried on a copy of ``model``); None when none saves cost."""
        best: tuple[float, _Candidate, int] | None = None
        for c in self.candidates(model):
            k = _channels_to_remove(c, self.step_fraction, self.max_group_pruning, self.round_to)
            if k == 0:
                continue
            trial = copy.deepcopy(model)
            _prune_group(self.tp, trial, self.example, c, c.order[:k])
            saved = cost - float(self.cost_fn(trial))
            if saved <= 0:
                continue
            # Importance lost as a share of the group's total: narrow groups (a residual
            # stream shared by many layers) lose a larger share per channel, so they are not
            # stripped first merely because each of their channels feeds many MACs.
            lost = sum(c.normalised[:k]) / max(sum(c.normalised), 1e-12)
            score = saved / (lost + 1e-9)
            if best is None or score > best[0]:
                best = (score, c, k)
        return None if best is None else (best[1], best[2])


def _channels_to_remove(c: _Candidate, step_fraction: float, max_pruning: float, q: int) -> int:
    floor = max(math.ceil(c.original * (1 - max_pruning)), 1)
    if c.original % q == 0:
        floor = max(math.ceil(floor / q) * q, q)
        step = max(round(c.n_channels * step_fraction / q) * q, q)
    else:
        step = max(round(c.n_channels * step_fraction), 1)
    return max(min(step, c.n_channels - floor), 0)


def _prune_group(
    tp: Any, model: nn.Module, example: torch.Tensor, c: _Candidate, idxs: list[int]
) -> None:
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    module = dict(model.named_modules())[c.name]
    pruner = dg.get_pruner_of_module(module)
    fn = pruner.prune_out_channels if c.out_channels else pruner.prune_in_channels
    group = dg.get_pruning_group(module, fn, idxs=sorted(idxs))
    if not dg.check_pruning_group(group):
        raise RuntimeError(f"pruning {len(idxs)} channels of {c.name!r} would empty a layer")
    group.prune()


def _objective(
    config: PruneConfig, latency_fn: CostFn | None, shape: tuple[int, ...], base_macs: int
) -> tuple[CostFn, str, float]:
    """What pruning minimises, its name and its target: predicted latency down to the budget,
    or MACs down by ``macs_reduction``."""
    if config.latency_budget_ms is not None:
        if latency_fn is None:
            raise ValueError(
                "pruning to a latency budget needs latency_fn: a callable module -> predicted "
                "latency in ms (for example a latency model's prediction for one device); "
                "give one, or prune by macs_reduction instead"
            )
        return latency_fn, "latency_ms", float(config.latency_budget_ms)
    assert config.macs_reduction is not None

    def macs(m: nn.Module) -> float:
        return float(macs_params(m, shape)[0])

    return macs, "macs", base_macs * (1.0 - config.macs_reduction)


def prune_model(
    model: nn.Module,
    train: torch.utils.data.TensorDataset,
    config: PruneConfig,
    *,
    input_shape: Sequence[int],
    latency_fn: CostFn | None = None,
    val: torch.utils.data.TensorDataset | None = None,
    seed: int = 0,
    precision: Precision | None = None,
) -> PruneResult:
    """Prune ``model`` in place to ``config``'s target and fine-tune it with KD from its
    unpruned self. ``latency_fn`` (module -> predicted ms) is needed for a latency budget;
    ``precision`` is the fine-tuning's device and autocast (`distill.train_model`)."""
    shape = tuple(int(s) for s in input_shape)
    base_macs, base_params = macs_params(model, shape)
    cost_fn, objective, target = _objective(config, latency_fn, shape, base_macs)
    base_cost = float(cost_fn(model))
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    # One teacher for every round and the final fine-tuning: its logits are computed once.
    t_logits = predict_logits(teacher, train.tensors[0]) if config.kd.alpha > 0 else None

    def after_round(m: nn.Module, r: int) -> dict[str, Any]:
        distill_model(
            m,
            teacher,
            train,
            config.finetune,
            config.kd,
            seed=seed + r,
            teacher_logits=t_logits,
            precision=precision,
        )
        out: dict[str, Any] = dict(zip(("macs", "params"), macs_params(m, shape), strict=True))
        if val is not None:
            out["val_accuracy"] = evaluate_accuracy(m, val)
        return out

    model, records, met = prune_channels(
        model,
        shape,
        cost_fn=cost_fn,
        target_cost=target,
        rounds=config.rounds,
        step_fraction=config.step_fraction,
        max_group_pruning=config.max_group_pruning,
        round_to=config.round_to,
        importance_p=config.importance_p,
        after_round=after_round,
    )
    distill_model(
        model,
        teacher,
        train,
        config.final_finetune,
        config.kd,
        seed=seed + 1000,
        teacher_logits=t_logits,
        precision=precision,
    )
    macs, params = macs_params(model, shape)
    return PruneResult(
        model=model.eval(),
        objective=objective,
        base_cost=base_cost,
        target_cost=target,
        cost=float(cost_fn(model)),
        target_met=met,
        base_macs=base_macs,
        macs=macs,
        base_params=base_params,
        params=params,
        rounds=records,
    )
