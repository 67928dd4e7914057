"""A study file that is damaged, of another kind, a folder or missing gives a FileProblem that
names it and says what to do, never an SQLAlchemy or JSON traceback (issue 18 item 5)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage

from nas import search
from nas.core.files import FileProblem
from tests.nas.search.search_toy import ToySpace

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))


def _sqlite_study(path: Path) -> bytes:
    study = optuna.create_study(storage=search.sqlite_url(path), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    return path.read_bytes()


def _assert_names(err: pytest.ExceptionInfo[FileProblem], path: Path, problem: str) -> None:
    assert err.value.path.name == path.name
    assert problem in err.value.problem
    assert str(path.name) in str(err.value) and (
        "delete" in str(err.value) or "name" in str(err.value)
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (PNG, "is not an SQLite database"),
        (b'{"trials": []}', "is not an SQLite database"),
        (b"arch,latency\n", "is not an SQLite database"),
        ("truncated", "is a damaged SQLite study"),
    ],
)
def test_a_foreign_or_cut_sqlite_study_is_named(
    tmp_path: Path, content: object, problem: str
) -> None:
    path = tmp_path / "study.db"
    if content == "truncated":
        data = _sqlite_study(tmp_path / "good.db")
        path.write_bytes(data[: len(data) // 3])
    else:
        assert isinstance(content, bytes)
        path.write_bytes(content)
    for storage in (path, search.sqlite_url(path)):  # a path and the URL the CLI passes
        with pytest.raises(FileProblem) as err:
            search.open_storage(storage)
        _assert_names(err, path, problem)


def test_a_study_path_that_is_a_folder_is_named(tmp_path: Path) -> None:
    for name in ("study.db", "study.journal"):
        (tmp_path / name).mkdir()
        with pytest.raises(FileProblem) as err:
            search.open_storage(tmp_path / name)
        _assert_names(err, tmp_path / name, "is a folder")


@pytest.mark.parametrize("content", [PNG, b"not json\n", b'{"op_code": \n{"op_code": 1}\n'])
def test_a_foreign_journal_is_named(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "study.journal"
    path.write_bytes(content)
    with pytest.raises(FileProblem) as err:
        search.open_storage(path)
    _assert_names(err, path, "is not an Optuna journal")


def test_empty_files_are_new_studies_and_a_cut_journal_line_is_left_out(tmp_path: Path) -> None:
    (tmp_path / "empty.db").write_bytes(b"")
    (tmp_path / "empty.journal").write_bytes(b"")
    assert search.open_storage(tmp_path / "empty.db") is not None
    assert search.open_storage(tmp_path / "empty.journal") is not None
    path = tmp_path / "study.journal"
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(path))))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    path.write_bytes(path.read_bytes()[:-5])  # a kill mid-write
    assert search.open_storage(path) is not None


def test_a_worker_names_a_missing_study_file_and_creates_none(tmp_path: Path) -> None:
    for name in ("study.db", "study.journal"):
        path = tmp_path / name
        with pytest.raises(FileProblem) as err:
            search.join_worker(ToySpace(), path)
        _assert_names(err, path, "is missing")
        assert not path.exists()
