"""Every input checked before any work: a run config and the command line's names, numbers and
paths, against the registries (spaces, data sets, devices and their dtypes, latency models,
metrics and budgets, samplers, predictors, schedules, compression steps). Each problem is
listed with its key, the bad value and the valid choices, all in one error.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.app.errors import InputError
from nas.core.registry import UnknownNameError

__all__ = [
    "Problems",
    "check_data",
    "check_device",
    "check_metrics",
    "check_out_folder",
    "check_input_file",
    "check_space",
    "check_storage",
    "run_config_problems",
    "run_metric",
]

#: the free metrics a search prices, beside accuracy and latency (`nas.search` resolves them)
COST_METRICS = ("macs", "params", "peak_activation_bytes", "size_bytes")


class Problems:
    """Problems found so far, each `key: what is wrong`; `raise_if_any` makes one error."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, key: str, message: str) -> None:
        message = str(message).strip()
        self.items.append(f"{key}: {message}" if key else message)

    def check(self, key: str, fn: Callable[[], Any]) -> Any:
        """`fn()`, or None with its error recorded under `key`."""
        try:
            return fn()
        except (ValueError, TypeError, KeyError, OSError) as err:
            self.add(key, str(err) if not isinstance(err, KeyError) or str(err) else repr(err))
            return None

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, what: str = "invalid input", cls: type[Exception] = InputError) -> None:
        if self.items:
            raise cls(f"{what}:\n  " + "\n  ".join(self.items))


def _choices(value: object, valid: Iterable[str]) -> str:
    valid = list(valid)
    close = difflib.get_close_matches(str(value), valid, n=2, cutoff=0.5)
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    return f"{value!r} is not one of {', '.join(valid)}{hint}"


def _int_at_least(p: Problems, key: str, value: object, low: int, why: str = "") -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value < low:
        p.add(key, f"expected >= {low}, got {value}{why}")


# -- names ------------------------------------------------------------------------------------
def check_space(
    p: Problems, key: str, name: object, args: object = None, args_key: str = ""
) -> Any:
    """The space `name` built with `args`, or None with the problem recorded."""
    import search_spaces

    if not isinstance(name, str):
        return None
    if name not in search_spaces.SPACES:
        p.add(key, str(UnknownNameError(search_spaces.SPACES._unknown(name))))
        return None
    kwargs = args if isinstance(args, dict) else {}
    try:
        return search_spaces.get_space(name, **kwargs)
    except (TypeError, ValueError) as err:
        params = inspect.signature(search_spaces.SPACES.factory(name)).parameters
        p.add(args_key or key, f"{err} (space {name!r} takes {', '.join(params)})")
        return None


def check_data(
    p: Problems, key: str, name: object, args: object = None, args_key: str = ""
) -> None:
    """A data set name (`nas.data.DATASET_NAMES`) or an existing folder, and its loader's
    arguments."""
    from nas.data import DATASET_NAMES, load_cifar, load_embedded_digits, load_image_folder

    if not isinstance(name, str):
        return
    if name in DATASET_NAMES:
        loader: Callable[..., Any] = load_embedded_digits
    else:
        path = Path(name).expanduser()
        if not path.exists():
            close = difflib.get_close_matches(name, DATASET_NAMES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            p.add(key, f"{name!r} is neither a data set name ({', '.join(DATASET_NAMES)}{hint}) "
                  "nor an existing folder (ImageFolder or CIFAR layout)")  # fmt: skip
            return
        if not path.is_dir():
            p.add(key, f"{name!r} is a file; a data set is a folder (ImageFolder or CIFAR layout)")
            return
        loader = load_cifar if _looks_like_cifar(path) else load_image_folder
    if isinstance(args, dict) and args:
        params = [n for n in inspect.signature(loader).parameters if n != "path"]
        unknown = sorted(set(map(str, args)) - set(params))
        if unknown:
            p.add(args_key or key,
                  f"unknown argument(s) {unknown} of {loader.__name__}; valid: {', '.join(params)}")  # fmt: skip


def _looks_like_cifar(path: Path) -> bool:
    names = {c.name for c in path.iterdir()} | {path.name}
    return any("cifar" in n for n in names)


def check_device(
    p: Problems,
    key: str,
    name: object,
    *,
    kinds: Sequence[str] = ("real", "emulated"),
    dtype: object = None,
    dtype_key: str = "",
) -> Any:
    """The registered device `name` (one of `kinds`), its `dtype` checked; None on a problem."""
    import latency_models as lm

    if not isinstance(name, str):
        return None
    if name not in lm.DEVICES:
        p.add(key, str(UnknownNameError(lm.DEVICES._unknown(name))))
        return None
    kind = getattr(lm.DEVICES.factory(name), "kind", "")
    if kind not in kinds:
        of_kinds = [n for n in lm.DEVICES.list() if getattr(lm.DEVICES.factory(n), "kind", "") in kinds]
        p.add(key, f"{name!r} is a {kind} device; this takes {' or '.join(kinds)} devices: "
              f"{', '.join(of_kinds)}")  # fmt: skip
        return None
    if kind == "table":
        return None  # built with its table later
    device = lm.get_device(name)
    if isinstance(dtype, str) and dtype not in device.dtypes:
        p.add(dtype_key or key, f"device {name!r} does not run {dtype!r}; it runs "
              f"{', '.join(device.dtypes)}")  # fmt: skip
        return None
    return device


# -- metrics and budgets ----------------------------------------------------------------------
@dataclass
class _Named:
    """A stand-in latency model: only its name counts when checking metric names."""

    device: str
    dtype: str

    def predict_arch(self, space: Any, arch: Any) -> float:  # pragma: no cover
        raise NotImplementedError

    def predict_many(self, space: Any, archs: Any) -> Any:  # pragma: no cover
        raise NotImplementedError


_NO_SPACE: Any = object()


def check_metrics(
    p: Problems,
    space: Any,
    devices: Sequence[tuple[str, str]],
    objectives: tuple[str, Sequence[object]] | None,
    budgets: Sequence[tuple[str, object, object]] = (),
    *,
    accuracy: bool = True,
) -> None:
    """Objective names (`latency` stands for every device) and budgets `(key, metric, bound)`,
    resolved as the search resolves them, for latency models of `devices` (name, dtype)."""
    from nas.search import SearchProblem

    if space is None:  # already reported; metric names do not depend on the space
        space = _NO_SPACE
    models = [_Named(name, dtype) for name, dtype in devices]
    problem = p.check("", lambda: SearchProblem(
        space, ["params"], (lambda a: 0.0) if accuracy else None, models))  # fmt: skip
    if problem is None:
        return
    if objectives is not None:
        _check_objectives(p, problem, objectives, bool(models), accuracy)
    for key, metric, bound in budgets:
        if not isinstance(metric, str):
            continue
        resolved = _resolve(p, key, problem, metric)
        if resolved is not None and isinstance(bound, (int, float)):
            _check_bound(p, key, metric, resolved, float(bound))


def _resolve(p: Problems, key: str, problem: Any, name: str) -> str | None:
    """The canonical metric `name` stands for; a latency metric of an unknown device names the
    devices there are."""
    if name.startswith("latency_ms@") and name not in problem.metrics:
        latency = [m for m in problem.metrics if m.startswith("latency_ms@")]
        if not latency:
            p.add(key, f"{name!r} names a device, but there is none to price latency on")
        else:
            p.add(key, f"{name!r} names no device priced here; {_choices(name, latency)}"
                  .replace(f"; {name!r} is not", "; it is not"))  # fmt: skip
        return None
    return p.check(key, lambda: problem.resolve(name))


def _check_objectives(
    p: Problems, problem: Any, objectives: tuple[str, Sequence[object]], devices: bool,
    accuracy: bool,
) -> None:  # fmt: skip
    key, names = objectives
    if not names:
        p.add(key, "at least one objective is needed")
    seen: list[str | None] = []
    for name in names:
        if not isinstance(name, str):
            continue
        if name == "latency":
            if not devices:
                p.add(key, "'latency' needs at least one device")
            continue
        if name in ("accuracy", "acc") and not accuracy:
            p.add(key, f"{name!r} needs a trained supernet: search on accuracy with `nas run`")
            continue
        resolved = _resolve(p, key, problem, name)
        if resolved is not None and resolved in seen:
            p.add(key, f"{name!r} repeats the metric {resolved!r}")
        seen.append(resolved)


def _check_bound(p: Problems, key: str, metric: str, resolved: str, bound: float) -> None:
    if resolved == "accuracy":
        if not 0 < bound <= 100:
            p.add(key, f"an accuracy budget is a percentage in (0, 100], got {bound:g}")
    elif bound <= 0:
        p.add(key, f"a budget on {resolved} must be > 0, got {bound:g}")


def parse_budgets(p: Problems, key: str, texts: Sequence[str]) -> list[tuple[str, str, float]]:
    """`METRIC<=BOUND` strings as (key, metric, bound); a malformed one is a problem."""
    from nas.search.constraints import parse_constraint

    out = []
    for text in texts:
        parsed = p.check(key, lambda t=text: parse_constraint(t))
        if parsed is not None:
            out.append((f"{key} {text!r}", parsed[0], parsed[2]))
    return out


# -- paths ------------------------------------------------------------------------------------
def check_storage(p: Problems, key: str, storage: object, *, must_exist: bool = False) -> None:
    """An Optuna storage: a database URL or a `.db`/`.sqlite`/journal file path."""
    from nas.search.storage import JOURNAL_SUFFIXES

    if not isinstance(storage, str) or not storage:
        return
    if "://" in storage:
        if storage.startswith("sqlite:///") and must_exist:
            check_input_file(p, key, storage[len("sqlite:///") :])
        return
    suffixes = (".db", ".sqlite", ".sqlite3", *JOURNAL_SUFFIXES)
    if Path(storage).suffix not in suffixes:
        p.add(key, f"{storage!r} is neither a database URL (sqlite:///run/study.db, "
              f"postgresql://user@host/db) nor a file ending in {', '.join(suffixes)}")  # fmt: skip
    elif must_exist:
        check_input_file(p, key, storage)
    else:
        _check_writable_parent(p, key, Path(storage))


def check_input_file(p: Problems, key: str, path: object, *, folder: bool = False) -> None:
    """An existing file (or folder) to read."""
    if not isinstance(path, (str, os.PathLike)):
        return
    target = Path(path)
    if not target.exists():
        p.add(key, f"{str(path)!r} does not exist")
    elif folder and not target.is_dir():
        p.add(key, f"{str(path)!r} is a file, not a folder")
    elif not folder and target.is_dir():
        p.add(key, f"{str(path)!r} is a folder, not a file")
    elif not os.access(target, os.R_OK):
        p.add(key, f"{str(path)!r} is not readable")


def check_out_folder(p: Problems, key: str, path: object) -> None:
    """A folder to write into: not a file, and creatable and writable."""
    if not isinstance(path, (str, os.PathLike)):
        return
    target = Path(path)
    if target.exists() and not target.is_dir():
        p.add(key, f"{str(path)!r} is a file; give a folder to write into")
    elif target.is_dir() and not os.access(target, os.W_OK | os.X_OK):
        p.add(key, f"{str(path)!r} is not writable")
    elif not target.exists():
        _check_writable_parent(p, key, target)


def _check_writable_parent(p: Problems, key: str, target: Path) -> None:
    parent = target.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        p.add(key, f"{str(target)!r} cannot be created: {parent} is a file")
    elif not os.access(parent, os.W_OK | os.X_OK):
        p.add(key, f"{str(target)!r} cannot be created: {parent} is not writable")


# -- a run config -----------------------------------------------------------------------------
def run_config_problems(config: Any, *, space: Any = None, data_given: bool = False) -> list[str]:
    """Every problem of a `RunConfig` beyond its types: names against the registries, numbers
    against their ranges, budgets and objectives against its devices. `space` (an object) and
    `data_given` stand in for the config's names (a space defined in a notebook)."""
    p = Problems()
    _int_at_least(p, "seed", config.seed, 0)
    if isinstance(config.name, str) and (
        not config.name.strip() or "/" in config.name or config.name in (".", "..")
    ):
        p.add("name", f"{config.name!r} cannot name a study and a folder: use letters, digits, - and _")
    if space is None:
        space = check_space(p, "space.name", config.space.name, config.space.args, "space.args")
    if not data_given:
        check_data(p, "data.name", config.data.name, config.data.args, "data.args")
    _check_supernet(p, config)
    _check_accuracy(p, config.accuracy)
    devices = _check_run_devices(p, config.devices)
    _check_search(p, config.search, space, devices)
    _check_compress(p, config.compress)
    return p.items


def _check_supernet(p: Problems, config: Any) -> None:
    from nas.supernet import make_config

    cfg = config.supernet
    fields = ("schedule", "epochs", "batch_size", "lr", "options")
    values = {f: getattr(cfg, f) for f in fields}
    try:
        make_config(None, **values, seed=config.seed if isinstance(config.seed, int) else 0)
    except (ValueError, TypeError) as err:
        text = str(err).removeprefix("invalid training config: ")
        for part in re.split(r"; (?=\w+ must |unknown |option )", text):
            if part.startswith("seed "):
                continue  # the run's seed: reported as `seed`
            words = part.replace("(", " ").split()
            field = next((f for f in fields if f in words or f"{f}:" in words), None)
            if "schedule" in part and field is None:
                field = "schedule"
            p.add(f"supernet.{field or 'options'}", part)


def _check_accuracy(p: Problems, cfg: Any) -> None:
    from nas.predictors import PREDICTORS

    _int_at_least(p, "accuracy.train_archs", cfg.train_archs, 4,
                  " (two thirds fit the predictor, the rest, at least 2, score its ranking)")  # fmt: skip
    _int_at_least(p, "accuracy.bn_batches", cfg.bn_batches, 1)
    if isinstance(cfg.predictor, str) and cfg.predictor not in PREDICTORS:
        p.add("accuracy.predictor", _choices(cfg.predictor, PREDICTORS))


def _check_run_devices(p: Problems, devices: Any) -> list[tuple[str, str]]:
    """The (name, dtype) of the config's valid devices; problems of the others recorded."""
    import latency_models as lm

    kinds = lm.table_kinds()
    out: list[tuple[str, str]] = []
    for i, dev in enumerate(devices if isinstance(devices, list) else []):
        if not hasattr(dev, "name"):
            continue
        key = f"devices[{i}]"
        device = check_device(p, f"{key}.name", dev.name, dtype=dev.dtype, dtype_key=f"{key}.dtype")
        if isinstance(dev.latency_model, str) and dev.latency_model not in kinds:
            p.add(f"{key}.latency_model", _choices(dev.latency_model, kinds)
                  + " (the registered latency models that sum a table; calibration_archs fit "
                  "their learned form)")  # fmt: skip
        elif dev.latency_model == "kernels" and device is not None and not lm.supports_kernels(device):
            p.add(f"{key}.latency_model", f"'kernels' needs a runtime that names its kernels "
                  f"(ort-cpu-1t, ort-cpu-2t); {dev.name!r} does not: use 'lut'")  # fmt: skip
        _int_at_least(p, f"{key}.lut_archs", dev.lut_archs, 1)
        _int_at_least(p, f"{key}.calibration_archs", dev.calibration_archs, 0)
        _int_at_least(p, f"{key}.lut_passes", dev.lut_passes, 1)
        label = (dev.name, dev.dtype)
        if label in out:
            p.add(key, f"{dev.name} in {dev.dtype} is listed twice")
        elif device is not None:
            out.append(label)
    return out


def _check_search(p: Problems, cfg: Any, space: Any, devices: list[tuple[str, str]]) -> None:
    _int_at_least(p, "search.trials", cfg.trials, 1)
    if isinstance(cfg.sampler, str):
        p.check("search.sampler", lambda: _check_sampler(cfg.sampler))
    check_storage(p, "search.storage", cfg.storage)
    objectives = cfg.objectives if isinstance(cfg.objectives, list) else []
    budgets = cfg.budgets if isinstance(cfg.budgets, dict) else {}
    check_metrics(
        p,
        space,
        devices,
        ("search.objectives", objectives),
        [(f"search.budgets.{m}", run_metric(m, devices), b) for m, b in budgets.items()],
    )


def run_metric(name: str, devices: Sequence[tuple[str, str]]) -> str:
    """A run config's metric name as the search knows it: `latency_ms@DEVICE` of a device the
    run prices in one dtype other than fp32 is `latency_ms@DEVICE:DTYPE`."""
    prefix = "latency_ms@"
    if isinstance(name, str) and name.startswith(prefix) and ":" not in name:
        dtypes = [d for n, d in devices if n == name[len(prefix) :]]
        if len(dtypes) == 1 and dtypes[0] not in ("fp32", ""):
            return f"{name}:{dtypes[0]}"
    return name


def _check_sampler(name: str) -> None:
    from nas.search import make_sampler

    try:
        make_sampler(name, None, 0)
    except ValueError as err:
        if str(err).startswith("unknown sampler"):
            raise
        # a known sampler that needs the search problem (frontier): valid


def _check_compress(p: Problems, compress: Any) -> None:
    """The compression steps and options now, not after the hours of work before them."""
    from nas.compress import ChainConfig, check_steps

    if isinstance(compress.steps, list) and compress.steps:
        p.check("compress.steps", lambda: check_steps(compress.steps))
    if isinstance(compress.options, dict):
        p.check("compress.options", lambda: ChainConfig.from_dict(compress.options))
    if isinstance(compress.top_k, int) and compress.top_k < 0:
        p.add("compress.top_k", f"expected >= 0, got {compress.top_k}")
