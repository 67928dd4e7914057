"""What every accuracy predictor shares: the protocols, input checks, target scaling and the
`.npz` file format (plain arrays and a JSON header, loaded without pickle)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from nas.core.files import FileProblem, check_file
from nas.core.protocols import NotFittedError
from nas.core.space import Arch

__all__ = ["FORMAT_VERSION", "AccuracyFn", "Predictor", "UncertainPredictor", "one_blas_thread"]

FORMAT_VERSION = 1

#: An accuracy source: any callable from an arch to its accuracy (%, higher is better): a
#: supernet with inherited weights, a table look-up, a user's training run.
AccuracyFn = Callable[[Arch], float]


@runtime_checkable
class Predictor(Protocol):
    """What every accuracy predictor offers."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> Predictor: ...

    def predict(self, X: np.ndarray) -> np.ndarray: ...

    def save(self, path: str | Path) -> Path: ...


@runtime_checkable
class UncertainPredictor(Predictor, Protocol):
    """A predictor that also says how unsure it is (one standard deviation per row)."""

    def predict_with_std(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def _check_xy(X: np.ndarray, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.asarray(X, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"X must be a 2-D matrix (rows = archs), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("X holds NaN or infinite values; encode archs with ArchFeatures")
    if y is None:
        return x, None
    t = np.asarray(y, dtype=np.float64).ravel()
    if t.shape[0] != x.shape[0]:
        raise ValueError(f"X has {x.shape[0]} rows but y has {t.shape[0]} values")
    if t.shape[0] < 2:
        raise ValueError(f"a predictor needs at least 2 (arch, accuracy) pairs, got {t.shape[0]}")
    if not np.isfinite(t).all():
        raise ValueError("y holds NaN or infinite accuracies")
    return x, t


def one_blas_thread() -> Any:
    """Context: BLAS on one thread. The matrices here are small (hundreds of rows), where
    threads cost more than they give, and much more on a shared 2-core box."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        import contextlib

        return contextlib.nullcontext()


def _need_fit(fitted: bool, obj: object) -> None:
    if not fitted:
        raise NotFittedError(f"{type(obj).__name__} is not fitted yet: call fit(X, y) first")


def _save_npz(path: str | Path, kind: str, config: Mapping[str, Any], arrays: dict) -> Path:
    p = Path(path)
    if p.suffix != ".npz":
        p = p.with_suffix(p.suffix + ".npz") if p.suffix else p.with_suffix(".npz")
    p.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"kind": kind, "version": FORMAT_VERSION, "config": dict(config)})
    payload: dict[str, Any] = {k: np.asarray(v) for k, v in arrays.items()}
    payload["__header__"] = np.array(header)
    np.savez(p, **payload)
    return p


_REFIT = "delete it to fit the predictor again (a run redoes its predictor stage), or name another"
_WHAT = "a saved predictor (.npz)"


def _load_npz(path: str | Path) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    """The kind, config and arrays of a saved predictor; FileProblem naming the file when it is
    missing, empty, a folder, cut short or not one (numpy never unpickles here)."""
    path = check_file(path, _WHAT, _REFIT)
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as err:  # zipfile.BadZipFile, EOFError, "contains pickled data", ...
        raise _foreign(path, f"not an .npz archive: {err}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise _foreign(path, "a single .npy array, not an .npz archive")
    try:
        with loaded as data:
            if "__header__" not in data:
                raise _foreign(path, "no __header__ entry")
            header = json.loads(str(data["__header__"]))
            arrays = {k: data[k] for k in data.files if k != "__header__"}
    except FileProblem:
        raise
    except Exception as err:  # a cut member, a header that is not JSON
        raise FileProblem(path, f"is damaged ({type(err).__name__}: {err})", _REFIT) from None
    if not isinstance(header, dict) or header.get("version") != FORMAT_VERSION:
        got = header.get("version") if isinstance(header, dict) else header
        raise FileProblem(
            path, f"has predictor format version {got!r}; this code reads {FORMAT_VERSION}", _REFIT
        )
    if not isinstance(header.get("config"), dict) or "kind" not in header:
        raise _foreign(path, "its header lacks the kind or config")
    return str(header["kind"]), dict(header["config"]), arrays


def _foreign(path: Path, why: str) -> FileProblem:
    return FileProblem(path, f"is not a saved predictor ({why})", _REFIT)


class _Scaler:
    """Standardises targets; predictors learn on z-scores and answer in the target's unit."""

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        self.mean, self.std = mean, std

    @classmethod
    def fit(cls, y: np.ndarray) -> _Scaler:
        std = float(np.std(y))
        return cls(float(np.mean(y)), std if std > 1e-12 else 1.0)
