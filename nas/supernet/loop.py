"""The supernet training loop: `train_supernet`, exactly resumable, single process or DDP.

`train_supernet` trains with one of the schedules of `nas.supernet.schedules` and writes
checkpoints into a run folder (safetensors for tensors, JSON for everything else: nothing is
unpickled); started again on the same folder, it continues exactly where the last checkpoint
left off. Under torchrun it trains with DistributedDataParallel: every rank samples the same
subnets (one seeded sampler per run) and takes its own slice of each global batch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from nas.core.elastic import Supernet
from nas.core.files import CheckpointError
from nas.core.space import SearchSpace
from nas.supernet.batches import _epoch_order, _Images, _index_lists, _micro_batches
from nas.supernet.checkpoint import (
    _as_supernet,
    _config_differences,
    _read_checkpoint,
    _save_checkpoint,
    _State,
    _unflatten_optimizer,
)
from nas.supernet.config import Phase, SupernetConfig, make_config
from nas.supernet.device import Precision, compile_model, out_of_memory, resolve_device
from nas.supernet.distributed import DistInfo, _check_same_archs, init_distributed
from nas.supernet.schedules import _SCHEDULE_CLASSES, ArchSampler, _Ctx, _Schedule

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "train_supernet"]


@dataclass
class TrainResult:
    """What `train_supernet` returns; `history` has one record per epoch (phase, epoch, step,
    loss summed over the step's subnets and averaged over the epoch's steps, lr, images/s)."""

    supernet: Supernet
    out_dir: Path
    step: int
    completed: bool
    history: list[dict[str, Any]]
    #: images per second over the steps this call ran (global batch, all ranks)
    images_per_s: float
    wall_s: float
    #: seconds of the steps this call ran, and the part of it spent waiting for images
    train_s: float = 0.0
    data_wait_s: float = 0.0
    #: images a worker could not decode and the run left out (on_bad="skip")
    skipped: int = 0
    #: the device the run trained on
    device: str = "cpu"
    #: per step this call ran: wall seconds, and CPU seconds of this process (all its threads,
    #: not its DataLoader workers), which other work on a shared machine changes far less
    step_s: list[float] = field(default_factory=list)
    step_cpu_s: list[float] = field(default_factory=list)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _make_optimizer(model: nn.Module, config: SupernetConfig, lr: float) -> torch.optim.Optimizer:
    groups = _param_groups(model, config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(
        groups, lr=lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0
    )


def _lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return factor


@dataclass
class _Run:
    """One call of `train_supernet`: what it was given and where it stands."""

    config: SupernetConfig
    schedule: _Schedule
    info: DistInfo
    device: torch.device
    out: Path
    images: _Images
    steps_per_epoch: int
    net: Supernet
    phases: list[Phase]
    samplers: list[ArchSampler]
    max_steps: int | None
    rng: np.random.Generator
    model: nn.Module  # the supernet, or its DDP wrapper
    state: _State = field(default_factory=_State)
    teacher: nn.Module | None = None
    #: (optimizer state, LR-scheduler state, phase) of the checkpoint resumed from
    loaded_opt: tuple[dict[str, Any], dict[str, Any], int] | None = None
    precision: Precision = field(default_factory=Precision)
    images_run: int = 0
    train_time: float = 0.0
    step_times: list[tuple[float, float]] = field(default_factory=list)  # (wall s, CPU s)
    data_wait: float = 0.0
    skipped: int = 0
    stopped: bool = False

    def count_skipped(self, n: int) -> None:
        self.skipped += n

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.config.accumulate * self.info.world_size


def train_supernet(
    space: SearchSpace,
    data: Any,
    out_dir: str | os.PathLike[str],
    config: SupernetConfig | Mapping[str, Any] | None = None,
    *,
    supernet: Supernet | None = None,
    resume: bool = True,
    max_steps: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train the supernet of `space` on `data`, checkpointing into `out_dir`; resume if there.

    `data` is an `ImageDataset` (its train split), a Dataset of (image, label) or an
    (images, labels) pair of tensors. `config` and `overrides` make the `SupernetConfig` (e.g.
    `schedule="spos", epochs=3, options={"n_random": 3}`). A checkpoint (weights, optimizer,
    LR schedule, sampler RNG, phase / epoch / batch position, history) is written every
    `checkpoint_every` steps, at each epoch's end and when `max_steps` (a global step count)
    stops the call early; calling again on the same folder continues from it exactly, and a
    folder holding a different config is refused. Under torchrun (WORLD_SIZE > 1) the process
    group is joined and the supernet wrapped in DistributedDataParallel.
    """
    cfg = make_config(config, **overrides)
    schedule = _SCHEDULE_CLASSES[cfg.schedule](cfg.schedule_options())
    info = init_distributed()
    device = resolve_device(cfg.device if device is None else device, info.local_rank)
    out = Path(out_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    images = _Images(data)
    steps_per_epoch = _steps_per_epoch(images.n, cfg, info)
    net = _prepare_supernet(space, supernet, cfg, device)
    phases = schedule.phases(cfg, net)
    samplers = [ArchSampler(net, p) for p in phases]  # validates every phase up front
    run = _Run(
        config=cfg,
        schedule=schedule,
        info=info,
        device=device,
        out=out,
        images=images,
        steps_per_epoch=steps_per_epoch,
        net=net,
        phases=phases,
        samplers=samplers,
        max_steps=max_steps,
        rng=np.random.default_rng(cfg.seed),
        model=net,
        precision=Precision(cfg.precision, device),
    )
    found = _read_checkpoint(out) if out.exists() else None
    if found is not None:
        _resume(run, space, found, resume)
    if info.world_size > 1:
        run.model = DistributedDataParallel(
            net,
            device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=True,  # a subnet leaves the other blocks' weights unused
        )
    run.model = compile_model(run.model, cfg.compile)
    return _train(run, progress)


def _steps_per_epoch(n: int, cfg: SupernetConfig, info: DistInfo) -> int:
    global_batch = cfg.batch_size * cfg.accumulate * info.world_size
    steps_per_epoch = n // global_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"the train set has {n} images, fewer than one global batch of {global_batch} "
            f"(batch_size {cfg.batch_size} x accumulate {cfg.accumulate} x world size "
            f"{info.world_size}); lower batch_size"
        )
    return steps_per_epoch


def _prepare_supernet(
    space: SearchSpace, supernet: Supernet | None, cfg: SupernetConfig, device: torch.device
) -> Supernet:
    """The given supernet, or a new one of `space` initialised from the config's seed."""
    if supernet is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            supernet = _as_supernet(space.supernet())
    net = _as_supernet(supernet)
    if net.space is not space and net.space.name != space.name:
        raise ValueError(f"the supernet is of space {net.space.name!r}, not {space.name!r}")
    net.to(device)
    if cfg.channels_last:
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return net


def _resume(
    run: _Run,
    space: SearchSpace,
    found: tuple[dict[str, Any], dict[str, Tensor]],
    resume: bool,
) -> None:
    """Load the checkpoint in the run folder into `run`, or refuse a folder that holds another
    run (or any run, with `resume=False`)."""
    meta, tensors = found
    out = run.out
    if not resume:
        raise CheckpointError(
            out,
            f"already holds a checkpoint (step {meta['state']['step']})",
            "pass resume=True to continue it, or choose a new folder",
        )
    diffs = _config_differences(meta["config"], run.config)
    if diffs or meta["space"] != space.name:
        raise CheckpointError(
            out,
            f"holds a run of space {meta['space']!r} with a different config: "
            + "; ".join(diffs or [f"space: stored {meta['space']!r}, given {space.name!r}"]),
            "use a new folder, or the stored config to resume",
        )
    run.net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    run.state = state = _State(**meta["state"])
    run.rng.bit_generator.state = meta["sampler_rng"]
    torch.set_rng_state(tensors["torch_rng"])
    if "cuda_rng" in tensors and run.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["cuda_rng"], run.device)
    run.precision.load_state_dict(meta.get("scaler", {}))
    if meta["has_teacher"]:
        teacher = space.build(run.samplers[0].largest).to(run.device)
        teacher.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("teacher.")})
        run.teacher = teacher.eval().requires_grad_(False)
    opt_tensors = {k: v for k, v in tensors.items() if k.startswith("optim.")}
    run.loaded_opt = (
        _unflatten_optimizer(meta["optimizer"], opt_tensors),
        meta["scheduler"],
        int(meta["optimizer_phase"]),
    )
    logger.info(
        "resuming %s at step %d (phase %d, epoch %d, batch %d)",
        out,
        state.step,
        state.phase,
        state.epoch,
        state.batch,
    )


def _train(run: _Run, progress: bool) -> TrainResult:
    """Run the phases from where `run.state` stands until done or `max_steps`."""
    state = run.state
    bar = tqdm(
        total=sum(p.epochs for p in run.phases) * run.steps_per_epoch,
        initial=state.step,
        disable=not (progress and run.info.is_main),
        unit="step",
        dynamic_ncols=True,
    )
    t_start = time.perf_counter()
    run.stopped = run.max_steps is not None and state.step >= run.max_steps
    try:
        while state.phase < len(run.phases) and not run.stopped:
            _run_phase(run, bar)
    finally:
        bar.close()
    if run.info.world_size > 1:
        dist.barrier()
    return TrainResult(
        supernet=run.net,
        out_dir=run.out,
        step=state.step,
        completed=state.done,
        history=list(state.history),
        images_per_s=run.images_run / run.train_time if run.train_time > 0 else 0.0,
        wall_s=time.perf_counter() - t_start,
        train_s=run.train_time,
        data_wait_s=run.data_wait,
        skipped=run.skipped,
        device=str(run.device),
        step_s=[wall for wall, _ in run.step_times],
        step_cpu_s=[cpu for _, cpu in run.step_times],
    )


def _run_phase(run: _Run, bar: Any) -> None:
    """The current phase's epochs, from where the run stands; a fresh optimizer and LR schedule
    (or the ones of the checkpoint resumed from, when it was saved in this phase)."""
    cfg, state = run.config, run.state
    pi = state.phase
    phase, sampler = run.phases[pi], run.samplers[pi]
    if run.schedule.wants_teacher(pi) and run.teacher is None:
        run.teacher = run.net.export(sampler.largest).eval().requires_grad_(False)
    opt = _make_optimizer(run.net, cfg, phase.lr)
    warmup = cfg.warmup_steps if pi == 0 else 0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(phase.epochs * run.steps_per_epoch, warmup, cfg.min_lr_ratio)
    )
    if run.loaded_opt is not None and run.loaded_opt[2] == pi:
        opt.load_state_dict(run.loaded_opt[0])
        sched.load_state_dict(run.loaded_opt[1])
    run.loaded_opt = None
    ctx = _Ctx(run.net, run.model, cfg, run.teacher, run.precision)
    bar.set_description(phase.name)
    while state.phase == pi and not run.stopped:
        _run_epoch(run, ctx, opt, sched, bar)


def _run_epoch(
    run: _Run,
    ctx: _Ctx,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LambdaLR,
    bar: Any,
) -> None:
    """The current epoch's remaining steps; checkpoints on schedule, at its end and when
    `max_steps` stops the run."""
    cfg, state = run.config, run.state
    pi = state.phase
    run.net.train()
    epoch = sum(p.epochs for p in run.phases[:pi]) + state.epoch
    order = _epoch_order(run.images.n, cfg.seed, epoch)
    steps = range(state.batch, run.steps_per_epoch)
    info = run.info
    lists = _index_lists(order, steps, cfg.batch_size, cfg.accumulate, info.rank, info.world_size)
    batches = _micro_batches(
        run.images, lists, epoch, cfg.num_workers, run.device.type == "cuda", run.count_skipped
    )
    with contextlib.closing(batches):  # stops the loader's workers when the call stops early
        _run_steps(run, ctx, opt, sched, bar, batches)


def _run_steps(
    run: _Run,
    ctx: _Ctx,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LambdaLR,
    bar: Any,
    batches: Iterator[tuple[Tensor, Tensor]],
) -> None:
    cfg, state = run.config, run.state
    pi = state.phase
    epoch_images, epoch_time = 0, 0.0
    while state.batch < run.steps_per_epoch:
        t0, c0 = time.perf_counter(), time.process_time()
        loss = _train_step(run, ctx, opt, batches)
        sched.step()
        dt = time.perf_counter() - t0
        run.step_times.append((dt, time.process_time() - c0))
        state.batch += 1
        state.step += 1
        state.images += run.global_batch
        state.epoch_loss_sum += loss
        epoch_images += run.global_batch
        epoch_time += dt
        run.images_run += run.global_batch
        run.train_time += dt
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{run.global_batch / dt:.0f}")
        stop = run.max_steps is not None and state.step >= run.max_steps
        end_of_epoch = state.batch == run.steps_per_epoch
        if end_of_epoch:
            _end_epoch(run, sched, epoch_images / max(epoch_time, 1e-9))
        if run.info.is_main and (
            end_of_epoch
            or stop
            or (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0)
        ):
            _save_checkpoint(
                run.out,
                run.net,
                run.teacher,
                opt,
                sched,
                run.rng,
                state,
                cfg,
                pi,
                run.precision.state_dict(),
            )
        if stop and not state.done:
            run.stopped = True
        if stop or end_of_epoch:
            break


def _train_step(
    run: _Run, ctx: _Ctx, opt: torch.optim.Optimizer, batches: Iterator[tuple[Tensor, Tensor]]
) -> float:
    """One optimizer step on this rank's micro-batches of the next global batch; the step's
    loss (summed over its subnets, averaged over its micro-batches)."""
    cfg, state = run.config, run.state
    pi = state.phase
    archs = run.schedule.plan(run.samplers[pi], run.rng, pi)
    if run.info.world_size > 1:
        _check_same_archs(archs, run.device)
    opt.zero_grad(set_to_none=True)
    loss = 0.0
    for m in range(cfg.accumulate):
        t0 = time.perf_counter()
        x, y = next(batches)  # this rank's m-th micro-batch
        run.data_wait += time.perf_counter() - t0
        x = x.to(run.device, non_blocking=True)  # B x C x H x W
        try:
            loss += (
                run.schedule.micro_step(
                    ctx,
                    archs,
                    x,
                    y.to(run.device, non_blocking=True),  # B
                    1.0 / cfg.accumulate,
                    last=m == cfg.accumulate - 1,
                )
                / cfg.accumulate
            )
        except RuntimeError as exc:
            if not out_of_memory(exc, run.device, len(x), 0):
                raise
    run.precision.step(opt, run.net.parameters(), cfg.grad_clip_norm)
    return loss


def _end_epoch(run: _Run, sched: torch.optim.lr_scheduler.LambdaLR, images_per_s: float) -> None:
    """Record the epoch in the history and move the position to the next epoch (or phase)."""
    state = run.state
    phase = run.phases[state.phase]
    record = {
        "phase": phase.name,
        "epoch": state.epoch,
        "step": state.step,
        "loss": state.epoch_loss_sum / run.steps_per_epoch,
        "lr": float(sched.get_last_lr()[0]),
        "images_per_s": images_per_s,
    }
    state.history.append(record)
    logger.info("phase %s epoch %d: %s", phase.name, state.epoch, record)
    state.batch = 0
    state.epoch_loss_sum = 0.0
    state.epoch += 1
    if state.epoch == phase.epochs:
        state.epoch = 0
        state.phase += 1
        state.done = state.phase == len(run.phases)
