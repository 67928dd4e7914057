"""`nas hwtrain`: hardware-aware training of a space's supernet with the devices in the loss
(`nas.hwtrain`), into a folder: checked up front (space, data, devices, latency model, targets
inside the space's latency range), resumable, and reported in `hwtrain.json`."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nas.app.errors import InputError, stage_work
from nas.app.hwtrain_work import HwDevice, HwWork, relaxed_supernet, train_and_derive
from nas.app.lock import folder_lock
from nas.app.validate import Problems, check_data, check_device, check_out_folder, check_space

__all__ = ["add_hwtrain_parser", "hwtrain_cmd", "run_hwtrain"]

KINDS = ("lut", "lut+correction", "costmodel", "table")


def _parse_targets(
    p: Problems, texts: list[str], devices: list[str], key: str = "--target"
) -> dict[str, float]:
    """DEVICE=VALUE pairs (a bare VALUE where there is one device), each VALUE > 0."""
    out: dict[str, float] = {}
    for text in texts:
        name, sep, value = text.rpartition("=")
        if not sep and len(devices) == 1:
            name, value = devices[0], text
        try:
            ms = float(value)
        except ValueError:
            ms = -1.0
        if name not in devices or not ms > 0:
            p.add(key, f"{text!r} is not DEVICE=VALUE (> 0) with DEVICE one of --device {devices}")
            continue
        out[name] = ms
    return out


def _check(args: argparse.Namespace) -> tuple[Any, list[HwDevice]]:
    from nas.hwtrain import LOSS_FORMS, RELAXATIONS, WEIGHT_RULES

    p = Problems()
    space = check_space(p, "--space", args.space)
    check_data(p, "--data", args.data)
    if not args.device:
        p.add("--device", "name at least one device (repeat --device for several)")
    for i, name in enumerate(args.device):
        check_device(p, f"--device[{i}]", name, kinds=("real", "emulated", "table"))
    if args.latency_model not in KINDS:
        p.add("--latency-model", f"{args.latency_model!r} is not one of {', '.join(KINDS)}")
    targets = _parse_targets(p, args.target, list(args.device))
    weights = _parse_targets(p, args.weight, list(args.device), "--weight")
    if args.loss == "target" and args.device and not targets:
        p.add("--target", "the target loss needs --target DEVICE=MS for at least one device")
    if args.loss not in LOSS_FORMS:
        p.add("--loss", f"{args.loss!r} is not one of {', '.join(LOSS_FORMS)}")
    if args.relaxation not in RELAXATIONS:
        p.add("--relaxation", f"{args.relaxation!r} is not one of {', '.join(RELAXATIONS)}")
    if args.weight_rule not in WEIGHT_RULES:
        p.add("--weight-rule", f"{args.weight_rule!r} is not one of {', '.join(WEIGHT_RULES)}")
    if args.paths not in (1, 2) or (args.paths == 2 and args.relaxation != "proxyless"):
        p.add("--paths", "1, or 2 with --relaxation proxyless (Gumbel runs every path)")
    if args.calibration_archs is not None and args.calibration_archs < 0:
        p.add(
            "--calibration-archs",
            f"must be >= 0 (0: the plain model, unchecked), got {args.calibration_archs}",
        )
    if not args.margin >= 0:
        p.add("--margin", f"must be >= 0 (the target's share kept free), got {args.margin}")
    for text in args.freeze:
        if "=" not in text:
            p.add("--freeze", f"{text!r} is not DIM=VALUE or DIM=sample")
    check_out_folder(p, "--out", args.out)
    p.raise_if_any("nas hwtrain")
    devices = [HwDevice(n, targets.get(n), weights.get(n, 1.0), args.margin) for n in args.device]
    return space, devices


def _latency_models(space: Any, devices: list[HwDevice], args: argparse.Namespace) -> None:
    import latency_models as lm

    for i, d in enumerate(devices):
        kind = getattr(lm.DEVICES.factory(d.name), "kind", "")
        if kind == "table":
            if args.table is None:
                raise InputError(f"--table: device {d.name!r} reads a table (e.g. nb201.csv)")
            d.device = lm.get_device(d.name, table=args.table, space=space)
            d.model = lm.TableLatency(d.device)
            continue
        if args.latency_model == "table":
            raise InputError(f"--latency-model table: {d.name!r} is a {kind} device, not a table")
        d.device = lm.get_device(d.name)
        d.model, d.latency_check = _calibrated_model(space, d.device, args, seed=i)


def _calibrated_model(
    space: Any, device: Any, args: argparse.Namespace, seed: int
) -> tuple[Any, dict[str, Any]]:
    """The device's latency model as a run's latency stage makes it: its table (resumed from
    --out), checked on `--calibration-archs` whole networks priced or measured on the device and
    as many held out, corrected where that pays (a LUT sum timed layer by layer is not the
    network's time on a real runtime); the check's figures, for hwtrain.json."""
    import latency_models as lm
    from nas.app.budgets import calibrate_latency_model, check_archs

    kind, out = args.latency_model, Path(args.out)
    dtype = device.check_dtype(args.dtype or device.dtypes[0])
    table = None
    if lm.latency_model_class(kind).table_kind is not None:
        table = lm.build_table(
            kind,
            space,
            device,
            out / f"{kind}-{device.name}.csv",
            dtype=dtype,
            n_archs=args.lut_archs,
            progress=not args.quiet,
        )
    model = lm.create_latency_model(kind, space, device, dtype=dtype, table=table)
    cal = calibrate_latency_model(
        space,
        device,
        kind,
        dtype,
        table,
        model,
        check_archs(args.calibration_archs, device),
        seed=args.seed + 100 + seed,
        cache=out / f"{device.name}-networks.json",
    )
    if cal.held is None:
        return model, {}
    return cal.model, {**cal.quality, "arch_keys": cal.arch_keys}


def _config(args: argparse.Namespace) -> Any:
    from nas.hwtrain import HWTrainConfig, LossConfig

    try:
        return HWTrainConfig(
            epochs=args.epochs,
            warmup_epochs=args.warmup_epochs,
            batch_size=args.batch_size,
            arch_lr=args.arch_lr,
            lr=args.lr,
            relaxation=args.relaxation,
            paths=args.paths,
            max_steps_per_epoch=args.max_steps,
            seed=args.seed,
            loss=LossConfig(args.loss, lam=args.lam),
            weight_rule=args.weight_rule,
        )
    except ValueError as err:
        raise InputError(f"nas hwtrain: {err}") from None


def _work(args: argparse.Namespace) -> HwWork:
    return HwWork(
        relaxation=args.relaxation,
        paths=args.paths,
        freeze=dict(t.split("=", 1) for t in args.freeze if "=" in t),
        terms=list(args.term),
        tolerance=args.tolerance,
        mc=args.mc,
        seed=args.seed,
    )


def run_hwtrain(
    args: argparse.Namespace, models: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The whole command without the printing: what `hwtrain.json` holds. Every argument is
    checked before a file is written; a target outside the space's range is said once the
    latency models price it, before training. `models` (device name -> latency model) stand
    in for those `--latency-model` would build, e.g. a model already fitted on the device's
    measured networks (as a run's latency stage fits it)."""
    import latency_models as lm
    from nas.data import load_dataset

    space, devices = _check(args)
    config = _config(args)
    work = _work(args)
    relaxed = relaxed_supernet(space, work)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    given = dict(models or {})
    with folder_lock(out), stage_work("hwtrain", out):
        _latency_models(space, [d for d in devices if d.name not in given], args)
        for d in devices:
            if d.name in given:
                d.device, d.model = lm.get_device(d.name), given[d.name]
        data = load_dataset(args.data)
        return train_and_derive(space, devices, config, relaxed, data, out, work)


def hwtrain_cmd(args: argparse.Namespace) -> int:
    """`nas hwtrain`: train, derive, price and score; results in --out/hwtrain.json."""
    out = Path(args.out)
    report = run_hwtrain(args)
    d = report["derived"]
    priced = ", ".join(f"{k} {v:.4g}" for k, v in d["priced"].items())
    print(f"derived ({report['rule']}): {d['key']}")
    print(f"  priced: {priced}; test accuracy {report['accuracy']['derived']:.4f}")
    print(f"  results in {out / 'hwtrain.json'}, logits in {out / 'trajectory.png'}")
    return 0


def add_hwtrain_parser(sub: Any, positive_int: Any, positive_float: Any) -> None:
    """The `nas hwtrain` subcommand (called from `nas.app.cli.build_parser`)."""
    p = sub.add_parser("hwtrain", help="hardware-aware training: the devices in the loss")
    p.add_argument("--space", default="tiny")
    p.add_argument("--data", default="digits")
    p.add_argument("--device", action="append", default=[], help="repeat for several devices")
    p.add_argument("--target", action="append", default=[], help="DEVICE=MS (repeatable)")
    p.add_argument("--weight", action="append", default=[], help="DEVICE=W: its share of the loss")
    p.add_argument("--margin", type=float, default=0.0, help="aim at target / (1 + margin)")
    p.add_argument("--latency-model", default="lut", help=", ".join(KINDS))
    p.add_argument("--dtype", help="the dtype priced (default: each device's first)")
    p.add_argument("--table", help="the CSV of a table device (e.g. nb201.csv)")
    p.add_argument("--lut-archs", type=positive_int, default=50)
    p.add_argument(
        "--calibration-archs",
        type=int,
        help="whole networks to fit the correction on, as many held out (default: 50 on an "
        "emulated device, 10 on a real runtime; 0: the plain model, unchecked)",
    )
    p.add_argument("--loss", default="target", help="target, multiplicative or additive")
    p.add_argument("--lam", type=positive_float, default=5.0)
    p.add_argument("--term", action="append", default=[], help="params or peak_memory")
    p.add_argument("--relaxation", default="gumbel", help="gumbel or proxyless")
    p.add_argument("--paths", type=positive_int, default=1, help="proxyless: 1 or 2")
    p.add_argument("--freeze", action="append", default=[], help="DIM=VALUE|sample")
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--warmup-epochs", type=int, default=2)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--max-steps", type=positive_int, help="steps per epoch at most")
    p.add_argument("--lr", type=positive_float, default=0.05)
    p.add_argument("--arch-lr", type=positive_float, default=0.05)
    p.add_argument("--tolerance", type=positive_float, default=0.05)
    p.add_argument("--mc", type=positive_int, default=1000, help="Monte-Carlo archs per check")
    p.add_argument(
        "--weight-rule",
        default="sandwich",
        help="sandwich (each weight step also trains the largest subnet, the path distilled "
        "from it) or path (the sampled path alone, the rule of before; resumes old runs)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/hwtrain")
    p.set_defaults(func=hwtrain_cmd)
