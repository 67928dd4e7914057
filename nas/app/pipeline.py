"""The whole run, wired: every registered stage (`nas.app.builtin_stages`: space -> supernet ->
accuracy -> LUTs -> search -> winners -> compress -> report) into one resumable run folder.
Thin by design: every stage is a library call; this module checks the config whole before
any work, holds the folder's lock, and keeps, runs or redoes each stage by what it read.

Layout of a run folder::

    config.yaml                 the resolved config, package version and git commit
    stages.json                 what each finished stage read (its fingerprint) and left
    .lock                       held while a process works in the folder (nas.app.lock)
    supernet/                   checkpoints (nas.supernet.train), resumed where a run stopped
    accuracy/inherited.jsonl    inherited-weight accuracies, one line per arch (cache)
    accuracy/predictor.npz      accuracy predictor fitted on the sampled archs
    latency/<device>-<dtype>.csv  LUTs (resumable, a cache)
    study.db                    the Optuna study (SQLite unless a storage URL is configured)
    pareto.csv, winners.csv     the front and the chosen archs, predicted vs measured
    compress/<arch>/            the compression chain of each winner (nas.compress)
    *.png, report.md            plots and the report
    timings.json                the wall time of every stage in every invocation
    logs/                       the traceback of a stage that failed
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nas.app.builtin_stages import RunState as RunState
from nas.app.builtin_stages import chain_devices as chain_devices
from nas.app.builtin_stages import stage_accuracy as stage_accuracy
from nas.app.builtin_stages import stage_compress as stage_compress
from nas.app.builtin_stages import stage_latency as stage_latency
from nas.app.builtin_stages import stage_report as stage_report
from nas.app.builtin_stages import stage_search as stage_search
from nas.app.builtin_stages import stage_supernet as stage_supernet
from nas.app.builtin_stages import stage_winners as stage_winners
from nas.app.config import ConfigError, RunConfig, save_config
from nas.app.errors import FileProblem, InputError, stage_work
from nas.app.federated_stage import stage_federated as stage_federated  # optional, issue 21
from nas.app.hwtrain_stage import stage_hwtrain as stage_hwtrain  # registers the hwtrain stage
from nas.app.lock import folder_lock
from nas.app.ondevice_stage import stage_ondevice as stage_ondevice  # the optional stage
from nas.app.stages import (
    STAGES,
    Decision,
    Stage,
    StageRecords,
    legacy_records,
    plan_run,
    prepare_redo,
)
from nas.app.timings import RunTimings
from nas.core.space import SearchSpace

__all__ = [
    "FinishedRun",
    "RunState",
    "check_config",
    "open_finished_run",
    "plan",
    "run_pipeline",
]

log = logging.getLogger(__name__)


def check_config(config: RunConfig, *, space: Any = None, data: Any = None) -> None:
    """Raise one `ConfigError` listing every problem of `config` (types, names, ranges)."""
    from nas.app.config import config_from_dict
    from nas.app.run_checks import run_config_problems

    if space is None and data is None:
        config_from_dict(config.to_dict())
        return
    problems = run_config_problems(config, space=space, data_given=data is not None)
    if problems:
        raise ConfigError("invalid run config:\n  " + "\n  ".join(problems))


def _stored_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "config.yaml"
    if not path.exists():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as err:
        raise FileProblem(
            path,
            f"not a readable run config ({err})",
            "put back the config this folder was run with, or use another folder",
        ) from None
    return data if isinstance(data, dict) else None


def plan(config: RunConfig, run_dir: str | Path, force: Sequence[str] = ()) -> list[Decision]:
    """What `run_pipeline` would do with each stage of `run_dir` (nothing changes on disk)."""
    run_dir = Path(run_dir)
    records = StageRecords(run_dir).stages
    if not records and (stored := _stored_config(run_dir)) is not None:
        records = legacy_records(stored, run_dir)
    return plan_run(config.to_dict(), run_dir, records, force)


def run_pipeline(
    config: RunConfig,
    run_dir: str | Path,
    *,
    progress: bool = True,
    space: SearchSpace | None = None,
    data: Any = None,
    force: Sequence[str] = (),
) -> RunState:
    """Run every stage into `run_dir`: a finished stage whose inputs did not change is kept
    (resumed from its files), one whose config keys changed is redone, and `force` names
    stages to redo on purpose (with the stages that read what they make).

    The config is checked whole before any work and written into the folder only then; the
    folder is locked for the run (`nas.app.lock`). `space` and `data` override the config's
    names (for spaces defined in a notebook).
    """
    import search_spaces
    from nas.data import load_dataset

    check_config(config, space=space, data=data)
    run_dir = Path(run_dir)
    plan(config, run_dir, force)  # a bad --force or a corrupt stages.json: before the lock file
    with folder_lock(run_dir):
        decisions = plan(config, run_dir, force)
        records = StageRecords(run_dir)
        prepare_redo(decisions, config.to_dict(), run_dir, records)
        for decision in decisions:
            (log.warning if decision.action == "redo" else log.info)("stage %s", decision)
        save_config(config, run_dir)
        state = RunState(
            config=config,
            run_dir=run_dir,
            space=space or search_spaces.get_space(config.space.name, **config.space.args),
            data=data if data is not None else load_dataset(config.data.name, **config.data.args),
        )
        off = {d.stage for d in decisions if d.action == "off"}
        _run_stages(state, records, progress, off)
    return state


def _run_stages(state: RunState, records: StageRecords, progress: bool, off: set[str]) -> None:
    timings = RunTimings(state.run_dir)
    config = state.config.to_dict()
    for name, stage in STAGES.items():
        if name in off:
            continue
        t = time.perf_counter()
        try:
            with stage_work(name, state.run_dir):
                stage.run(state, progress)
        except _FILE_ERRORS as err:
            raise InputError(f"{err}\n{_advice(stage, str(err), state.run_dir)}") from err
        records.finish(stage, config, state.run_dir)
        state.timings_s[name] = time.perf_counter() - t
        timings.record(name, state.timings_s[name])
    with stage_work("report", state.run_dir):
        stage_report(state, progress)  # again, with every stage's timing in it


def _file_errors() -> tuple[type[BaseException], ...]:
    from latency_models import LUTError
    from nas.core.files import CheckpointError
    from nas.data import UnsafePickleError

    return (CheckpointError, LUTError, UnsafePickleError, FileNotFoundError, IsADirectoryError)


_FILE_ERRORS = _file_errors()


def _advice(stage: Stage, message: str, run_dir: Path) -> str:
    """What to do about a file a stage could not read, from what the stages declare: a cache
    is deleted (and filled again), an output is made again by redoing its stage."""
    for owner in STAGES.values():
        for pattern in owner.caches:
            if str(run_dir / pattern.split("*")[0]) in message:
                return (
                    "it is a cache: delete the file named above and run again (what it held "
                    "is measured again; nothing else is redone)"
                )
        for pattern in owner.writes:
            if str(run_dir / pattern.split("*")[0]) in message:
                return (
                    f"the stage {owner.name} wrote it: run again with `--force {owner.name}` to "
                    f"redo that stage (and those that read what it makes), or delete it"
                )
    return f"run again with `--force {stage.name}` to redo the stage {stage.name}"


@dataclass
class FinishedRun:
    """What a run folder's later users (``nas compress``, the compression benchmark) need."""

    config: RunConfig
    space: SearchSpace
    data: Any
    supernet: Any


def open_finished_run(run_dir: str | Path) -> FinishedRun:
    """The config, space, data set and trained supernet (eval mode) of a run folder."""
    import search_spaces
    from nas.app.config import load_config
    from nas.data import load_dataset
    from nas.supernet import load_supernet

    run = Path(run_dir)
    config = load_config(run / "config.yaml")
    space = search_spaces.get_space(config.space.name, **config.space.args)
    data = load_dataset(config.data.name, **config.data.args)
    supernet = load_supernet(space, run / "supernet").eval()
    return FinishedRun(config, space, data, supernet)
