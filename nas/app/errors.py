"""The command line's error contract: bad input exits 2 with a few lines and no traceback, a
stage that fails on valid input exits 1 with its traceback in a log file, an interrupt exits
130; `--debug` (or EDGE_NAS_DEBUG=1) prints every traceback too."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nas.core.files import FileProblem

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "FileProblem",
    "InputError",
    "StageFailed",
    "debug_enabled",
    "input_error_types",
    "run_command",
    "stage_work",
]

log = logging.getLogger("nas")

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class InputError(Exception):
    """Bad input (a name, a number, a path, a file's contents): exit 2 with this message."""


class StageFailed(Exception):
    """A stage failed on valid input: exit 1; the traceback is in `log_path`."""

    def __init__(self, stage: str, cause: BaseException, log_path: Path | None) -> None:
        self.stage = stage
        self.cause = cause
        self.log_path = log_path
        where = f"; the traceback is in {log_path}" if log_path else ""
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        super().__init__(f"{stage} failed: {type(cause).__name__}: {first}{where}")


def input_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input wherever they are raised: our own, a name no registry
    holds, a missing or unreadable path, and the files that check themselves (`FileProblem`:
    a missing, corrupt, cut or foreign file; checkpoints, LUTs, unsafe pickles, configs)."""
    from latency_models import DeviceError, LUTError
    from latency_models.runtimes import RuntimeUnavailableError
    from nas.core.files import CheckpointError
    from nas.core.registry import UnknownNameError
    from nas.data import UnsafePickleError

    return (
        InputError,
        FileProblem,
        UnknownNameError,
        CheckpointError,
        LUTError,
        DeviceError,
        RuntimeUnavailableError,  # a missing optional extra: the message names it
        UnsafePickleError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
    )


def _bad_input() -> tuple[type[BaseException], ...]:
    return (ValueError, KeyError, *input_error_types())


def debug_enabled(flag: bool = False) -> bool:
    return flag or os.environ.get("EDGE_NAS_DEBUG", "").lower() in ("1", "true", "yes")


def _write_log(folder: Path | None, stage: str, err: BaseException) -> Path | None:
    """The traceback of `err` in `folder/logs/` (a temporary folder when there is none or it
    cannot be written); None when no file can be written at all."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    for base in ([folder / "logs"] if folder is not None else []) + [Path(tempfile.gettempdir())]:
        try:
            base.mkdir(parents=True, exist_ok=True)
            path = base / f"nas-error-{stamp}-{stage}-{os.getpid()}.log"
            path.write_text(f"nas {' '.join(sys.argv[1:])}\n{text}")
            return path
        except OSError:
            continue
    return None


@contextmanager
def stage_work(stage: str, folder: str | os.PathLike[str] | None = None) -> Iterator[None]:
    """Run a stage's work: bad input (`input_error_types`) passes through (exit 2); anything
    else becomes `StageFailed` with its traceback written under `folder/logs/` (exit 1)."""
    try:
        yield
    except (KeyboardInterrupt, StageFailed):
        raise
    except input_error_types():
        raise
    except Exception as err:
        path = _write_log(Path(folder) if folder is not None else None, stage, err)
        raise StageFailed(stage, err, path) from err


def _say(message: str) -> None:
    lines = [line for line in str(message).splitlines() if line.strip()] or ["(no message)"]
    print(f"nas: error: {lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(f"  {line.strip()}", file=sys.stderr)


@contextmanager
def _quiet_after_interrupt(debug: bool) -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt as usual, and from then on the libraries' own reports of
    what it tore down (Optuna's "trial failed" with its traceback, SQLAlchemy's cursor it could
    not close) are silenced: they are consequences of the interrupt, and the one line
    `run_command` prints says what to do. With --debug every report is kept."""
    if debug or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupted(signum: int, frame: Any) -> None:
        logging.disable(logging.ERROR)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        logging.disable(logging.NOTSET)


def run_command(func: Callable[[Any], int], args: Any, debug: bool = False) -> int:
    """Call a command and map what it raises onto the exit codes (module docstring)."""
    try:
        with _quiet_after_interrupt(debug):
            return int(func(args))
    except KeyboardInterrupt:
        print("nas: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except StageFailed as err:
        if debug:
            traceback.print_exception(type(err.cause), err.cause, err.cause.__traceback__)
        _say(str(err))
        return EXIT_FAILED
    except _bad_input() as err:
        # outside a stage's work, a ValueError or KeyError is an argument the command refused
        if debug:
            traceback.print_exc()
        _say(str(err))
        return EXIT_BAD_INPUT
    except Exception as err:
        path = _write_log(None, "command", err)
        if debug:
            traceback.print_exc()
        where = f"; the traceback is in {path}" if path else ""
        _say(f"{type(err).__name__}: {err}{where}")
        return EXIT_FAILED
