"""The `nas` command line (also `python -m nas`).

Exit codes: 0 success, 1 a stage failed, 2 bad input (unknown name, invalid config or arch,
missing file), 130 interrupted (runs resume where they stopped).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nas.core.registry import UnknownNameError

__all__ = [
    "build_parser",
    "main",
]

log = logging.getLogger("nas")


def _space(args: argparse.Namespace) -> Any:
    import search_spaces

    return search_spaces.get_space(args.space)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _spaces_cmd(args: argparse.Namespace) -> int:
    import search_spaces

    for name in search_spaces.SPACES.list():
        space = search_spaces.get_space(name)
        print(f"{name:12s} {len(space.keys):3d} dims  {search_spaces.SPACES.describe(name)}")
    return 0


def _price_cmd(args: argparse.Namespace) -> int:
    from nas.app.price import price_archs

    out = price_archs(_space(args), Path(args.out), n_trials=args.trials, seed=args.seed)
    print(f"run folder: {out}  (report: {out / 'report.md'})")
    return 0


def _demo_cmd(args: argparse.Namespace) -> int:
    from nas.app.demo import demo_config, quick_overrides
    from nas.app.pipeline import run_pipeline

    overrides: dict[str, Any] = {}
    if args.trials is not None:
        overrides["search"] = {"trials": args.trials}
    if args.quick:
        overrides.update(quick_overrides(args.trials))
    state = run_pipeline(demo_config(**overrides), Path(args.out), progress=not args.quiet)
    print(f"run folder: {state.run_dir}  (report: {state.run_dir / 'report.md'})")
    return 0


def _run_cmd(args: argparse.Namespace) -> int:
    from nas.app.config import load_config
    from nas.app.pipeline import run_pipeline

    config = load_config(args.config)
    out = Path(args.out) if args.out else Path("runs") / config.name
    state = run_pipeline(config, out, progress=not args.quiet)
    print(f"run folder: {state.run_dir}  (report: {state.run_dir / 'report.md'})")
    return 0


def _supernet_train_cmd(args: argparse.Namespace) -> int:
    from nas.data import load_dataset
    from nas.supernet import train_supernet

    space = _space(args)
    result = train_supernet(
        space,
        load_dataset(args.data),
        Path(args.out) / "supernet",
        schedule=args.schedule,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(
        f"supernet of {space.name}: step {result.step}, completed={result.completed}, "
        f"{result.images_per_s:.0f} images/s; checkpoint in {result.out_dir}"
    )
    return 0


def _latency_devices_cmd(args: argparse.Namespace) -> int:
    import latency_models

    for name in latency_models.DEVICES.list():
        print(f"{name:22s} {latency_models.DEVICES.describe(name)}")
    return 0


def _latency_build_cmd(args: argparse.Namespace) -> int:
    from nas.app.latency_commands import cli_build_lut

    path = cli_build_lut(
        _space(args),
        args.device,
        args.out,
        dtype=args.dtype,
        n_archs=args.archs,
        seed=args.seed,
        progress=not args.quiet,
        passes=args.passes,
        compile_only=args.compile_only,
        kernels=args.kernels,
    )
    what = "kernel table" if args.kernels else "LUT"
    print(f"{'LUT programs compiled for' if args.compile_only else what}: {path}")
    return 0


def _latency_validate_cmd(args: argparse.Namespace) -> int:
    from nas.app.latency_commands import cli_validate

    report = cli_validate(
        _space(args),
        args.device,
        args.out,
        table=args.table,
        model_device=args.model_device,
        dtype=args.dtype,
        n_fit=args.fit,
        n_test=args.test,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(report)
    return 0


def _search_cmd(args: argparse.Namespace) -> int:
    import latency_models
    from nas.search import export_pareto_csv, run_search, sqlite_url, trials_frame

    kind = args.latency_model
    if kind not in latency_models.table_kinds():
        raise ValueError(
            f"--latency-model {kind!r} is not one of {', '.join(latency_models.table_kinds())} "
            "(the registered latency models that sum a table)"
        )
    space = _space(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = [
        latency_models.create_latency_model(
            kind,
            space,
            latency_models.get_device(name),
            path=out / f"{kind}-{name}.csv",
            n_archs=args.lut_archs,
            progress=not args.quiet,
            passes=args.lut_passes,
        )
        for name in args.device
    ]
    objectives = [o for o in args.objectives.split(",") if o]
    resolved: list[Any] = []
    for o in objectives:
        resolved += models if o == "latency" else [o]
    if "accuracy" in objectives:
        raise ValueError(
            "`nas search` prices free objectives (latency, macs, params, "
            "peak_activation_bytes, size_bytes); searches on accuracy run through `nas run` "
            "(supernet accuracy) or `nas bench tabular` (a table)"
        )
    study = run_search(
        space,
        resolved,
        latency_models=models,
        constraints=args.budget or None,
        sampler=args.sampler,
        n_evaluations=args.trials,
        storage=args.storage or sqlite_url(out / "study.db"),
        study_name=args.study,
        seed=args.seed,
    )
    trials_frame(study).to_csv(out / "trials.csv", index=False)
    export_pareto_csv(study, out / "pareto.csv")
    print(f"{len(study.trials)} trials; front in {out / 'pareto.csv'}")
    return 0


def _search_worker_cmd(args: argparse.Namespace) -> int:
    from nas.search import join_worker

    study = join_worker(
        _space(args),
        args.storage,
        args.study,
        objectives=[o for o in args.objectives.split(",") if o],
        max_trials=args.trials,
    )
    print(f"study {args.study!r}: {len(study.trials)} trials")
    return 0


def _compress_cmd(args: argparse.Namespace) -> int:
    import latency_models
    from nas.app.pipeline import chain_devices, open_finished_run
    from nas.compress import render_report, run_chain

    run = Path(args.run)
    finished = open_finished_run(run)
    arch = finished.space.from_key(args.arch)
    named = map(latency_models.get_device, args.device)
    devices = [d for d in named if isinstance(d, latency_models.RealDevice)]
    if len(devices) < len(args.device):
        raise ValueError(f"--device takes real devices (`nas latency devices`); got {args.device}")
    result = run_chain(
        run,
        arch,
        space=finished.space,
        data=finished.data,
        steps=[s for s in args.steps.split(",") if s],
        student=finished.supernet.export,
        teacher="largest",
        devices=chain_devices(devices),
        seed=finished.config.seed,
    )
    print(render_report(result.rows))
    return 0


def _bench_tabular_cmd(args: argparse.Namespace) -> int:
    import search_spaces
    from nas.search.tabular import STRATEGIES, TabularBenchmark, bench_tabular, summarize

    space = search_spaces.get_space(args.space)
    table = TabularBenchmark.from_csv(
        args.table, space, args.arch_column, args.accuracy_column, args.latency_column
    )
    frame = bench_tabular(
        table,
        args.accuracy_column,
        args.latency_column,
        strategies=args.strategies.split(",") if args.strategies else STRATEGIES,
        budgets=[int(b) for b in args.budgets.split(",")],
        seeds=range(args.seeds),
    )
    print(summarize(frame).to_string(index=False))
    return 0


def _report_cmd(args: argparse.Namespace) -> int:
    path = Path(args.run) / "report.md"
    if not path.exists():
        raise FileNotFoundError(f"no report in {args.run}: run `nas run` or `nas demo` first")
    print(path.read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nas",
        description="Hardware-aware neural architecture search for mobile and edge devices.",
        epilog="Exit codes: 0 ok, 1 a stage failed, 2 bad input, 130 interrupted.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only, no bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("spaces", help="list the registered search spaces")
    p.set_defaults(func=_spaces_cmd)

    p = sub.add_parser("price", help="price sampled archs (MACs, params, memory) in a study")
    p.add_argument("--space", default="tiny")
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/price")
    p.set_defaults(func=_price_cmd)

    p = sub.add_parser("demo", help="the end-to-end demo on `tiny` into runs/demo (resumable)")
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    p.add_argument("--trials", type=int, help="accuracy evaluations of the search (200)")
    p.add_argument("--quick", action="store_true", help="a minute-long smoke version")
    p.set_defaults(func=_demo_cmd)

    p = sub.add_parser("run", help="run every stage of a YAML/TOML config (resumable)")
    p.add_argument("config", help="run config (.yaml or .toml)")
    p.add_argument("--out", help="run folder (default: runs/<config name>)")
    p.set_defaults(func=_run_cmd)

    p = sub.add_parser("report", help="print a run's report")
    p.add_argument("run", help="run folder")
    p.set_defaults(func=_report_cmd)

    sn = sub.add_parser("supernet", help="weight-sharing supernets").add_subparsers(
        dest="supernet_command", required=True, metavar="SUBCOMMAND"
    )
    p = sn.add_parser("train", help="train (or resume) a supernet into RUN/supernet")
    p.add_argument("--space", default="tiny")
    p.add_argument("--schedule", default="sandwich", help="sandwich, progressive or spos")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--data", default="digits", help="'digits' or a dataset path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/supernet", help="run folder")
    p.set_defaults(func=_supernet_train_cmd)

    lat = sub.add_parser("latency", help="devices, lookup tables, latency models").add_subparsers(
        dest="latency_command", required=True, metavar="SUBCOMMAND"
    )
    p = lat.add_parser("devices", help="list the registered devices")
    p.set_defaults(func=_latency_devices_cmd)
    p = lat.add_parser("build", help="build (or resume) the LUT of a space on a device")
    p.add_argument("--space", default="tiny")
    p.add_argument("--device", required=True)
    p.add_argument("--dtype")
    p.add_argument("--archs", type=int, help="collect layers from N sampled archs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/latency", help="folder or .csv file")
    p.add_argument(
        "--passes",
        type=_positive_int,
        default=1,
        help="measure every layer in N separate passes and keep each layer's fastest "
        "(a noisy shared host); a table with fewer passes is topped up",
    )
    p.add_argument(
        "--compile-only",
        action="store_true",
        help="only compile (export, lower) the programs the build will time, into the "
        "artifact cache, timing nothing: run it on a busy machine, then build on a quiet one",
    )
    p.add_argument(
        "--kernels",
        action="store_true",
        help="build the kernel table instead: the kernels the runtime's optimiser makes of "
        "whole networks (--archs sampled, default 100), each timed alone (ort-cpu-* only)",
    )
    p.set_defaults(func=_latency_build_cmd)
    p = lat.add_parser("validate", help="latency predictors against whole-network measurements")
    p.add_argument("--space", default="tiny")
    p.add_argument("--device", required=True, help="the measured device (real or table)")
    p.add_argument("--model-device", help="device whose LUT/profile predicts (default: same)")
    p.add_argument("--table", help="CSV of a table device (e.g. nb201.csv)")
    p.add_argument("--dtype")
    p.add_argument("--fit", type=int, default=100, help="archs to fit corrections on")
    p.add_argument("--test", type=int, default=200, help="held-out archs to score")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/latency-validate")
    p.set_defaults(func=_latency_validate_cmd)

    p = sub.add_parser("search", help="a search over free objectives (latency, MACs, memory)")
    ss = p.add_subparsers(dest="search_command", metavar="SUBCOMMAND")
    p.add_argument("--space", default="tiny")
    p.add_argument("--device", action="append", default=[], help="repeat for several devices")
    p.add_argument(
        "--objectives",
        default="latency,params",
        help="comma list: latency, macs, params, peak_activation_bytes, size_bytes",
    )
    p.add_argument(
        "--budget",
        action="append",
        default=[],
        help="e.g. 'latency_ms@pixel3-emulated<=2' (repeatable)",
    )
    p.add_argument("--sampler", default="nsga2", help="frontier, gp, nsga2, nsga3, random, tpe")
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--lut-archs", type=int, default=50)
    p.add_argument(
        "--lut-passes",
        type=_positive_int,
        default=1,
        help="passes over every LUT layer, each keeping its fastest (real runtimes on a noisy host)",
    )
    p.add_argument(
        "--latency-model",
        default="lut",
        help="a registered latency model that sums a table: lut (the space's layers, default) "
        "or kernels (the kernels the runtime's optimiser makes of each whole network; ort-cpu-* "
        "only, about a second per new arch)",
    )
    p.add_argument("--storage", help="Optuna storage URL (default: SQLite in --out)")
    p.add_argument("--study", default="search")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/search")
    p.set_defaults(func=_search_cmd)
    w = ss.add_parser("worker", help="join an existing study from another process or machine")
    w.add_argument("--space", default="tiny")
    w.add_argument("--storage", required=True)
    w.add_argument("--study", default="search")
    w.add_argument("--objectives", default="macs,params")
    w.add_argument("--trials", type=int, default=50)
    w.set_defaults(func=_search_worker_cmd)

    p = sub.add_parser("compress", help="distill, prune, QAT and export a winner of a run")
    p.add_argument("--run", required=True, help="run folder made by `nas run` / `nas demo`")
    p.add_argument("--arch", required=True, help="arch key (see the run's winners.csv)")
    p.add_argument("--steps", default="distill,prune,qat,export")
    p.add_argument("--device", action="append", default=[], help="real device to time on")
    p.set_defaults(func=_compress_cmd)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(
        dest="bench_command", required=True, metavar="SUBCOMMAND"
    )
    p = bench.add_parser("tabular", help="HV ratio of search strategies on a table's true front")
    p.add_argument("--table", required=True, help="CSV, e.g. ../shared/benchmarks/nb201/nb201.csv")
    p.add_argument("--space", default="nb201")
    p.add_argument("--arch-column", default="arch_str")
    p.add_argument("--accuracy-column", required=True)
    p.add_argument("--latency-column", required=True)
    p.add_argument("--strategies", help="comma list (default: all)")
    p.add_argument("--budgets", default="50,100,300")
    p.add_argument("--seeds", type=int, default=3)
    p.set_defaults(func=_bench_tabular_cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    # the exporters' chatter is filtered around our export calls: nas.backends.quiet_exporters
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("nas: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (UnknownNameError, ValueError, FileNotFoundError, KeyError) as err:
        print(f"nas: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
