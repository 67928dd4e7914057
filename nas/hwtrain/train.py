"""The hardware-aware training loop: weights warm up on uniformly sampled subnets, then weight
steps and architecture steps alternate on disjoint splits of the training data (DARTS, FBNet),
the architecture step's loss carrying the expected cost terms; seeded, and exactly resumable
from the checkpoint written at the end of every epoch (a kill loses at most the running epoch,
which is redone identically). The weight step trains the sampled path alone (`weight_rule="path"`)
or, by default, also the space's largest subnet with the path distilled from its logits
(`"sandwich"`, the supernet's sandwich rule with in-place distillation). It runs through `nas.supernet`'s device-and-precision helper: the
supernet's forward passes on the device under autocast, the expected costs in fp32."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nas.core.elastic import Supernet, resize_to
from nas.core.files import CheckpointError, write_bytes_atomic, write_json_atomic
from nas.hwtrain.logits import SAMPLE, ArchLogits
from nas.hwtrain.losses import CostTerm, LossConfig, hardware_loss
from nas.hwtrain.relax import Relaxation
from nas.supernet import Precision, fits_memory, soft_cross_entropy

__all__ = ["WEIGHT_RULES", "HWTrainConfig", "HWTrainResult", "train_hw"]

CHECKPOINT = "hwtrain_checkpoint.pt"
#: how a weight step trains: the sampled path alone, or the largest subnet too (its labels'
#: loss) with the path learning from the largest's detached logits; their gradients summed
WEIGHT_RULES = ("path", "sandwich")


@dataclass(frozen=True)
class HWTrainConfig:
    """Settings of one run; `tau` follows FBNet's schedule tau0 * tau_decay^epoch."""

    epochs: int = 10
    warmup_epochs: int = 2
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 4e-5
    arch_lr: float = 0.05
    arch_weight_decay: float = 0.0
    relaxation: str = "gumbel"
    paths: int = 1
    tau0: float = 5.0
    tau_decay: float = 0.956
    arch_fraction: float = 0.2  # FBNet trains the architecture on 20 % of the training data
    max_steps_per_epoch: int | None = None
    record_every: int = 5
    seed: int = 0
    loss: LossConfig = field(default_factory=LossConfig)
    weight_rule: str = "sandwich"

    def __post_init__(self) -> None:
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ValueError(f"epochs must be an int >= 1, got {self.epochs!r}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"warmup_epochs must be in [0, epochs={self.epochs}), got {self.warmup_epochs!r}"
            )
        if not 0.0 < self.arch_fraction < 1.0:
            raise ValueError(f"arch_fraction must be in (0, 1), got {self.arch_fraction!r}")
        if not (self.tau0 > 0 and 0 < self.tau_decay <= 1):
            raise ValueError("tau0 must be > 0 and tau_decay in (0, 1]")
        if self.weight_rule not in WEIGHT_RULES:
            raise ValueError(f"weight_rule must be one of {WEIGHT_RULES}, got {self.weight_rule!r}")

    def tau(self, epoch: int) -> float:
        return self.tau0 * self.tau_decay ** max(epoch - self.warmup_epochs, 0)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class HWTrainResult:
    logits: ArchLogits
    supernet: Supernet
    trajectory: list[dict[str, Any]]
    history: list[dict[str, Any]]
    resumed_from_epoch: int = 0


@dataclass
class _Run:
    net: Supernet
    logits: ArchLogits
    relax: Relaxation
    terms: list[CostTerm]
    config: HWTrainConfig
    images: Tensor
    labels: Tensor
    weight_idx: Tensor
    arch_idx: Tensor
    opt_w: torch.optim.Optimizer
    opt_a: torch.optim.Optimizer
    prec: Precision  # the weight step's (with fp16, each optimizer has its own loss scaler)
    prec_a: Precision  # the architecture step's
    largest: dict[str, Any] | None  # the sandwich rule's largest subnet (None: "path")
    trajectory: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0


def _tensors(data: Any) -> tuple[Tensor, Tensor]:
    train = getattr(data, "train", data)
    tensors = getattr(train, "tensors", train)
    if not (isinstance(tensors, tuple | list) and len(tensors) >= 2):
        raise TypeError(
            "data must be an ImageDataset, a TensorDataset or an (images, labels) tuple; got "
            f"{type(data).__name__}"
        )
    return tensors[0], tensors[1]


def _splits(n: int, config: HWTrainConfig) -> tuple[Tensor, Tensor]:
    """Disjoint weight / architecture indices of the training split (fixed by the seed)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))
    n_arch = max(1, round(n * config.arch_fraction))
    if n - n_arch < 1:
        raise ValueError(f"{n} training images cannot be split for weights and architecture")
    return order[n_arch:], order[:n_arch]


def train_hw(
    net: Supernet,
    logits: ArchLogits,
    relax: Relaxation,
    terms: list[CostTerm],
    data: Any,
    config: HWTrainConfig,
    out_dir: str | os.PathLike[str] | None = None,
    on_epoch: Callable[[int], None] | None = None,
    precision: Precision | None = None,
) -> HWTrainResult:
    """Train `net`'s weights and `logits` together; resume from `out_dir`'s checkpoint when it
    holds one of the same settings. `on_epoch(epoch)` is called after each saved epoch.

    `precision` (default: fp32 where `net` is) is the device and autocast of the supernet's
    passes; `net` moves there. The logits, the relaxation's draws and the expected costs stay
    on the CPU: a few dozen numbers, drawn from the seeded CPU generator, so a run samples the
    same architectures on any device (their 0-dim gates join the device's tensors as scalars).
    """
    prec = precision or Precision("fp32", next(net.parameters()).device)
    net.to(prec.device)
    images, labels = _tensors(data)
    weight_idx, arch_idx = _splits(len(images), config)
    torch.manual_seed(config.seed)
    with torch.no_grad():
        for t in terms:
            if t.reference <= 0:
                t.reference = float(t.expected())
    run = _Run(
        net=net,
        logits=logits,
        relax=relax,
        terms=terms,
        config=config,
        images=images,
        labels=labels,
        weight_idx=weight_idx,
        arch_idx=arch_idx,
        opt_w=torch.optim.SGD(
            net.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        ),
        opt_a=torch.optim.Adam(
            logits.parameters(), lr=config.arch_lr, weight_decay=config.arch_weight_decay
        ),
        prec=prec,
        prec_a=Precision(prec.name, prec.device),
        largest=_largest(net, logits) if config.weight_rule == "sandwich" else None,
    )
    out = Path(out_dir) if out_dir is not None else None
    start = _resume(run, out) if out is not None else 0
    if start == 0:
        _record(run, 0, config.tau(0))  # the starting distribution (uniform logits)
    with relax.attached():
        for epoch in range(start, config.epochs):
            _epoch(run, epoch)
            if out is not None:
                _save(run, out, epoch + 1)
            if on_epoch is not None:
                on_epoch(epoch + 1)
    if out is not None:
        write_json_atomic(out / "trajectory.json", {"rows": run.trajectory})
    return HWTrainResult(logits, net, run.trajectory, run.history, resumed_from_epoch=start)


def _largest(net: Supernet, logits: ArchLogits) -> dict[str, Any]:
    """The supernet's largest subnet (the one its own sandwich rule trains every step; a
    mixed-op space's is the one its supernet names, e.g. nb201's all-conv3x3 cell), with the
    dims frozen at one value held there: the largest subnet the run can derive."""
    try:
        arch = dict(net.largest_arch())
    except NotImplementedError as e:
        raise ValueError(
            f"weight_rule='sandwich' needs the space's largest subnet ({e}); use weight_rule='path'"
        ) from e
    for k, policy in logits.frozen.items():
        value = logits.choices[k].coerce(policy) if policy != SAMPLE else None
        if value is not None:  # (ArchLogits checked every fixed value)
            arch[k] = value
    return arch


def _batch(run: _Run, idx: Tensor, arch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    x = run.prec.to(run.images[idx])
    size = run.net.space.input_shape(arch)[1:]
    return resize_to(x, size), run.prec.to(run.labels[idx])


def _epoch(run: _Run, epoch: int) -> None:
    cfg = run.config
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    w_order = run.weight_idx[torch.randperm(len(run.weight_idx), generator=gen)]
    a_order = run.arch_idx[torch.randperm(len(run.arch_idx), generator=gen)]
    steps = max(1, len(w_order) // cfg.batch_size)
    if cfg.max_steps_per_epoch is not None:
        steps = min(steps, cfg.max_steps_per_epoch)
    warm = epoch < cfg.warmup_epochs
    tau = cfg.tau(epoch)
    run.net.train()
    totals = {"ce": 0.0, "arch_loss": 0.0}
    if run.largest is not None:
        totals["ce_largest"] = 0.0
    for s in range(steps):
        idx = w_order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
        run.opt_w.zero_grad(set_to_none=True)
        soft = _largest_pass(run, idx, totals) if run.largest is not None else None
        arch = run.relax.uniform(gen) if warm else run.relax.step(tau, gen)
        x, y = _batch(run, idx, arch)
        with fits_memory(run.prec.device, cfg.batch_size), run.prec.autocast():
            out = run.net(x).float()
            ce = F.cross_entropy(out, y)
            loss = ce if soft is None else soft_cross_entropy(out, soft)
        run.prec.backward(loss)
        run.prec.step(run.opt_w)
        totals["ce"] += float(ce.detach())
        if not warm:
            totals["arch_loss"] += _arch_step(run, a_order, s, tau, gen)
        run.step += 1
    run.relax.idle()
    row = {"epoch": epoch + 1, "tau": tau, "warmup": warm, "steps": steps}
    row.update({k: v / steps for k, v in totals.items()})
    with torch.no_grad():
        row.update({f"expected.{t.name}": float(t.expected()) for t in run.terms})
    run.history.append(row)
    _record(run, epoch + 1, tau)


def _largest_pass(run: _Run, idx: Tensor, totals: dict[str, float]) -> Tensor:
    """The sandwich rule's first pass: the largest subnet on the labels, with the relaxation's
    hooks idle (its gates get no gradient); its gradients stay for the step's one update, its
    detached logits teach the sampled path (in-place distillation, as `nas.supernet`'s)."""
    assert run.largest is not None
    run.relax.idle()
    run.net.set_arch(run.largest)
    x, y = _batch(run, idx, run.largest)
    with fits_memory(run.prec.device, run.config.batch_size), run.prec.autocast():
        out = run.net(x).float()
        ce = F.cross_entropy(out, y)
    run.prec.backward(ce)
    totals["ce_largest"] += float(ce.detach())
    return out.detach()


def _arch_step(run: _Run, order: Tensor, s: int, tau: float, gen: torch.Generator) -> float:
    cfg = run.config
    start = (s * cfg.batch_size) % max(len(order) - cfg.batch_size + 1, 1)
    idx = order[start : start + cfg.batch_size]
    arch = run.relax.step(tau, gen)
    x, y = _batch(run, idx, arch)
    run.opt_a.zero_grad(set_to_none=True)
    with fits_memory(run.prec.device, cfg.batch_size), run.prec_a.autocast():
        ce = F.cross_entropy(run.net(x), y)
        with run.prec_a.full():  # the expected costs are sums over many archs: fp32 (float64)
            loss, _ = hardware_loss(ce, run.terms, cfg.loss)
    run.prec_a.backward(loss)
    run.prec_a.step(run.opt_a)
    run.opt_w.zero_grad(set_to_none=True)  # the weights learn on their own split only
    if (s + 1) % cfg.record_every == 0:
        _record(run, None, tau)
    return float(loss.detach())


def _record(run: _Run, epoch: int | None, tau: float) -> None:
    with torch.no_grad():
        expected = {t.name: float(t.expected()) for t in run.terms}
    run.trajectory.append(
        {"step": run.step, "epoch": epoch, "tau": tau, "probs": run.logits.table(), **expected}
    )


def _save(run: _Run, out: Path, epochs_done: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {
        "config": json.dumps(run.config.to_json(), sort_keys=True),
        "epochs_done": epochs_done,
        "step": run.step,
        "net": run.net.state_dict(),
        "alpha": run.logits.alpha.detach().clone(),
        "opt_w": run.opt_w.state_dict(),
        "opt_a": run.opt_a.state_dict(),
        "references": [t.reference for t in run.terms],
        "precision": {
            "name": run.prec.name,
            "w": run.prec.state_dict(),
            "a": run.prec_a.state_dict(),
        },
        "trajectory": json.dumps(run.trajectory),
        "history": json.dumps(run.history),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes_atomic(out / CHECKPOINT, buf.getvalue())


def _resume(run: _Run, out: Path) -> int:
    path = out / CHECKPOINT
    if not path.exists():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # any device's
    except Exception as e:  # a torn or foreign file: say which and what to do
        raise CheckpointError(path, f"cannot be read ({e})", "delete it to start over") from e
    saved_config = json.loads(state["config"])
    saved_config.setdefault("weight_rule", "path")  # checkpoints of before the field: "path"
    if saved_config.get("weight_rule") != run.config.weight_rule:
        raise CheckpointError(
            path,
            f"was written with weight_rule={saved_config['weight_rule']!r}, "
            f"not {run.config.weight_rule!r}",
            f"pass weight_rule={saved_config['weight_rule']!r} (--weight-rule) to resume it, "
            "or use another --out folder",
        )
    if json.dumps(saved_config, sort_keys=True) != json.dumps(run.config.to_json(), sort_keys=True):
        raise CheckpointError(
            path,
            "was written by a run with other settings",
            "use the same settings, or another --out folder",
        )
    run.net.load_state_dict(state["net"])
    with torch.no_grad():
        run.logits.alpha.copy_(state["alpha"])
    run.opt_w.load_state_dict(state["opt_w"])
    run.opt_a.load_state_dict(state["opt_a"])
    saved = state.get("precision", {})  # absent in checkpoints of before the helper
    run.prec.load_state_dict(saved.get("w", {}))
    run.prec_a.load_state_dict(saved.get("a", {}))
    for t, ref in zip(run.terms, state["references"], strict=True):
        t.reference = float(ref)
    run.step = int(state["step"])
    run.trajectory = json.loads(state["trajectory"])
    run.history = json.loads(state["history"])
    return int(state["epochs_done"])
