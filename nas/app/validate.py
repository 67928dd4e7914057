"""Every input checked before any work: a run config and the command line's names, numbers and
paths, against the registries (spaces, data sets, devices and their dtypes, latency models,
metrics and budgets, samplers, predictors, schedules, compression steps). Each problem is
listed with its key, the bad value and the valid choices, all in one error.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from nas.app.errors import InputError
from nas.core.registry import UnknownNameError

__all__ = [
    "Problems",
    "check_data",
    "check_device",
    "check_input_file",
    "check_metrics",
    "check_out_folder",
    "check_sampler",
    "check_space",
    "check_storage",
    "choices_text",
    "int_at_least",
    "parse_budgets",
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


def choices_text(value: object, valid: Iterable[str]) -> str:
    """`value` is not one of `valid`, with the close matches."""
    valid = list(valid)
    close = difflib.get_close_matches(str(value), valid, n=2, cutoff=0.5)
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    return f"{value!r} is not one of {', '.join(valid)}{hint}"


def int_at_least(p: Problems, key: str, value: object, low: int, why: str = "") -> None:
    """Record a whole number below `low` (other types are the schema's to report)."""
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
    from nas.data import (
        DATASET_NAMES,
        load_cifar,
        load_embedded_digits,
        load_image_folder,
        load_streamed_folder,
    )

    if not isinstance(name, str):
        return
    loaders: list[Callable[..., Any]] = []
    if name in DATASET_NAMES:
        loader: Callable[..., Any] = load_embedded_digits
    else:
        path = Path(name).expanduser()
        if not path.exists():
            close = difflib.get_close_matches(name, DATASET_NAMES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            p.add(
                key,
                f"{name!r} is neither a data set name ({', '.join(DATASET_NAMES)}{hint}) "
                "nor an existing folder (ImageFolder or CIFAR layout)",
            )
            return
        if not path.is_dir():
            p.add(key, f"{name!r} is a file; a data set is a folder (ImageFolder or CIFAR layout)")
            return
        loader = load_cifar if _looks_like_cifar(path) else load_image_folder
        # `load_dataset` takes `stream` for a path, and streams a folder with these arguments
        loaders = [load_streamed_folder] if loader is load_image_folder else []
    if isinstance(args, dict) and args:
        params = [n for n in inspect.signature(loader).parameters if n != "path"]
        for other in loaders:
            params += [n for n in inspect.signature(other).parameters if n not in params]
        params += [] if name in DATASET_NAMES else ["stream"]
        params = [n for n in params if n != "path"]
        unknown = sorted(set(map(str, args)) - set(params))
        if unknown:
            p.add(
                args_key or key,
                f"unknown argument(s) {unknown} of {loader.__name__}; valid: {', '.join(params)}",
            )


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
        of_kinds = [
            n for n in lm.DEVICES.list() if getattr(lm.DEVICES.factory(n), "kind", "") in kinds
        ]
        p.add(
            key,
            f"{name!r} is a {kind} device; this takes {' or '.join(kinds)} devices: "
            f"{', '.join(of_kinds)}",
        )
        return None
    if kind == "table":
        return None  # built with its table later
    device = lm.get_device(name)
    if isinstance(dtype, str) and dtype not in device.dtypes:
        p.add(
            dtype_key or key,
            f"device {name!r} does not run {dtype!r}; it runs {', '.join(device.dtypes)}",
        )
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
    extra, bad = _train_memory_metrics(p, space, objectives, budgets)
    problem = p.check(
        "",
        lambda: SearchProblem(
            space, ["params"], (lambda a: 0.0) if accuracy else None, models, metrics=extra
        ),
    )
    if problem is None:
        return
    if objectives is not None:
        names = [n for n in objectives[1] if n not in bad]
        _check_objectives(p, problem, (objectives[0], names), bool(models), accuracy)
    for key, metric, bound in budgets:
        if not isinstance(metric, str) or metric in bad:
            continue
        resolved = _resolve(p, key, problem, metric)
        if resolved is not None and isinstance(bound, (int, float)):
            _check_bound(p, key, metric, resolved, float(bound))


def _train_memory_metrics(
    p: Problems,
    space: Any,
    objectives: tuple[str, Sequence[object]] | None,
    budgets: Sequence[tuple[str, object, object]],
) -> tuple[list[Any], set[str]]:
    """The `train_memory_bytes@...` metrics named (`nas.app.train_memory`), and the bad names
    (each a problem under its key, with the valid modes)."""
    from nas.app.train_memory import TRAIN_MEMORY_PREFIX, train_memory_metric

    named = [(objectives[0], n) for n in objectives[1]] if objectives is not None else []
    named += [(key, metric) for key, metric, _ in budgets]
    out: dict[str, Any] = {}
    bad: set[str] = set()
    for key, name in named:
        if isinstance(name, str) and name.startswith(TRAIN_MEMORY_PREFIX):
            if name in out or name in bad:
                continue
            metric = p.check(key, partial(train_memory_metric, space, name))
            if metric is None:
                bad.add(name)
            else:
                out[name] = metric
    return list(out.values()), bad


def _resolve(p: Problems, key: str, problem: Any, name: str) -> str | None:
    """The canonical metric `name` stands for; a latency metric of an unknown device names the
    devices there are."""
    if name.startswith("latency_ms@") and name not in problem.metrics:
        latency = [m for m in problem.metrics if m.startswith("latency_ms@")]
        if not latency:
            p.add(key, f"{name!r} names a device, but there is none to price latency on")
        else:
            p.add(
                key,
                f"{name!r} names no device priced here; {choices_text(name, latency)}".replace(
                    f"; {name!r} is not", "; it is not"
                ),
            )
        return None
    return p.check(key, lambda: problem.resolve(name))


def _check_objectives(
    p: Problems,
    problem: Any,
    objectives: tuple[str, Sequence[object]],
    devices: bool,
    accuracy: bool,
) -> None:
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
    from nas.search import parse_constraint

    out = []
    for text in texts:
        parsed = p.check(key, partial(parse_constraint, text))
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
        p.add(
            key,
            f"{storage!r} is neither a database URL (sqlite:///run/study.db, "
            f"postgresql://user@host/db) nor a file ending in {', '.join(suffixes)}",
        )
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


# -- metric names and samplers ------------------------------------------------------------
def run_metric(name: str, devices: Sequence[tuple[str, str]]) -> str:
    """A run config's metric name as the search knows it: `latency_ms@DEVICE` of a device the
    run prices in one dtype other than fp32 is `latency_ms@DEVICE:DTYPE`."""
    prefix = "latency_ms@"
    if isinstance(name, str) and name.startswith(prefix) and ":" not in name:
        dtypes = [d for n, d in devices if n == name[len(prefix) :]]
        if len(dtypes) == 1 and dtypes[0] not in ("fp32", ""):
            return f"{name}:{dtypes[0]}"
    return name


def check_sampler(p: Problems, key: str, name: object) -> None:
    """A sampler name of `nas.search.SAMPLERS` (or an alias)."""
    from nas.search import make_sampler

    if not isinstance(name, str):
        return
    try:
        make_sampler(name, None, 0)
    except ValueError as err:
        if str(err).startswith("unknown sampler"):
            p.add(key, str(err))
        # else a known sampler that needs the search problem (frontier): valid
