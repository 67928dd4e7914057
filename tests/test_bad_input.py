"""Bad input, one table: every command, run config and file a user can get wrong.

Each case runs `nas.app.cli.main(argv)` in this process and checks the error contract
(`nas.app.errors`): the exit code (2 bad input, 1 a stage failed on valid input, 130
interrupted), a message on stderr that names the key, flag or file at fault, no traceback
(unless the debug switch asks for one), and, where the input is rejected before any work, every
file of the case's folder and of the shared fixtures byte-identical (bytes and mtime) and no new
file or folder. A handful of cases that need a process of their own (signals, kill -9, a lock
held by another process) run as subprocesses at the end.

The inputs are tiny (the `tiny` space, emulated devices, a few trials) and the shared files
(a finished search, a run folder, a LUT) are built once per module, so the whole table takes
well under two minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from nas.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
TRACEBACK = "Traceback (most recent call last)"

#: a valid run config that does almost nothing; each config case breaks one thing in it
BASE: dict[str, Any] = {
    "name": "bad-input",
    "data": {"args": {"copies_train": 1, "copies_val": 1, "copies_test": 1}},
    "supernet": {"epochs": 1, "batch_size": 128},
    "accuracy": {"train_archs": 6, "predictor": "ridge"},
    "devices": [{"name": "pixel3-emulated", "dtype": "fp32", "lut_archs": 2}],
    "search": {
        "sampler": "random",
        "trials": 4,
        "objectives": ["accuracy", "latency"],
        "budgets": {"latency_ms@pixel3-emulated": 1000.0},
    },
    "compress": {"top_k": 1, "steps": []},
}

#: bytes of another kind of file (a PNG header and some binary)
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))


# -- the shared fixtures ----------------------------------------------------------------------
@dataclass
class World:
    """Files built once for every case; cases read them and never write them (a case that
    needs to change one copies it into its own folder first)."""

    root: Path
    search: Path  # a finished `nas search` on latency,params (study.db, its LUT, trials.csv)
    run: Path  # a run folder: its config.yaml and an empty supernet/ (no training)
    lut: Path  # a LUT of `tiny` on pixel3-emulated
    table: Path  # a small tabular-benchmark CSV
    arch: str  # a valid arch key of `tiny`


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    import search_spaces
    from nas.app.config import config_from_dict, save_config

    root = tmp_path_factory.mktemp("world")
    search = root / "search"
    argv = ["search", "--device", "pixel3-emulated", "--objectives", "latency,params"]
    argv += ["--lut-archs", "2", "--sampler", "random", "--trials", "3", "--out", str(search)]
    assert main(["-q", *argv]) == 0
    run = root / "run"
    save_config(config_from_dict(BASE), run)
    (run / "supernet").mkdir()
    lut = root / "lut.csv"
    shutil.copy2(search / "lut-pixel3-emulated.csv", lut)
    table = root / "table.csv"
    table.write_text("arch_str,acc,lat\n|nor_conv_3x3~0|+|skip_connect~0|,70.0,1.5\n")
    space = search_spaces.get_space("tiny")
    return World(root, search, run, lut, table, space.key(space.sample(0)))


# -- the cases --------------------------------------------------------------------------------
Setup = Callable[[Path, World, pytest.MonkeyPatch], Any]


@dataclass(frozen=True)
class Case:
    """One bad input. `argv` and `names` may hold `{tmp}` (the case's own folder), `{world}`
    (the shared fixtures' folder) and `{arch}` (a valid arch key)."""

    id: str
    argv: tuple[str, ...]
    code: int = 2
    #: what stderr must name (the key, flag or file)
    names: tuple[str, ...] = ()
    #: rejected before any work: the case's folder and the shared fixtures stay byte-identical
    untouched: bool = True
    #: files written under {tmp} before the command (relative path -> text or bytes)
    files: tuple[tuple[str, str | bytes], ...] = ()
    #: more preparation; may return a context manager held while the command runs
    setup: Setup | None = None
    #: environment variables for the command
    env: tuple[tuple[str, str], ...] = ()
    #: the debug switch is on: a traceback is expected
    traceback: bool = False


def _copy(source: str, target: str) -> Setup:
    """Copy `{world}/source` to `{tmp}/target` (a file or a folder)."""

    def setup(tmp: Path, world: World, mp: pytest.MonkeyPatch) -> None:
        src, dst = world.root / source, tmp / target
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)

    return setup


def _then(*steps: Setup) -> Setup:
    def setup(tmp: Path, world: World, mp: pytest.MonkeyPatch) -> Any:
        held = [step(tmp, world, mp) for step in steps]
        return next((h for h in held if h is not None), None)

    return setup


def _write(relative: str, content: str | bytes) -> Setup:
    def setup(tmp: Path, world: World, mp: pytest.MonkeyPatch) -> None:
        path = tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return setup


def _cut(relative: str, keep: float = 0.6) -> Setup:
    """Cut `{tmp}/relative` to `keep` of its bytes (a kill while it was written)."""

    def setup(tmp: Path, world: World, mp: pytest.MonkeyPatch) -> None:
        path = tmp / relative
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    return setup


def _locked(relative: str) -> Setup:
    """Hold the run folder lock of `{tmp}/relative` (as another `nas` process would)."""

    def setup(tmp: Path, world: World, mp: pytest.MonkeyPatch) -> Any:
        from nas.app.lock import folder_lock

        return folder_lock(tmp / relative, ["nas", "run", "other.yaml"])

    return setup


def _without(*modules: str) -> Setup:
    """Make importing `modules` (and their submodules) fail, as when the extra is missing."""

    def setup(tmp: Path, world: World, mp: pytest.MonkeyPatch) -> None:
        for name in list(sys.modules):
            if any(name == m or name.startswith(m + ".") for m in modules):
                mp.setitem(sys.modules, name, None)
        for name in modules:
            mp.setitem(sys.modules, name, None)

    return setup


def _checkpoint(meta: str | bytes, tensors: bytes | None = None) -> Setup:
    """A copy of the run folder whose supernet checkpoint is `meta` (checkpoint.json)."""

    def setup(tmp: Path, world: World, mp: pytest.MonkeyPatch) -> None:
        _copy("run", "run")(tmp, world, mp)
        _write("run/supernet/checkpoint.json", meta)(tmp, world, mp)
        if tensors is not None:
            _write("run/supernet/step-1.safetensors", tensors)(tmp, world, mp)

    return setup


def _checkpoint_meta(sha: str = "0" * 64) -> str:
    from nas.supernet.checkpoint import CHECKPOINT_VERSION

    meta = {"version": CHECKPOINT_VERSION, "space": "tiny", "step": 1, "config": {}, "state": {}}
    return json.dumps({**meta, "tensors": "step-1.safetensors", "sha256": sha})


def _sqlite_without_a_study(tmp: Path, world: World, mp: pytest.MonkeyPatch) -> None:
    with contextlib.closing(sqlite3.connect(tmp / "other.db")) as db:
        db.execute("create table notes (text)")
        db.commit()


def case(id: str, argv: str, *names: str, **options: Any) -> Case:
    """A case from a command line as one would type it (split as a shell would)."""
    return Case(id, tuple(shlex.split(argv)), names=names, **options)


def run_config(
    id: str, change: dict[str, Any] | str | bytes, *names: str, suffix: str = ".yaml"
) -> Case:
    """`nas run` on BASE with `change` merged in (a dict), or on a file with this content."""
    content = yaml.safe_dump(_merged(BASE, change)) if isinstance(change, dict) else change
    return case(f"run-{id}", f"run {{tmp}}/config{suffix} --out {{tmp}}/run", *names,
                files=((f"config{suffix}", content),))  # fmt: skip


def _merged(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and value:
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _devices(**device: Any) -> dict[str, Any]:
    return {"devices": [{"name": "pixel3-emulated", **device}]}


VALID = (("c.yaml", yaml.safe_dump(BASE)),)
A_FILE = (("f", "x"),)
SEARCH = "search --objectives macs,params --trials 2 --out {tmp}/s"
FED_TIERS = "federated tiers --candidates 20"
FED_RUN = "federated run --candidates 20 --out {tmp}/fed --tier p:pixel3-emulated:5:2"
FED_TIER = {"name": "p", "device": "pixel3-emulated", "budget_ms": 5.0, "clients": 2}
FED_STAGE = {"enabled": True, "candidates": 20, "tiers": [FED_TIER]}
LAT = "search --device pixel3-emulated --objectives latency,params --trials 2 --lut-archs 2 --out {tmp}/s"
BUILD = "latency build --out {tmp}/lut.csv --device pixel3-emulated --archs 2"
WORKER = "search worker --storage sqlite:///{world}/search/study.db"
COMPRESS = "compress --run {world}/run --arch {arch}"
TABLE = "bench tabular --table {world}/table.csv --latency-column lat"
VALIDATE = "latency validate --space nb201 --device nb201-pixel3 --out {tmp}/v"
OWN_RUN = "compress --run {tmp}/run --arch {arch}"


def _mkdir(relative: str) -> Setup:
    return lambda tmp, world, mp: (tmp / relative).mkdir()


# fmt: off
HW = "hwtrain --space tiny --epochs 2 --warmup-epochs 1 --max-steps 1 --out {tmp}/h"
HW1 = f"{HW} --device pixel3-emulated --target pixel3-emulated=0.3"

CASES: list[Case] = [
    # -- the command line itself
    case("no-command", "", "COMMAND"),
    case("unknown-command", "serach", "serach"),
    case("unknown-flag", "spaces --colour", "--colour"),
    # -- nas price
    case("price-unknown-space", "price --space tinny --out {tmp}/p", "--space", "tinny"),
    case("price-trials-0", "price --trials 0 --out {tmp}/p", "--trials"),
    case("price-trials-not-a-number", "price --trials ten --out {tmp}/p", "--trials", "ten"),
    case("price-out-is-a-file", "price --out {tmp}/f", "--out", "{tmp}/f", files=A_FILE),
    case("price-out-under-a-file", "price --out {tmp}/f/p", "{tmp}/f", files=A_FILE),
    # -- nas demo (its options: the demo itself never runs here)
    case("demo-trials-0", "demo --trials 0 --out {tmp}/d", "--trials"),
    case("demo-trials-negative", "demo --trials -5 --out {tmp}/d", "--trials"),
    case("demo-force-unknown-stage", "demo --quick --force supernett --out {tmp}/d",
         "--force", "supernett"),
    case("demo-out-is-a-file", "demo --quick --out {tmp}/f", "{tmp}/f", files=A_FILE),
    # -- nas run: the config file
    case("run-config-missing", "run {tmp}/nope.yaml --out {tmp}/run", "{tmp}/nope.yaml"),
    case("run-config-is-a-folder", "run {tmp}/c.yaml --out {tmp}/run", "{tmp}/c.yaml",
         setup=_mkdir("c.yaml")),
    run_config("empty", "", "{tmp}/config.yaml", "empty"),
    run_config("only-comments", "# name: x\n\n", "{tmp}/config.yaml", "empty"),
    run_config("truncated-yaml", "name: x\nsearch: {trials: 3, sampler: [random\n",
               "{tmp}/config.yaml"),
    run_config("another-format", PNG, "{tmp}/config.yaml"),
    run_config("wrong-suffix", "name: x\n", "config.txt", suffix=".txt"),
    run_config("toml-syntax", 'name = "x"\n[search\ntrials = 3\n', "{tmp}/config.toml",
               suffix=".toml"),
    run_config("top-level-list", "- name: x\n", "mapping"),
    run_config("top-level-text", "just some words\n", "mapping"),
    # -- nas run: keys and types
    run_config("unknown-key", {"serach": {"trials": 3}}, "serach", "search"),
    run_config("unknown-nested-key", {"supernet": {"epoch": 2}}, "supernet.epoch", "epochs"),
    run_config("trials-wrong-type", {"search": {"trials": "ten"}}, "search.trials", "int"),
    run_config("seed-bool", {"seed": True}, "seed"),
    run_config("devices-not-a-list", {"devices": "pixel3-emulated"}, "devices", "list"),
    run_config("section-not-a-mapping", {"supernet": 3}, "supernet"),
    run_config("budget-not-a-number", {"search": {"budgets": {"params": "small"}}},
               "search.budgets.params"),
    run_config("objectives-not-a-list", {"search": {"objectives": "accuracy"}},
               "search.objectives"),
    run_config("toml-wrong-type", 'name = "x"\n[search]\ntrials = "ten"\n', "search.trials",
               suffix=".toml"),
    # -- nas run: unknown names
    run_config("unknown-space", {"space": {"name": "tinny"}}, "space.name", "tinny", "tiny"),
    run_config("unknown-space-arg", {"space": {"args": {"widht": 2}}}, "space.args", "widht"),
    run_config("unknown-data-set", {"data": {"name": "digitz"}}, "data.name", "digitz"),
    run_config("unknown-data-arg", {"data": {"args": {"copies": 1}}}, "data.args", "copies"),
    run_config("unknown-schedule", {"supernet": {"schedule": "sandwhich"}},
               "supernet.schedule", "sandwhich"),
    run_config("unknown-predictor", {"accuracy": {"predictor": "gpp"}}, "accuracy.predictor",
               "gpp"),
    run_config("unknown-device", _devices(name="pixle3-emulated"), "devices[0].name",
               "pixle3-emulated"),
    run_config("unknown-dtype", _devices(dtype="int3"), "devices[0].dtype", "int3"),
    run_config("unknown-latency-model", _devices(latency_model="lutt"),
               "devices[0].latency_model", "lutt"),
    run_config("kernels-on-an-emulated-device", _devices(latency_model="kernels"),
               "devices[0].latency_model"),
    run_config("table-device-in-devices", _devices(name="nb201-pixel3"), "devices[0].name",
               "nb201-pixel3"),
    run_config("device-listed-twice", {"devices": [{"name": "pixel3-emulated"}] * 2},
               "devices[1]"),
    run_config("unknown-sampler", {"search": {"sampler": "nsga"}}, "search.sampler", "nsga"),
    run_config("unknown-objective", {"search": {"objectives": ["accuracy", "lateny"]}},
               "search.objectives", "lateny"),
    run_config("no-objectives", {"search": {"objectives": []}}, "search.objectives"),
    run_config("device-in-a-budget",
               {"search": {"budgets": {"latency_ms@pixle3-emulated": 2.0}}},
               "search.budgets", "pixle3-emulated"),
    run_config("unknown-budget-metric", {"search": {"budgets": {"flops": 2.0}}},
               "search.budgets", "flops"),
    run_config("unknown-train-memory-mode",
               {"search": {"budgets": {"train_memory_bytes@biases": 262144}}},
               "search.budgets.train_memory_bytes@biases", "bn_bias", "lastK"),
    run_config("train-memory-budget-negative",
               {"search": {"budgets": {"train_memory_bytes@bias:b1": -1}}},
               "search.budgets.train_memory_bytes@bias:b1", "> 0"),
    run_config("unknown-compress-step", {"compress": {"steps": ["distil"]}}, "compress.steps",
               "distil"),
    run_config("unknown-storage", {"search": {"storage": "study.txt"}}, "search.storage"),
    # -- nas run: numbers out of range
    run_config("trials-0", {"search": {"trials": 0}}, "search.trials"),
    run_config("epochs-negative", {"supernet": {"epochs": -1}}, "supernet.epochs"),
    run_config("batch-size-0", {"supernet": {"batch_size": 0}}, "supernet.batch_size"),
    run_config("lr-negative", {"supernet": {"lr": -0.1}}, "supernet.lr"),
    run_config("train-archs-2", {"accuracy": {"train_archs": 2}}, "accuracy.train_archs"),
    run_config("lut-archs-0", _devices(lut_archs=0), "devices[0].lut_archs"),
    run_config("budget-negative",
               {"search": {"budgets": {"latency_ms@pixel3-emulated": -1.0}}}, "search.budgets"),
    run_config("accuracy-budget-over-100", {"search": {"budgets": {"accuracy": 150.0}}},
               "search.budgets.accuracy"),
    run_config("seed-negative", {"seed": -1}, "seed"),
    run_config("margin-word", {"search": {"margin": "safe"}}, "search.margin", "auto"),
    run_config("margin-negative", {"search": {"margin": -0.1}}, "search.margin", "[0, 1)"),
    run_config("margin-auto-unmeasured-real-device",
               {"devices": [{"name": "ort-cpu-1t", "lut_archs": 2, "calibration_archs": 0}],
                "search": {"budgets": {"latency_ms@ort-cpu-1t": 5.0}}},
               "devices[0].calibration_archs", "search.margin"),
    run_config("calibration-archs-negative", _devices(calibration_archs=-1),
               "devices[0].calibration_archs"),
    run_config("top-k-negative", {"compress": {"top_k": -1}}, "compress.top_k"),
    # -- nas run: where the training loops run (compute, issue 22)
    run_config("compute-device-not-there", {"compute": {"device": "cuda:99"}},
               "compute.device", "cuda:99", "this machine has: cpu"),
    run_config("compute-device-not-a-name", {"compute": {"device": "gpu0"}}, "compute.device",
               "gpu0", "cuda:N"),
    run_config("compute-fp16-on-the-cpu", {"compute": {"device": "cpu", "precision": "fp16"}},
               "compute.precision", "GPU"),
    run_config("compute-unknown-precision", {"compute": {"precision": "fp8"}},
               "compute.precision", "fp8", "bf16"),
    run_config("compute-grad-accum-0", {"compute": {"grad_accum": 0}}, "compute.grad_accum"),
    run_config("compute-workers-negative", {"compute": {"workers": -2}}, "compute.workers"),
    run_config("compute-unknown-key", {"compute": {"devise": "cpu"}}, "compute.devise",
               "device"),
    run_config("every-problem-at-once",
               {"search": {"sampler": "nsga", "trials": 0}, "accuracy": {"predictor": "gpp"}},
               "search.sampler", "search.trials", "accuracy.predictor"),
    # -- nas run: the run folder
    case("run-force-unknown-stage", "run {tmp}/c.yaml --out {tmp}/run --force serch",
         "--force", "serch", files=VALID),
    case("run-out-is-a-file", "run {tmp}/c.yaml --out {tmp}/f", "{tmp}/f",
         files=(*VALID, *A_FILE)),
    case("run-folder-locked", "run {tmp}/c.yaml --out {tmp}/run", "{tmp}/run", str(os.getpid()),
         files=VALID, setup=_locked("run")),
    case("run-folder-config-corrupt", "run {tmp}/c.yaml --out {tmp}/run",
         "{tmp}/run/config.yaml", files=(*VALID, ("run/config.yaml", "name: [x\n")),
         untouched=False),  # found once the lock is held: .lock appears
    case("run-folder-records-binary", "run {tmp}/c.yaml --out {tmp}/run",
         "{tmp}/run/stages.json", files=(*VALID, ("run/stages.json", PNG)), untouched=False),
    case("run-folder-records-cut-short", "run {tmp}/c.yaml --out {tmp}/run",
         "{tmp}/run/stages.json", files=(*VALID, ("run/stages.json", '{"stages": {"supe')),
         untouched=False),
    # -- nas report
    case("report-no-folder", "report {tmp}/nope", "{tmp}/nope"),
    case("report-no-report", "report {tmp}", "no report"),
    case("report-of-a-file", "report {tmp}/f", "{tmp}/f", files=A_FILE),
    # -- nas supernet train
    case("supernet-unknown-schedule", "supernet train --schedule bogus --out {tmp}/sn",
         "--schedule", "bogus"),
    case("supernet-epochs-negative", "supernet train --epochs -1 --out {tmp}/sn", "--epochs"),
    case("supernet-batch-size-0", "supernet train --batch-size 0 --out {tmp}/sn",
         "--batch-size"),
    case("supernet-lr-negative", "supernet train --lr -1 --out {tmp}/sn", "--lr"),
    case("supernet-unknown-data", "supernet train --data digitz --out {tmp}/sn", "--data",
         "digitz"),
    case("supernet-data-is-a-file", "supernet train --data {tmp}/f --out {tmp}/sn", "--data",
         "{tmp}/f", files=A_FILE),
    case("supernet-unknown-space", "supernet train --space tinny --out {tmp}/sn", "--space",
         "tinny"),
    case("supernet-device-not-there", "supernet train --device cuda:99 --out {tmp}/sn",
         "--device", "cuda:99", "this machine has: cpu"),
    case("supernet-accumulate-0", "supernet train --accumulate 0 --out {tmp}/sn",
         "--accumulate"),
    case("supernet-device-unknown", "supernet train --device tpu --out {tmp}/sn", "--device",
         "tpu"),
    case("supernet-unknown-precision", "supernet train --precision fp8 --out {tmp}/sn",
         "--precision", "fp8"),
    case("supernet-fp16-on-the-cpu", "supernet train --device cpu --precision fp16 --out {tmp}/sn",
         "--precision", "bf16"),
    # -- nas latency build
    case("build-unknown-device", f"{BUILD} --device pixle3-emulated", "--device",
         "pixle3-emulated"),
    case("build-unknown-dtype", f"{BUILD} --dtype int3", "--dtype", "int3"),
    case("build-archs-negative", f"{BUILD} --archs -3", "--archs"),
    case("build-archs-0", f"{BUILD} --archs 0", "--archs"),
    case("build-passes-0", f"{BUILD} --passes 0", "--passes"),
    case("build-kernels-on-an-emulated-device", f"{BUILD} --kernels", "--kernels"),
    case("build-table-device", f"{BUILD} --device nb201-pixel3", "--device", "nb201-pixel3"),
    case("build-out-csv-is-a-folder", BUILD, "{tmp}/lut.csv", setup=_mkdir("lut.csv")),
    case("build-out-under-a-file", f"{BUILD} --out {{tmp}}/f/lut.csv", "{tmp}/f", files=A_FILE),
    case("build-lut-of-another-format", BUILD, "{tmp}/lut.csv", files=(("lut.csv", PNG),),
         untouched=False),
    case("build-lut-not-a-lut", BUILD, "{tmp}/lut.csv", files=(("lut.csv", "a,b\n1,2\n"),),
         untouched=False),
    case("build-lut-empty", BUILD, "{tmp}/lut.csv", files=(("lut.csv", ""),), untouched=False),
    case("build-lut-of-another-device", f"{BUILD} --device pixel2-emulated", "{tmp}/lut.csv",
         setup=_copy("lut.csv", "lut.csv"), untouched=False),
    case("build-lut-last-line-cut", BUILD, code=0, untouched=False,  # the cut row is measured again
         setup=_then(_copy("lut.csv", "lut.csv"), _cut("lut.csv", 0.9))),
    case("build-without-executorch", f"{BUILD} --device xnnpack-1t --archs 1", "executorch",
         setup=_without("executorch"), untouched=False),
    case("build-without-onnxruntime", f"{BUILD} --device ort-cpu-1t --archs 1", "onnxruntime",
         setup=_without("onnxruntime"), untouched=False),
    # -- nas latency validate
    case("validate-table-device-without-table", VALIDATE, "--table"),
    case("validate-table-missing", f"{VALIDATE} --table {{tmp}}/nb.csv", "--table",
         "{tmp}/nb.csv"),
    case("validate-table-is-a-folder", f"{VALIDATE} --table {{tmp}}", "--table"),
    case("validate-emulated-device", "latency validate --device pixel3-emulated --out {tmp}/v",
         "--device", "pixel3-emulated"),
    case("validate-unknown-model-device",
         "latency validate --device ort-cpu-1t --model-device pixle3 --out {tmp}/v",
         "--model-device", "pixle3"),
    case("validate-fit-0", "latency validate --device ort-cpu-1t --fit 0 --out {tmp}/v",
         "--fit"),
    # -- nas search
    case("search-unknown-device", f"{LAT} --device pixle3-emulated", "pixle3-emulated"),
    case("search-unknown-dtype", f"{LAT} --dtype int3", "--dtype", "int3"),
    case("search-unknown-sampler", f"{SEARCH} --sampler nsga", "--sampler", "nsga"),
    case("search-unknown-objective", f"{SEARCH} --objectives macs,paramz", "--objectives",
         "paramz"),
    case("search-accuracy-objective", f"{SEARCH} --objectives accuracy,macs", "--objectives",
         "accuracy"),
    case("search-latency-without-device", f"{SEARCH} --objectives latency,macs",
         "--objectives", "latency"),
    case("search-device-in-a-budget", f"{LAT} --budget latency_ms@pixle3-emulated<=2",
         "--budget", "pixle3-emulated"),
    case("search-train-memory-sparse", f"{SEARCH} --objectives params,train_memory_bytes@sparse",
         "--objectives", "train_memory_bytes@sparse", "probe"),
    case("search-train-memory-batch-0", f"{SEARCH} --budget train_memory_bytes@bias:b0<=1e6",
         "--budget", "train_memory_bytes@bias:b0", ">= 1"),
    case("search-budget-garbage", f"{SEARCH} --budget 'params is small'", "--budget"),
    case("search-budget-negative", f"{SEARCH} --budget params<=-1", "--budget"),
    case("search-margin-over-1", f"{LAT} --budget latency_ms<=2 --margin 1.5", "--margin",
         "[0, 1)"),
    case("search-trials-0", f"{SEARCH} --trials 0", "--trials"),
    case("search-lut-archs-0", f"{LAT} --lut-archs 0", "--lut-archs"),
    case("search-unknown-latency-model", f"{LAT} --latency-model lutt", "--latency-model",
         "lutt"),
    case("search-kernels-on-an-emulated-device", f"{LAT} --latency-model kernels",
         "--latency-model"),
    case("search-storage-not-a-database", f"{SEARCH} --storage {{tmp}}/study.txt",
         "--storage"),
    case("search-out-is-a-file", f"{SEARCH} --out {{tmp}}/f", "{tmp}/f", files=A_FILE),
    case("search-folder-locked", SEARCH, "{tmp}/s", str(os.getpid()), setup=_locked("s")),
    case("search-study-of-another-format", SEARCH, "{tmp}/s/study.db",
         files=(("s/study.db", PNG),), untouched=False),
    case("search-study-cut-short", SEARCH, "{tmp}/s/study.db", untouched=False,
         setup=_then(_copy("search", "s"), _cut("s/study.db", 0.3))),
    case("search-lut-of-another-format", LAT, "{tmp}/s/lut-pixel3-emulated.csv",
         files=(("s/lut-pixel3-emulated.csv", PNG),), untouched=False),
    case("search-budget-no-arch-meets", f"{SEARCH} --budget params<=1", "params", "--budget",
         untouched=False),  # the search runs; its end names the budget and the best found
    # -- nas search worker
    case("worker-storage-missing", "search worker --storage sqlite:///{tmp}/no.db",
         "--storage", "{tmp}/no.db"),
    case("worker-storage-not-a-database", "search worker --storage {tmp}/x.txt", "--storage",
         files=(("x.txt", "x"),)),
    case("worker-storage-is-a-folder", "search worker --storage {tmp}/d.db", "{tmp}/d.db",
         setup=_mkdir("d.db")),
    case("worker-storage-of-another-format", "search worker --storage {tmp}/x.db",
         "{tmp}/x.db", files=(("x.db", PNG),)),
    case("worker-storage-without-the-study", "search worker --storage sqlite:///{tmp}/other.db",
         "search", setup=_sqlite_without_a_study),
    case("worker-unknown-study", f"{WORKER} --study serach", "serach"),
    case("worker-other-space", f"{WORKER} --space nb201", "--space", "nb201"),
    case("worker-other-objectives", f"{WORKER} --objectives macs", "--objectives"),
    case("worker-trials-0", f"{WORKER} --trials 0", "--trials"),
    # -- nas compress
    case("compress-run-missing", "compress --run {tmp}/nope --arch {arch}", "--run",
         "{tmp}/nope"),
    case("compress-run-without-config", "compress --run {tmp} --arch {arch}", "--run",
         "config.yaml"),
    case("compress-bad-arch", f"{COMPRESS} --arch s0.depth=9", "--arch"),
    case("compress-unknown-step", f"{COMPRESS} --steps distil,export", "--steps", "distil"),
    case("compress-emulated-device", f"{COMPRESS} --device pixel3-emulated", "--device",
         "pixel3-emulated"),
    case("compress-unknown-device", f"{COMPRESS} --device ort-cpu-3t", "--device",
         "ort-cpu-3t"),
    case("compress-folder-locked", OWN_RUN, "{tmp}/run", str(os.getpid()),
         setup=_then(_copy("run", "run"), _locked("run"))),
    case("compress-checkpoint-not-json", OWN_RUN, "{tmp}/run/supernet/checkpoint.json",
         setup=_checkpoint('{"version": 1, "te'), untouched=False),
    case("compress-checkpoint-tensors-corrupt", OWN_RUN,
         "{tmp}/run/supernet/step-1.safetensors", setup=_checkpoint(_checkpoint_meta(), PNG),
         untouched=False),
    # -- nas bench tabular
    case("bench-table-missing", f"{TABLE} --accuracy-column acc --table {{tmp}}/t.csv",
         "--table", "{tmp}/t.csv"),
    case("bench-table-empty", f"{TABLE} --accuracy-column acc --table {{tmp}}/t.csv",
         "{tmp}/t.csv", files=(("t.csv", ""),)),
    case("bench-table-binary", f"{TABLE} --accuracy-column acc --table {{tmp}}/t.csv",
         "{tmp}/t.csv", files=(("t.csv", PNG),)),
    case("bench-unknown-column", f"{TABLE} --accuracy-column accuracy", "--accuracy-column",
         "accuracy"),
    case("bench-unknown-strategy", f"{TABLE} --accuracy-column acc --strategies randm",
         "--strategies", "randm"),
    case("bench-budgets-0", f"{TABLE} --accuracy-column acc --budgets 0,50", "--budgets"),
    case("bench-unknown-feature-column",
         f"{TABLE} --accuracy-column acc --feature-columns lat,gpu_ms", "--feature-columns",
         "gpu_ms"),
    case("bench-max-trials-0", f"{TABLE} --accuracy-column acc --max-trials 0", "--max-trials"),
    case("bench-seeds-0", f"{TABLE} --accuracy-column acc --seeds 0", "--seeds"),
    # -- nas hwtrain (issue 19): every refusal comes before training
    case("hwtrain-no-device", "hwtrain --target 1 --out {tmp}/h", "--device"),
    case("hwtrain-unknown-device", f"{HW} --device pixel9 --target pixel9=1", "--device[0]",
         "pixel9"),
    case("hwtrain-target-not-a-number", f"{HW} --device pixel3-emulated --target "
         "pixel3-emulated=fast", "--target", "fast"),
    case("hwtrain-target-other-device", f"{HW} --device pixel3-emulated --target ort-cpu-1t=1",
         "--target", "ort-cpu-1t"),
    case("hwtrain-weight-negative", f"{HW1} --weight pixel3-emulated=-1", "--weight"),
    case("hwtrain-margin-negative", f"{HW1} --margin -0.5", "--margin"),
    case("hwtrain-calibration-negative", f"{HW1} --calibration-archs -2", "--calibration-archs"),
    case("hwtrain-target-mode-without-target", f"{HW} --device pixel3-emulated", "--target"),
    case("hwtrain-kernel-model-cannot-price-layers", f"{HW1} --latency-model kernels",
         "--latency-model", "kernels"),
    case("hwtrain-unknown-loss", f"{HW1} --loss fbnet", "--loss", "fbnet"),
    case("hwtrain-unknown-relaxation", f"{HW1} --relaxation darts", "--relaxation", "darts"),
    case("hwtrain-unknown-weight-rule", f"{HW1} --weight-rule largest", "--weight-rule",
         "largest"),
    case("hwtrain-two-paths-gumbel", f"{HW1} --paths 2", "--paths", "proxyless"),
    case("hwtrain-warmup-too-long", f"{HW1} --epochs 2 --warmup-epochs 2", "warmup_epochs"),
    case("hwtrain-freeze-not-an-input-dim", f"{HW1} --freeze s0.width=16", "--freeze",
         "s0.width"),
    case("hwtrain-target-outside-the-range", f"{HW} --device pixel3-emulated --target "
         "pixel3-emulated=100 --latency-model costmodel", "--target", "range", untouched=False),
    # -- nas run with hardware-aware training (issue 19): refused before any training
    run_config("hwtrain-unknown-device", {"hwtrain": {"enabled": True, "targets": {
        "latency_ms@pixel9": 0.3}}}, "hwtrain.targets.latency_ms@pixel9",
        "latency_ms@pixel3-emulated"),
    run_config("hwtrain-target-outside-the-range", {"hwtrain": {"enabled": True, "targets": {
        "latency_ms@pixel3-emulated": 100}}}, "hwtrain.targets.latency_ms@pixel3-emulated",
        "range"),
    run_config("hwtrain-target-loss-without-target", {"hwtrain": {"enabled": True}},
               "hwtrain.targets"),
    run_config("hwtrain-unknown-relaxation", {"hwtrain": {"enabled": True, "relaxation": "darts",
        "targets": {"latency_ms@pixel3-emulated": 0.3}}}, "hwtrain.relaxation", "darts"),
    run_config("hwtrain-unknown-weight-rule", {"hwtrain": {"enabled": True, "weight_rule":
        "largest", "targets": {"latency_ms@pixel3-emulated": 0.3}}}, "hwtrain.weight_rule",
        "sandwich"),
    run_config("hwtrain-kernel-table-cannot-price-layers", {
        "devices": [*BASE["devices"], {"name": "ort-cpu-1t", "latency_model": "kernels"}],
        "hwtrain": {"enabled": True, "targets": {"latency_ms@ort-cpu-1t": 0.3}}},
        "hwtrain.targets.latency_ms@ort-cpu-1t", "kernel"),
    run_config("search-off-without-hwtrain", {"search": {"enabled": False}}, "search.enabled",
               "hwtrain.enabled"),
    # -- nas ondevice (issue 20)
    case("ondevice-plan-unknown-space", "ondevice plan --space tiny2 --arch {arch}", "--space",
         "tiny2"),
    case("ondevice-plan-bad-arch", "ondevice plan --space tiny --arch s0.depth=9", "--arch"),
    case("ondevice-plan-budget-too-small",
         "ondevice plan --space tiny --arch {arch} --mode full --budget-kb 1", "--budget-kb"),
    case("ondevice-plan-budget-0", "ondevice plan --space tiny --arch {arch} --budget-kb 0",
         "--budget-kb"),
    case("ondevice-adapt-run-missing", "ondevice adapt --run {tmp}/nope --arch {arch}", "--run",
         "{tmp}/nope"),
    case("ondevice-adapt-arch-of-another-space",
         "ondevice adapt --run {world}/run --arch 0|1|2|3|4|0", "--arch"),
    case("ondevice-adapt-unknown-shift", "ondevice adapt --run {world}/run --arch {arch} "
         "--shift sepia", "--shift", "sepia"),
    case("ondevice-adapt-optimizer-the-runtime-lacks", "ondevice adapt --run {world}/run "
         "--arch {arch} --engine executorch --optimizer adam", "--optimizer", "adam",
         "--fallback pytorch"),
    case("ondevice-adapt-unknown-fallback", "ondevice adapt --run {world}/run --arch {arch} "
         "--fallback onnx", "--fallback", "onnx"),
    # -- the ondevice section of a run config (issue 20)
    run_config("ondevice-unknown-mode", {"ondevice": {"modes": ["bias", "biases"]}},
               "ondevice.modes", "biases", "bias"),
    run_config("ondevice-no-modes", {"ondevice": {"modes": []}}, "ondevice.modes"),
    run_config("ondevice-sparse-without-a-budget", {"ondevice": {"modes": ["sparse"]}},
               "ondevice.budget_kb"),
    run_config("ondevice-budget-0", {"ondevice": {"budget_kb": 0}}, "ondevice.budget_kb"),
    run_config("ondevice-shots-0", {"ondevice": {"shots": 0}}, "ondevice.shots"),
    run_config("ondevice-unknown-runtime", {"ondevice": {"runtime": "tflite"}},
               "ondevice.runtime", "tflite"),
    run_config("ondevice-optimizer-the-runtime-lacks",
               {"ondevice": {"runtime": "executorch", "optimizer": "adam"}},
               "ondevice.optimizer", "adam", "ondevice.fallback: pytorch"),
    run_config("ondevice-unknown-batch-norm", {"ondevice": {"batch_norm": "frozen"}},
               "ondevice.batch_norm", "frozen", "eval"),
    case("ondevice-adapt-unknown-batch-norm", "ondevice adapt --run {world}/run --arch {arch} "
         "--batch-norm frozen", "--batch-norm", "frozen"),
    # -- the debug switch: the same bad input, with its traceback
    case("debug-flag-shows-the-traceback", "--debug run {tmp}/config.yaml", "{tmp}/config.yaml",
         files=(("config.yaml", ""),), traceback=True),
    case("debug-env-shows-the-traceback", "run {tmp}/config.yaml", "{tmp}/config.yaml",
         files=(("config.yaml", ""),), env=(("EDGE_NAS_DEBUG", "1"),), traceback=True),
    # -- nas federated (issue 21)
    case("federated-tier-malformed", f"{FED_TIERS} --tier phone:pixel3-emulated:0.5", "--tier"),
    case("federated-tier-budget-not-a-number", f"{FED_TIERS} --tier p:pixel3-emulated:fast:2",
         "BUDGET_MS"),
    case("federated-tier-unknown-device", f"{FED_TIERS} --tier p:pixle3-emulated:0.5:2",
         "pixle3-emulated"),
    case("federated-tier-budget-nothing-meets", f"{FED_TIERS} --tier w:pixel3-emulated:0.001:2",
         "no arch of 'tiny' meets", "fastest"),
    case("federated-no-tier", "federated tiers --candidates 20", "--tier"),
    case("federated-alpha-0", f"{FED_RUN} --partition dirichlet --alpha 0", "--alpha"),
    case("federated-dp-clip-0", f"{FED_RUN} --dp-clip 0", "--dp-clip"),
    case("federated-server-momentum-1", f"{FED_RUN} --server-momentum 1", "--server-momentum"),
    case("federated-more-clients-than-sources",
         "federated run --candidates 20 --out {tmp}/fed --tier p:pixel3-emulated:5:100000",
         "100000 clients"),
    # -- the run config's federated stage (issue 21)
    run_config("federated-alpha-0", {"federated": {**FED_STAGE, "partition": "dirichlet",
               "alpha": 0.0}}, "federated.alpha", "alpha > 0"),
    run_config("federated-budget-nothing-meets", {"federated": {**FED_STAGE, "tiers": [
               {**FED_TIER, "budget_ms": 0.001}]}}, "federated.tiers[0].budget_ms",
               "no arch of 'tiny' meets", "the fastest of"),
    run_config("federated-more-clients-than-sources", {"federated": {**FED_STAGE, "tiers": [
               {**FED_TIER, "clients": 100000}]}}, "federated.tiers", "100000 clients",
               "source images"),
    run_config("federated-tier-device-not-in-run", {"federated": {**FED_STAGE, "tiers": [
               {**FED_TIER, "device": "ort-cpu-1t"}]}}, "federated.tiers[0].device",
               "ort-cpu-1t"),
    run_config("federated-unknown-runtime", {"federated": {**FED_STAGE, "runtime": "ray"}},
               "federated.runtime", "grid, deployment"),
]
# fmt: on


def test_the_table_is_large_and_its_ids_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids are unique"
    assert len(CASES) >= 60


# -- running a case ---------------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, tuple[bytes, int] | None] | None:
    """Every file under `folder` with its bytes and mtime (folders as None); None when
    `folder` does not exist."""
    if not folder.exists():
        return None
    out: dict[str, tuple[bytes, int] | None] = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        out[key] = None if path.is_dir() else (path.read_bytes(), path.stat().st_mtime_ns)
    return out


def _fill(text: str, tmp: Path, world: World) -> str:
    return (
        text.replace("{tmp}", str(tmp))
        .replace("{world}", str(world.root))
        .replace("{arch}", world.arch)
    )


def run_cli(argv: list[str]) -> int:
    """`main(argv)`'s exit code; argparse's own errors exit through SystemExit (code 2)."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 2


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input(
    case: Case,
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    tmp = tmp_path / "case"
    tmp.mkdir()
    monkeypatch.chdir(tmp)
    monkeypatch.delenv("EDGE_NAS_DEBUG", raising=False)
    for key, value in case.env:
        monkeypatch.setenv(key, value)
    for relative, content in case.files:
        _write(relative, content)(tmp, world, monkeypatch)
    with contextlib.ExitStack() as stack:
        held = case.setup(tmp, world, monkeypatch) if case.setup is not None else None
        if held is not None:
            stack.enter_context(held)
        before = (snapshot(tmp), snapshot(world.root))
        code = run_cli([_fill(a, tmp, world) for a in case.argv])
        after = (snapshot(tmp), snapshot(world.root))
    out, err = capsys.readouterr()
    shown = f"exit {code}\n--- stderr\n{err}\n--- stdout\n{out[-2000:]}"
    assert code == case.code, shown
    for name in case.names:
        assert _fill(name, tmp, world) in err, f"stderr does not name {name!r}\n{shown}"
    if case.traceback:
        assert TRACEBACK in err, shown
    else:
        assert TRACEBACK not in err + out + caplog.text, shown
    assert after[1] == before[1], "the shared fixtures changed"
    if case.untouched:
        assert after[0] == before[0], f"rejected up front, yet the folder changed\n{shown}"


# -- cases that need processes of their own ---------------------------------------------------
def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGE_NAS_DEBUG"}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _nas(*argv: str) -> list[str]:
    return [sys.executable, "-m", "nas", "-q", *argv]


def _n_trials(db: Path, state: str = "COMPLETE") -> int:
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return int(
                con.execute("select count(*) from trials where state = ?", (state,)).fetchone()[0]
            )
    except sqlite3.Error:  # the other process is creating it
        return 0


def _wait_for(
    proc: subprocess.Popen[str], ready: Callable[[], bool], timeout_s: float = 300
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    assert proc.poll() is None, "the process ended before it could be stopped:\n" + "".join(
        proc.communicate()
    )


def _interrupt(proc: subprocess.Popen[str], presses: int = 3) -> tuple[str, str]:
    """Ctrl-C as a user presses it: again if the first one landed where a library swallowed
    it (the search's trial loop then goes on)."""
    for _ in range(presses - 1):
        proc.send_signal(signal.SIGINT)
        try:
            return proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            continue
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=60)


def test_exit_code_of_bad_input_from_a_shell(tmp_path: Path) -> None:
    """`python -m nas ...` exits 2 with a line naming the file, and no traceback."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    done = subprocess.run(
        _nas("run", str(empty)),
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert str(empty) in done.stderr
    assert TRACEBACK not in done.stderr + done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.yaml"]


def test_sigint_exits_130_and_the_search_resumes(tmp_path: Path) -> None:
    out = tmp_path / "s"
    argv = ["search", "--objectives", "macs,params", "--sampler", "random", "--out", str(out)]
    proc = subprocess.Popen(
        _nas(*argv, "--trials", "100000"),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(proc, lambda: _n_trials(out / "study.db") >= 3)
    stdout, stderr = _interrupt(proc)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and TRACEBACK not in stderr + stdout
    done = _n_trials(out / "study.db")
    assert run_cli(["-q", *argv, "--trials", str(done + 2)]) == 0  # resumed, not started over
    assert _n_trials(out / "study.db") >= done + 2
    assert _n_trials(out / "study.db", "RUNNING") == 0


def test_a_killed_worker_loses_nothing_and_the_search_completes(tmp_path: Path) -> None:
    """kill -9 of a worker leaves one RUNNING trial; the search that owns the folder fails it
    when it starts again and completes the study."""
    out = tmp_path / "s"
    argv = ["search", "--objectives", "macs,params", "--sampler", "random", "--out", str(out)]
    assert run_cli(["-q", *argv, "--trials", "2"]) == 0
    worker = subprocess.Popen(
        _nas("search", "worker", "--storage", f"sqlite:///{out}/study.db", "--trials", "100000"),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(worker, lambda: _n_trials(out / "study.db") >= 6)
    worker.kill()
    worker.communicate(timeout=60)
    assert worker.returncode == -signal.SIGKILL
    done = _n_trials(out / "study.db")
    assert run_cli(["-q", *argv, "--trials", str(done + 2)]) == 0
    assert _n_trials(out / "study.db") >= done + 2
    assert _n_trials(out / "study.db", "RUNNING") == 0


def test_a_lock_held_by_a_killed_process_is_released(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The lock is the OS's: while another process holds the folder a second command exits 2
    naming it; after kill -9 of the holder the folder is free at once (no stale lock)."""
    out = tmp_path / "s"
    code = (
        "import sys, time\nfrom nas.app.lock import folder_lock\n"
        f"with folder_lock({str(out)!r}, ['nas', 'search']):\n"
        "    print('held', flush=True)\n    time.sleep(600)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        argv = ["search", "--objectives", "macs,params", "--trials", "2", "--out", str(out)]
        assert run_cli(argv) == 2
        err = capsys.readouterr().err
        assert str(holder.pid) in err and str(out) in err and TRACEBACK not in err
        holder.kill()
        holder.wait(timeout=60)
        assert run_cli(["-q", *argv]) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
