"""Optuna storages for a search: SQLite in a run folder, a journal file for several processes on
one machine, or any database URL Optuna supports (PostgreSQL for many machines)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from nas.core.files import FileProblem

log = logging.getLogger(__name__)

__all__ = [
    "JOURNAL_SUFFIXES",
    "fail_running_trials",
    "fail_stopped_trials",
    "open_storage",
    "sqlite_url",
]


def sqlite_url(path: str | Path) -> str:
    """Optuna storage URL of an SQLite file (created on first use)."""
    return f"sqlite:///{Path(path).resolve()}"


JOURNAL_SUFFIXES = (".journal", ".log", ".jsonl")


_SQLITE_MAGIC = b"SQLite format 3\x00"
_REDO = (
    "restore it from a copy, or delete it to start the search afresh (its trials are lost), or "
    "name another storage"
)


def _study_file(text: str) -> tuple[Path, str] | None:
    """The file behind a storage URL or path and its kind, or None for a database server."""
    if text.startswith("sqlite:///"):
        name = text[len("sqlite:///") :].partition("?")[0]
        return (Path(name), "sqlite") if name and name != ":memory:" else None
    if "://" in text:
        return None
    path = Path(text)
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        return path, "sqlite"
    return (path, "journal") if path.suffix in JOURNAL_SUFFIXES else None


def _check_study_file(path: Path, kind: str, must_exist: bool) -> None:
    """A FileProblem for a study file that is a folder, of another format, or missing where
    it must exist; an empty file is a new study, as Optuna treats it."""
    what = "an SQLite study" if kind == "sqlite" else "an Optuna journal"
    if path.is_dir():
        raise FileProblem(path, f"is a folder, not {what}", "name a study file, not a folder")
    if not path.exists():
        if must_exist:
            raise FileProblem(
                path, f"is missing (expected {what})", "name the storage the search created"
            )
        return
    if not path.stat().st_size:
        return
    with path.open("rb") as f:
        head = f.read(len(_SQLITE_MAGIC))
    # a journal is JSON objects, one a line; Optuna skips a last line it cannot parse (a cut
    # write), so a one-line file of another kind would pass as an empty study
    if head[:1] != b"{" if kind == "journal" else head != _SQLITE_MAGIC:
        db = "an SQLite database" if kind == "sqlite" else "an Optuna journal"
        raise FileProblem(
            path, f"is not {db} (it starts {head[:8]!r}): a file of another kind", _REDO
        )
    if kind == "sqlite" and must_exist and not _has_optuna_tables(path):
        # Optuna would write its schema into the user's database before finding no study
        raise FileProblem(
            path,
            "is an SQLite database that holds no Optuna study (no 'studies' table)",
            "name the storage the search created",
        )


def _has_optuna_tables(path: Path) -> bool:
    """Whether an SQLite file has Optuna's tables, read without writing to it."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='studies'"
            ).fetchall()
    except sqlite3.DatabaseError:  # damaged: `_opened` reports it with its cause
        return True
    return bool(rows)


def _opened(path: Path, make: Callable[[], BaseStorage]) -> BaseStorage:
    """`make()`, with a damaged study file reported as a FileProblem naming it."""
    from sqlalchemy.exc import DatabaseError, OperationalError

    try:
        return make()
    except OperationalError:  # "database is locked", "unable to open": the file may be fine
        raise
    except DatabaseError as err:  # sqlite3: "file is not a database", "... is malformed"
        cause = str(err.orig) if err.orig is not None else str(err).splitlines()[0]
        raise FileProblem(path, f"is a damaged SQLite study ({cause})", _REDO) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FileProblem(
            path, f"is not an Optuna journal (a record is not JSON: {err})", _REDO
        ) from None


def open_storage(
    storage: str | Path | BaseStorage | None,
    heartbeat_interval_s: int | None = None,
    grace_period_s: int | None = None,
    *,
    must_exist: bool = False,
) -> BaseStorage | None:
    """An Optuna storage from a URL, a file path, a storage object, or None (in memory).

    - `sqlite:///...`, `postgresql://...`, `mysql://...`: a database (RDB storage). With a
      heartbeat, trials of a worker that died are failed after `grace_period_s`.
    - a path ending in `.db` / `.sqlite`: SQLite in that file (one process at a time).
    - a path ending in `.journal` / `.log` / `.jsonl`: Optuna's journal file storage (several
      processes on one machine, file locks; no heartbeat).

    A study file that is a folder, of another format or damaged raises `FileProblem` naming
    it; so does a missing one with `must_exist` (a worker joins a study, it makes none).
    """
    if storage is None or isinstance(storage, BaseStorage):
        return storage
    text = str(storage)
    found = _study_file(text)
    if found is not None:
        _check_study_file(*found, must_exist)
    if "://" in text:
        if grace_period_s is not None and heartbeat_interval_s is None:
            raise ValueError("grace_period_s needs heartbeat_interval_s")
        engine_kwargs: dict[str, Any] = {}
        if text.startswith("sqlite"):
            engine_kwargs["connect_args"] = {"timeout": 60}
        else:
            engine_kwargs["pool_pre_ping"] = True

        def make() -> BaseStorage:
            return optuna.storages.RDBStorage(
                text,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval_s,
                grace_period=grace_period_s,
            )

        return make() if found is None else _opened(found[0], make)
    path = Path(text)
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        path.parent.mkdir(parents=True, exist_ok=True)
        return open_storage(
            sqlite_url(path), heartbeat_interval_s, grace_period_s, must_exist=must_exist
        )
    if path.suffix in JOURNAL_SUFFIXES:
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return _opened(path, lambda: JournalStorage(JournalFileBackend(str(path))))
    raise ValueError(
        f"storage {text!r} is neither a database URL (sqlite:///run/study.db, "
        "postgresql://user:pw@localhost/db) nor a file path ending in .db/.sqlite (SQLite) or "
        f"{'/'.join(JOURNAL_SUFFIXES)} (journal file)"
    )


def fail_running_trials(study: optuna.Study) -> int:
    """Mark every RUNNING trial FAIL. Only for a study no live worker is using (storages
    without heartbeat, e.g. a journal file, after a crash); returns how many were failed."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=[TrialState.RUNNING]):
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        n += 1
    return n


def fail_stopped_trials(storage: str | Path, study_name: str) -> int:
    """`fail_running_trials` on a study that belongs to one process (a run folder's own
    SQLite study, under the folder's lock): a trial still RUNNING there was cut short by a
    stopped process. Opens the storage through `open_storage`, so a damaged or foreign file is
    a `FileProblem`; a storage without that study fails nothing (returns 0)."""
    opened = open_storage(storage)
    assert opened is not None  # a path or URL always opens a storage
    try:
        study = optuna.load_study(study_name=study_name, storage=opened)
    except KeyError:  # no study of that name yet
        return 0
    n = fail_running_trials(study)
    if n:
        log.info("%s: %d trial(s) of a stopped process marked FAIL", storage, n)
    return n
