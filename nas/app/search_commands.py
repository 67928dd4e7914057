"""`nas search` and `nas search worker`: a search over the free objectives into a folder, and
one more process on its study. The search stores how it built its latency models (devices,
dtypes, latency-model kind, table files) with the study, and a worker reads them from there,
so a worker cannot disagree with the study it joins."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from nas.app.errors import InputError, stage_work
from nas.app.lock import folder_lock
from nas.app.validate import (
    Problems,
    check_device,
    check_metrics,
    check_out_folder,
    check_sampler,
    check_space,
    check_storage,
    parse_budgets,
)

__all__ = ["search_cmd", "search_worker_cmd"]

log = logging.getLogger("nas")

#: how long a worker waits for another worker building the same table in its folder
TABLE_WAIT_S = 3600.0


def _split(text: str | None) -> list[str]:
    return [o.strip() for o in (text or "").split(",") if o.strip()]


def _check_search(args: argparse.Namespace) -> Any:
    import latency_models as lm

    p = Problems()
    space = check_space(p, "--space", args.space)
    devices = []
    for i, name in enumerate(args.device):
        key = f"--device[{i}]" if len(args.device) > 1 else "--device"
        device = check_device(p, key, name, dtype=args.dtype, dtype_key="--dtype")
        if device is not None:
            devices.append(device)
            if args.latency_model == "kernels" and not lm.supports_kernels(device):
                p.add(
                    "--latency-model",
                    f"'kernels' needs a runtime that names its kernels "
                    f"(ort-cpu-1t, ort-cpu-2t); {name!r} does not",
                )
    kinds = lm.table_kinds()
    if args.latency_model not in kinds:
        p.add("--latency-model", f"{args.latency_model!r} is not one of {', '.join(kinds)}")
    named = [(d.name, args.dtype or d.dtypes[0]) for d in devices]
    budgets = parse_budgets(p, "--budget", args.budget)
    check_metrics(
        p, space, named, ("--objectives", _split(args.objectives)), budgets, accuracy=False
    )
    if not 0 <= args.margin < 1:
        p.add("--margin", f"a relative margin in [0, 1) (0.1 = 10 %), got {args.margin:g}")
    check_sampler(p, "--sampler", args.sampler)
    check_storage(p, "--storage", args.storage)
    check_out_folder(p, "--out", args.out)
    p.raise_if_any("nas search")
    return space


def _objectives(names: list[str], models: list[Any]) -> list[Any]:
    out: list[Any] = []
    for name in names:
        out += models if name == "latency" else [name]
    return out


def _latency_margins(budgets: list[str], models: list[Any], margin: float) -> dict[str, float]:
    """`margin` for every latency budget among `budgets` (a bare `latency_ms` included)."""
    from nas.search import parse_constraint
    from nas.search.objectives import latency_metric_name

    if not margin:
        return {}
    names = {latency_metric_name(m) for m in models}
    metrics = [parse_constraint(b)[0] for b in budgets]
    return {m: margin for m in metrics if m in names or (m == "latency_ms" and len(names) == 1)}


def search_cmd(args: argparse.Namespace) -> int:
    """`nas search`: the study, its trials (trials.csv) and front (pareto.csv) in --out."""
    import latency_models as lm
    from nas.app.train_memory import train_memory_metrics
    from nas.search import (
        export_pareto_csv,
        fail_stopped_trials,
        run_search,
        sqlite_url,
        trials_frame,
    )

    space = _check_search(args)
    out = Path(args.out)
    kind = args.latency_model
    with folder_lock(out), stage_work("search", out):
        devices = [lm.get_device(name) for name in args.device]
        tables = [out / f"{kind}-{name}.csv" for name in args.device]
        models = [
            lm.create_latency_model(
                kind,
                space,
                d,
                dtype=args.dtype,
                path=path,
                n_archs=args.lut_archs,
                progress=not args.quiet,
                passes=args.lut_passes,
            )
            for d, path in zip(devices, tables, strict=True)
        ]
        recipe = {
            "command": "nas search",
            "latency_model": kind,
            "devices": [
                {"name": d.name, "dtype": m.dtype, "table": str(t.resolve())}
                for d, m, t in zip(devices, models, tables, strict=True)
            ],
            "lut_archs": args.lut_archs,
            "lut_passes": args.lut_passes,
        }
        if not args.storage:  # the folder's own study: under its lock, RUNNING means cut short
            fail_stopped_trials(sqlite_url(out / "study.db"), args.study)
        objectives = _objectives(_split(args.objectives), models)
        study = run_search(
            space,
            objectives,
            latency_models=models,
            constraints=args.budget or None,
            margins=_latency_margins(args.budget, models, args.margin),
            sampler=args.sampler,
            n_evaluations=args.trials,
            storage=args.storage or sqlite_url(out / "study.db"),
            study_name=args.study,
            seed=args.seed,
            recipe=recipe,
            metrics=train_memory_metrics(space, objectives, args.budget),
        )
        frame = trials_frame(study)
        frame.to_csv(out / "trials.csv", index=False)
        export_pareto_csv(study, out / "pareto.csv")
    print(f"{len(study.trials)} trials; front in {out / 'pareto.csv'}")
    if "feasible" in frame.columns and not frame["feasible"].any():
        from nas.app.budgets import unmet_budgets

        raise InputError(unmet_budgets(frame, study).replace("search.budgets", "--budget"))
    return 0


# -- the worker -------------------------------------------------------------------------------
def _stored(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The study's settings and space, checked against what the worker was told."""
    from nas.search import study_settings

    p = Problems()
    check_storage(p, "--storage", args.storage, must_exist=True)
    check_out_folder(p, "--out", args.out)
    p.raise_if_any("nas search worker")
    settings = study_settings(args.storage, args.study)
    name = str(settings.get("space"))
    if args.space is not None and args.space != name:
        p.add("--space", f"study {args.study!r} searches space {name!r}, not {args.space!r}")
    space = check_space(p, "--space", name)
    p.raise_if_any("nas search worker")
    paid = [m for m in [*settings["objectives"], *settings["constraints"]] if "accuracy" in m]
    if paid:
        raise InputError(
            f"study {args.study!r} pays for accuracy ({', '.join(paid)}): a worker needs the "
            "same accuracy source, so join it from Python (nas.join_worker) or `nas run`"
        )
    return space, settings


def _worker_models(args: argparse.Namespace, space: Any, settings: dict[str, Any]) -> list[Any]:
    """The study's latency models: its tables read where it stored them (a copy in memory:
    layers missing there are measured here, not written to another process's file), else
    built in --out (one worker at a time: the folder's lock)."""
    import latency_models as lm

    recipe = settings.get("recipe") or {}
    needed = [m for m in [*settings["objectives"], *settings["constraints"]] if "latency_ms@" in m]
    if needed and not recipe.get("devices"):
        raise InputError(
            f"study {args.study!r} prices {', '.join(needed)} with latency models it did not "
            "store (it was created from Python): join it from Python with the same models"
        )
    kind = str(recipe.get("latency_model", "lut"))
    models = []
    for entry in recipe.get("devices", []):
        device = lm.get_device(entry["name"])
        stored = Path(entry.get("table", ""))
        if stored.is_file():
            table = lm.LUT.load(stored)
        else:
            local = Path(args.out) / f"{kind}-{device.name}.csv"
            log.info("worker: %s is not here; building the table in %s", stored, local)
            with folder_lock(args.out, wait_s=TABLE_WAIT_S):
                table = lm.build_table(
                    kind,
                    space,
                    device,
                    local,
                    dtype=entry["dtype"],
                    n_archs=recipe.get("lut_archs"),
                    passes=int(recipe.get("lut_passes", 1)),
                    progress=not args.quiet,
                )
        table.check_device(device, entry["dtype"])
        table.path = None  # measured here, kept here
        models.append(
            lm.create_latency_model(kind, space, device, dtype=entry["dtype"], table=table)
        )
    return models


def search_worker_cmd(args: argparse.Namespace) -> int:
    """`nas search worker`: join a study with what it stored (objectives, budgets, devices,
    latency models), until it holds --trials evaluations (default: its own total)."""
    from nas.app.train_memory import train_memory_metrics
    from nas.search import join_worker

    space, settings = _stored(args)
    with stage_work("search worker", args.out):
        models = _worker_models(args, space, settings)
        objectives = list(settings["objectives"])
        constraints = list(settings["constraints"])
        metrics = train_memory_metrics(space, objectives, constraints)
        if args.objectives is not None:
            from nas.search import SearchProblem

            wanted = _objectives(_split(args.objectives), models)
            given = SearchProblem(
                space,
                wanted,
                latency_models=models,
                metrics=train_memory_metrics(space, wanted),
            ).objectives
            if given != objectives:
                raise InputError(
                    f"--objectives: study {args.study!r} optimises {', '.join(objectives)}, "
                    f"not {', '.join(given)} (leave --objectives out: the study says)"
                )
        study = join_worker(
            space,
            args.storage,
            args.study,
            objectives,
            latency_models=models,
            constraints=constraints or None,
            n_evaluations=args.trials,
            metrics=metrics,
            seed=args.seed,
        )
    print(f"study {args.study!r}: {len(study.trials)} trials")
    return 0
