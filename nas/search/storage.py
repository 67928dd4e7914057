"""Optuna storages for a search: SQLite in a run folder, a journal file for several processes on
one machine, or any database URL Optuna supports (PostgreSQL for many machines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

__all__ = ["JOURNAL_SUFFIXES", "fail_running_trials", "open_storage", "sqlite_url"]


def sqlite_url(path: str | Path) -> str:
    """Optuna storage URL of an SQLite file (created on first use)."""
    return f"sqlite:///{Path(path).resolve()}"


JOURNAL_SUFFIXES = (".journal", ".log", ".jsonl")


def open_storage(
    storage: str | Path | BaseStorage | None,
    heartbeat_interval_s: int | None = None,
    grace_period_s: int | None = None,
) -> BaseStorage | None:
    """An Optuna storage from a URL, a file path, a storage object, or None (in memory).

    - `sqlite:///...`, `postgresql://...`, `mysql://...`: a database (RDB storage). With a
      heartbeat, trials of a worker that died are failed after `grace_period_s`.
    - a path ending in `.db` / `.sqlite`: SQLite in that file (one process at a time).
    - a path ending in `.journal` / `.log` / `.jsonl`: Optuna's journal file storage (several
      processes on one machine, file locks; no heartbeat).
    """
    if storage is None or isinstance(storage, BaseStorage):
        return storage
    text = str(storage)
    if "://" in text:
        if grace_period_s is not None and heartbeat_interval_s is None:
            raise ValueError("grace_period_s needs heartbeat_interval_s")
        engine_kwargs: dict[str, Any] = {}
        if text.startswith("sqlite"):
            engine_kwargs["connect_args"] = {"timeout": 60}
        else:
            engine_kwargs["pool_pre_ping"] = True
        return optuna.storages.RDBStorage(
            text,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval_s,
            grace_period=grace_period_s,
        )
    path = Path(text)
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        path.parent.mkdir(parents=True, exist_ok=True)
        return open_storage(sqlite_url(path), heartbeat_interval_s, grace_period_s)
    if path.suffix in JOURNAL_SUFFIXES:
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
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
