"""The command line's inputs, checked before any command does work: one function per command,
each raising one `InputError` that lists every problem (the flag, the bad value, the valid
choices). Numbers are checked by argparse's types (`positive_int`, ...)."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from nas.app.validate import (
    Problems,
    check_data,
    check_device,
    check_input_file,
    check_out_folder,
    check_space,
)

__all__ = [
    "check_bench_tabular",
    "check_compress",
    "check_latency_build",
    "check_latency_validate",
    "check_price",
    "check_report",
    "check_run_out",
    "check_supernet_train",
    "int_list",
    "nonnegative_int",
    "positive_float",
    "positive_int",
]


# -- argparse types ---------------------------------------------------------------------------
def positive_int(text: str) -> int:
    """A whole number >= 1 (argparse rejects anything else with exit 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def int_list(text: str) -> list[int]:
    """A comma list of whole numbers >= 1 (`50,100,300`)."""
    return [positive_int(part.strip()) for part in text.split(",")]


# -- commands ---------------------------------------------------------------------------------
def check_price(args: argparse.Namespace) -> None:
    p = Problems()
    check_space(p, "--space", args.space)
    check_out_folder(p, "--out", args.out)
    p.raise_if_any("nas price")


def check_run_out(out: str | Path) -> None:
    """The run folder of `nas run` / `nas demo`: a folder to write into."""
    p = Problems()
    check_out_folder(p, "--out", str(out))
    p.raise_if_any("the run folder")


def check_report(args: argparse.Namespace) -> None:
    p = Problems()
    check_input_file(p, "RUN", args.run, folder=True)
    if not p and not (Path(args.run) / "report.md").is_file():
        p.add("RUN", f"no report in {args.run}: run `nas run` or `nas demo` first")
    p.raise_if_any("nas report")


def check_supernet_train(args: argparse.Namespace) -> None:
    from nas.supernet import Precision, make_config, resolve_device

    p = Problems()
    check_space(p, "--space", args.space)
    check_data(p, "--data", args.data)
    p.check("--schedule", lambda: make_config(None, schedule=args.schedule))
    device = p.check("--device", lambda: resolve_device(args.device))
    if device is not None:
        p.check("--precision", lambda: Precision(args.precision, device))
    check_out_folder(p, "--out", args.out)
    p.raise_if_any("nas supernet train")


def _table_out(p: Problems, key: str, out: str) -> None:
    """A folder, or a `.csv` file to write."""
    if out.endswith(".csv"):
        if Path(out).is_dir():
            p.add(key, f"{out!r} is a folder; give a folder or a .csv file")
        else:
            check_out_folder(p, key, str(Path(out).parent))
    else:
        check_out_folder(p, key, out)


def check_latency_build(args: argparse.Namespace) -> None:
    import latency_models as lm

    p = Problems()
    check_space(p, "--space", args.space)
    device = check_device(p, "--device", args.device, dtype=args.dtype, dtype_key="--dtype")
    if args.kernels and device is not None and not lm.supports_kernels(device):
        p.add("--kernels", f"{args.device!r} does not name its kernels (ort-cpu-1t, ort-cpu-2t do)")
    if args.kernels and args.compile_only:
        p.add("--compile-only", "applies to layer LUTs; a kernel table is built directly")
    _table_out(p, "--out", args.out)
    p.raise_if_any("nas latency build")


def check_latency_validate(args: argparse.Namespace) -> None:
    import latency_models as lm

    p = Problems()
    check_space(p, "--space", args.space)
    kinds = ("real", "table")
    device = check_device(
        p, "--device", args.device, kinds=kinds, dtype=args.dtype, dtype_key="--dtype"
    )
    factory = lm.DEVICES.factory(args.device) if args.device in lm.DEVICES else None
    is_table = getattr(factory, "kind", "") == "table"
    if is_table and args.table is None:
        p.add("--table", f"{args.device!r} is a table device: give its CSV with --table")
    elif args.table is not None:
        check_input_file(p, "--table", args.table)
        if not is_table and device is not None:
            p.add("--table", f"{args.device!r} is measured here; --table is for table devices")
    if args.model_device is not None:
        check_device(p, "--model-device", args.model_device)
    check_out_folder(p, "--out", args.out)
    p.raise_if_any("nas latency validate")


def check_compress(args: argparse.Namespace) -> Any:
    """The run's config and space, with the arch, steps and devices checked against them."""
    from nas.app.config import load_config
    from nas.compress import check_steps

    p = Problems()
    run = Path(args.run)
    check_input_file(p, "--run", args.run, folder=True)
    if not p:
        check_input_file(p, "--run", str(run / "config.yaml"))
        check_input_file(p, "--run", str(run / "supernet"), folder=True)
    for i, name in enumerate(args.device):
        check_device(p, f"--device[{i}]", name, kinds=("real",))
    p.check("--steps", lambda: check_steps([s for s in args.steps.split(",") if s]))
    if p:
        p.raise_if_any("nas compress")
    config = load_config(run / "config.yaml")
    space = check_space(p, "--run", config.space.name, config.space.args)
    if space is not None:
        p.check("--arch", lambda: space.from_key(args.arch))
    p.raise_if_any("nas compress")
    return config


def check_bench_tabular(args: argparse.Namespace) -> None:
    from nas.search.tabular import STRATEGIES

    p = Problems()
    check_space(p, "--space", args.space)
    check_input_file(p, "--table", args.table)
    if not p:
        columns = _csv_header(p, args.table)
        for flag, column in (
            ("--arch-column", args.arch_column),
            ("--accuracy-column", args.accuracy_column),
            ("--latency-column", args.latency_column),
            *(("--feature-columns", c) for c in (args.feature_columns or "").split(",") if c),
        ):
            if columns and column not in columns:
                p.add(flag, f"{args.table} has no column {column!r}; it has {', '.join(columns)}")
    for name in (args.strategies or "").split(","):
        if name and name not in STRATEGIES:
            p.add("--strategies", f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    p.raise_if_any("nas bench tabular")


def _csv_header(p: Problems, path: str) -> list[str]:
    try:
        with open(path, newline="") as fh:
            first = next(csv.reader(line for line in fh if not line.startswith("#")), [])
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        p.add("--table", f"{path} is not a readable CSV file ({err})")
        return []
    if not first:
        p.add("--table", f"{path} is empty: a table's first line names its columns")
    return first
