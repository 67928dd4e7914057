"""The `nas` command line (also `python -m nas`).

Every command checks its inputs whole before any work (`nas.app.arg_checks`) and maps what
goes wrong onto one contract (`nas.app.errors`): exit 0 success, 1 a stage failed on valid
input (its traceback in a log file), 2 bad input (a few lines naming the key or file, no
traceback; `--debug` or EDGE_NAS_DEBUG=1 prints it), 130 interrupted (runs resume where they
stopped).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nas.app import arg_checks as checks
from nas.app.arg_checks import int_list, nonnegative_int, positive_float, positive_int
from nas.app.errors import EXIT_BAD_INPUT, debug_enabled, run_command, stage_work
from nas.app.hwtrain_commands import add_hwtrain_parser

__all__ = [
    "build_parser",
    "main",
]

log = logging.getLogger("nas")


def _space(args: argparse.Namespace) -> Any:
    import search_spaces

    return search_spaces.get_space(args.space)


def _spaces_cmd(args: argparse.Namespace) -> int:
    import search_spaces

    for name in search_spaces.SPACES.list():
        space = search_spaces.get_space(name)
        print(f"{name:12s} {len(space.keys):3d} dims  {search_spaces.SPACES.describe(name)}")
    return 0


def _price_cmd(args: argparse.Namespace) -> int:
    from nas.app.price import price_archs

    checks.check_price(args)
    with stage_work("price", args.out):
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
    checks.check_run_out(args.out)
    config = demo_config(**overrides)
    state = run_pipeline(config, Path(args.out), progress=not args.quiet, force=args.force)
    print(f"run folder: {state.run_dir}  (report: {state.run_dir / 'report.md'})")
    return 0


def _run_cmd(args: argparse.Namespace) -> int:
    from nas.app.config import load_config
    from nas.app.pipeline import run_pipeline

    config = load_config(args.config)
    out = Path(args.out) if args.out else Path("runs") / config.name
    checks.check_run_out(out)
    state = run_pipeline(config, out, progress=not args.quiet, force=args.force)
    print(f"run folder: {state.run_dir}  (report: {state.run_dir / 'report.md'})")
    return 0


def _supernet_train_cmd(args: argparse.Namespace) -> int:
    from nas.app.lock import folder_lock
    from nas.data import load_dataset
    from nas.supernet import train_supernet

    checks.check_supernet_train(args)
    space = _space(args)
    data = load_dataset(args.data, stream={"auto": None, "yes": True, "no": False}[args.stream])
    with folder_lock(args.out), stage_work("supernet", args.out):
        result = train_supernet(
            space,
            data,
            Path(args.out) / "supernet",
            schedule=args.schedule,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            precision=args.precision,
            num_workers=args.workers,
            accumulate=args.accumulate,
            channels_last=args.channels_last,
            compile=args.compile,
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

    checks.check_latency_build(args)
    with stage_work("latency build", None):
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

    checks.check_latency_validate(args)
    with stage_work("latency validate", args.out):
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
    from nas.app.search_commands import search_cmd

    return search_cmd(args)


def _search_worker_cmd(args: argparse.Namespace) -> int:
    from nas.app.search_commands import search_worker_cmd

    return search_worker_cmd(args)


def _compress_cmd(args: argparse.Namespace) -> int:
    import latency_models
    from nas.app.lock import folder_lock
    from nas.app.pipeline import chain_devices, open_finished_run
    from nas.compress import render_report, run_chain

    checks.check_compress(args)
    run = Path(args.run)
    with folder_lock(run), stage_work("compress", run):
        finished = open_finished_run(run)
        arch = finished.space.from_key(args.arch)
        devices = [latency_models.get_device(name) for name in args.device]
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

    checks.check_bench_tabular(args)
    space = search_spaces.get_space(args.space)
    extra = [c for c in (args.feature_columns or "").split(",") if c]
    table = TabularBenchmark.from_csv(
        args.table, space, args.arch_column, args.accuracy_column, [args.latency_column, *extra]
    )
    with stage_work("bench tabular", None):
        frame = bench_tabular(
            table,
            args.accuracy_column,
            args.latency_column,
            strategies=args.strategies.split(",") if args.strategies else STRATEGIES,
            budgets=args.budgets,
            seeds=range(args.seeds),
            max_trials=args.max_trials,
            feature_columns=extra,
        )
    print(summarize(frame).to_string(index=False))
    return 0


def _report_cmd(args: argparse.Namespace) -> int:
    checks.check_report(args)
    print((Path(args.run) / "report.md").read_text())
    return 0


def _force_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STAGE",
        help="redo this stage and the stages that read what it makes, even if it finished "
        "(repeatable; the stages are those of the run's log, e.g. supernet, search)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nas",
        description="Hardware-aware neural architecture search for mobile and edge devices.",
        epilog="Exit codes: 0 ok, 1 a stage failed, 2 bad input, 130 interrupted.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only, no bars")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback of any error (also EDGE_NAS_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("spaces", help="list the registered search spaces")
    p.set_defaults(func=_spaces_cmd)

    p = sub.add_parser("price", help="price sampled archs (MACs, params, memory) in a study")
    p.add_argument("--space", default="tiny")
    p.add_argument("--trials", type=positive_int, default=200)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--out", default="runs/price")
    p.set_defaults(func=_price_cmd)

    p = sub.add_parser("demo", help="the end-to-end demo on `tiny` into runs/demo (resumable)")
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    p.add_argument("--trials", type=positive_int, help="accuracy evaluations of the search (200)")
    p.add_argument("--quick", action="store_true", help="a minute-long smoke version")
    _force_option(p)
    p.set_defaults(func=_demo_cmd)

    p = sub.add_parser("run", help="run every stage of a YAML/TOML config (resumable)")
    p.add_argument("config", help="run config (.yaml or .toml)")
    p.add_argument("--out", help="run folder (default: runs/<config name>)")
    _force_option(p)
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
    p.add_argument("--epochs", type=positive_int, default=6)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=0.05)
    p.add_argument("--data", default="digits", help="'digits' or a dataset path")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--out", default="runs/supernet", help="run folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", default="fp32", help="fp32, bf16 or fp16 (autocast)")
    p.add_argument("--workers", type=nonnegative_int, default=2, help="image decoding workers")
    p.add_argument("--accumulate", type=positive_int, default=1,
                   help="batches per optimizer step (a large effective batch that fits)")  # fmt: skip
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the forward pass")
    p.add_argument("--stream", choices=("auto", "yes", "no"), default="auto",
                   help="stream an image folder from disk (auto: when it is too big for memory)")  # fmt: skip
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
    p.add_argument("--archs", type=positive_int, help="collect layers from N sampled archs")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--out", default="runs/latency", help="folder or .csv file")
    p.add_argument(
        "--passes",
        type=positive_int,
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
    p.add_argument("--fit", type=positive_int, default=100, help="archs to fit corrections on")
    p.add_argument("--test", type=positive_int, default=200, help="held-out archs to score")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--out", default="runs/latency-validate")
    p.set_defaults(func=_latency_validate_cmd)

    p = sub.add_parser("search", help="a search over free objectives (latency, MACs, memory)")
    ss = p.add_subparsers(dest="search_command", metavar="SUBCOMMAND")
    p.add_argument("--space", default="tiny")
    p.add_argument("--device", action="append", default=[], help="repeat for several devices")
    p.add_argument("--dtype", help="the dtype priced on every device (default: each one's first)")
    p.add_argument(
        "--objectives",
        default="latency,params",
        help="comma list: latency, macs, params, peak_activation_bytes, size_bytes, "
        "train_memory_bytes@MODE[:bN] (MODE: full, bias, bn_bias, lastK)",
    )
    p.add_argument(
        "--budget",
        action="append",
        default=[],
        help="e.g. 'latency_ms@pixel3-emulated<=2' (repeatable)",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=0.0,
        help="relative margin every latency budget keeps: feasible when predicted x (1 + "
        "margin) <= budget (0.1 = 10 %%; a run config's `search.margin: auto` measures it)",
    )
    p.add_argument("--sampler", default="nsga2", help="frontier, gp, nsga2, nsga3, random, tpe")
    p.add_argument("--trials", type=positive_int, default=100)
    p.add_argument("--lut-archs", type=positive_int, default=50)
    p.add_argument(
        "--lut-passes",
        type=positive_int,
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
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--out", default="runs/search")
    p.set_defaults(func=_search_cmd)
    w = ss.add_parser(
        "worker",
        help="join an existing study from another process or machine",
        description="Join a study `nas search` made: its space, objectives, budgets, devices "
        "and latency models are read from the study, so a worker cannot disagree with it.",
    )
    w.add_argument("--space", help="the study's space (default: the one it stored)")
    w.add_argument("--storage", required=True, help="the study's storage URL or file")
    w.add_argument("--study", default="search")
    w.add_argument("--objectives", help="the study's objectives (default: those it stored)")
    w.add_argument(
        "--trials",
        type=positive_int,
        help="the study's total of evaluations to stop at, counted over every worker, as "
        "`nas search --trials` counts it (default: the study's own)",
    )
    w.add_argument("--seed", type=nonnegative_int, help="sampler seed (default: from the pid)")
    w.add_argument(
        "--out",
        default="runs/search-worker",
        help="where to build a latency table the study's folder does not share with this machine",
    )
    w.set_defaults(func=_search_worker_cmd)

    p = sub.add_parser("compress", help="distill, prune, QAT and export a winner of a run")
    p.add_argument("--run", required=True, help="run folder made by `nas run` / `nas demo`")
    p.add_argument("--arch", required=True, help="arch key (see the run's winners.csv)")
    p.add_argument("--steps", default="distill,prune,qat,export")
    p.add_argument("--device", action="append", default=[], help="real device to time on")
    p.set_defaults(func=_compress_cmd)

    add_hwtrain_parser(sub, positive_int, positive_float)
    from nas.app.ondevice_commands import add_ondevice_parser

    add_ondevice_parser(sub)  # nas ondevice plan|adapt

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
    p.add_argument("--budgets", type=int_list, default="50,100,300")
    p.add_argument("--seeds", type=positive_int, default=3)
    p.add_argument("--max-trials", type=positive_int, help="cap per run (default 5 x budget)")
    p.add_argument(
        "--feature-columns", help="other devices' latency columns as extra features (comma list)"
    )
    p.set_defaults(func=_bench_tabular_cmd)

    from nas.app.federated_commands import add_federated_parser

    add_federated_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command of `argv` (default: sys.argv[1:]) and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse: --help (0) or a malformed command line (2)
        return stop.code if isinstance(stop.code, int) else EXIT_BAD_INPUT
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    # the exporters' chatter is filtered around our export calls: nas.backends.quiet_exporters
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    return run_command(args.func, args, debug=debug_enabled(args.debug))


if __name__ == "__main__":
    sys.exit(main())
