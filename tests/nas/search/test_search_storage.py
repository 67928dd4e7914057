"""Scale-out and resume: two worker processes on one study (PostgreSQL, journal file), and a
search killed mid-evaluation that resumes without duplicates or lost trials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from nas import search
from tests.nas.search.search_toy import FakeLatency, ToySpace, toy_accuracy

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_PG_URL = (
    "postgresql://edge_nas:edge_nas@localhost:5432/edge_nas_test"  # scripts/postgres.sh
)


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The test PostgreSQL (EDGE_NAS_TEST_PG_URL, default: what scripts/postgres.sh creates);
    skipped when unreachable, but a failure under CI=true."""
    url = os.environ.get("EDGE_NAS_TEST_PG_URL", DEFAULT_PG_URL)
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as err:  # no driver, no server, wrong password: all mean "no database"
        message = f"no PostgreSQL at {url} ({type(err).__name__}: {err}); run scripts/postgres.sh"
        if _ci():
            pytest.fail(message + "; CI=true, so a missing server is a failure")
        pytest.skip(message)
    yield url


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.nas.search.search_toy", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _two_workers(storage: str, tmp_path: Path, sampler: str) -> None:
    study_name = f"workers-{uuid.uuid4().hex[:8]}"
    space, lat = ToySpace(), FakeLatency()
    n = 30
    search.create_search(
        space,
        ["accuracy", lat],
        accuracy=toy_accuracy,
        sampler=sampler,
        n_evaluations=n,
        storage=storage,
        study_name=study_name,
    )
    logs = [tmp_path / f"w{i}.jsonl" for i in range(2)]
    procs = [
        _spawn("worker", "--storage", storage, "--study", study_name, "--log", str(log),
               "--sampler", sampler, "--seed", str(i), "--ready", str(tmp_path / "ready"),
               "--expect", "2", "--eval-s", "0.02")
        for i, log in enumerate(logs)
    ]  # fmt: skip
    for p in procs:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out.decode()[-3000:]
    study = optuna.load_study(study_name=study_name, storage=search.open_storage(storage))
    try:
        trials = study.get_trials(deepcopy=False)
        by_worker = [{r["trial"] for r in _records(log) if "trial" in r} for log in logs]
        assert all(by_worker), "both workers ran trials"
        assert not by_worker[0] & by_worker[1], "a trial was run by both workers"
        assert by_worker[0] | by_worker[1] == {t.number for t in trials}, "a trial was lost"
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        assert sorted(t.number for t in trials) == list(range(len(trials)))
        paid = [r["paid"] for log in logs for r in _records(log) if "paid" in r]
        evaluated = [t.user_attrs["arch_key"] for t in trials if t.user_attrs["evaluated"]]
        assert sorted(paid) == sorted(evaluated), "every paid evaluation is recorded once"
        # both workers stop once the study holds the budget (each may finish one in flight)
        assert n <= search.count_evaluations(study) <= n + 2
    finally:
        optuna.delete_study(study_name=study_name, storage=search.open_storage(storage))


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study(pg_url: str, tmp_path: Path) -> None:
    _two_workers(pg_url, tmp_path, "random")


@pytest.mark.slow
def test_two_workers_share_a_journal_file_study(tmp_path: Path) -> None:
    _two_workers(str(tmp_path / "study.journal"), tmp_path, "frontier")


@pytest.mark.slow
def test_killed_search_resumes_without_duplicates_or_lost_trials(tmp_path: Path) -> None:
    storage = search.sqlite_url(tmp_path / "study.db")
    log = tmp_path / "run.jsonl"
    k, n = 6, 16
    args = ["--storage", storage, "--log", str(log), "--n", str(n), "--heartbeat", "1"]
    first = _spawn("search", *args, "--sampler", "frontier", "--kill-after", str(k))
    first.communicate(timeout=180)
    assert first.returncode == -9, "the first run was killed during evaluation k+1"
    study = optuna.load_study(study_name="search", storage=storage)
    before = {
        t.number: t.values for t in study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    }
    assert len(before) == k
    assert len(study.get_trials(states=[optuna.trial.TrialState.RUNNING])) == 1
    time.sleep(4.0)  # past the 2 s grace period (SQLite times are whole seconds): stale
    second = _spawn("search", *args, "--sampler", "frontier")
    out, _ = second.communicate(timeout=180)
    assert second.returncode == 0, out.decode()[-3000:]
    study = optuna.load_study(study_name="search", storage=storage)
    complete = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert {t.number: t.values for t in complete if t.number in before} == before, "lost trials"
    keys = [t.user_attrs["canonical_key"] for t in complete if t.user_attrs["evaluated"]]
    assert len(keys) == len(set(keys)) == n, "no arch paid twice; budget reached"
    assert [t.state for t in study.get_trials() if t.number == k] == [optuna.trial.TrialState.FAIL]
    paid = [r["paid"] for r in _records(log) if "paid" in r]
    assert len(paid) == len(set(paid)) == n
