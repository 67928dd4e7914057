"""A predictor file that is empty, cut, of another kind, a folder or missing fails with a
FileProblem naming it and saying to fit the predictor again, never a numpy or zipfile
traceback, and never by unpickling (issue 18 item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nas import predictors as P
from nas.core.files import FileProblem
from nas.predictors.base import FORMAT_VERSION

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
PICKLE = b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01."


def _saved(tmp_path: Path) -> Path:
    x = np.random.default_rng(0).normal(size=(20, 4))
    return P.RidgePredictor(alpha=1.0).fit(x, x.sum(axis=1)).save(tmp_path / "ridge.npz")


def _fails(path: Path, problem: str) -> None:
    with pytest.raises(FileProblem) as err:
        P.load_predictor(path)
    assert err.value.path.name == path.name and problem in err.value.problem, str(err.value)
    assert str(err.value).startswith(f"{err.value.path}: ")
    assert "fit the predictor again" in err.value.remedy


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (PNG, "not an .npz archive"),
        (PICKLE, "not an .npz archive"),
        (b'{"kind": "ridge"}', "not an .npz archive"),
        ("cut", "not an .npz archive"),
        ("folder", "is a folder"),
        ("missing", "is missing"),
    ],
)
def test_a_bad_predictor_file_is_named(tmp_path: Path, content: bytes | str, problem: str) -> None:
    path = tmp_path / "p.npz"
    if content == "cut":
        data = _saved(tmp_path).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    _fails(path, problem)


def test_a_single_array_or_a_foreign_header_is_named(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(3))
    (tmp_path / "a.npy").rename(tmp_path / "a.npz")
    _fails(tmp_path / "a.npz", "a single .npy array")
    np.savez(tmp_path / "b.npz", __header__=np.array("{not json"))
    _fails(tmp_path / "b.npz", "is damaged")
    np.savez(tmp_path / "c.npz", __header__=np.array(json.dumps({"version": 99})))
    _fails(tmp_path / "c.npz", "format version 99")
    header = {"version": FORMAT_VERSION, "kind": "forest", "config": {}}
    np.savez(tmp_path / "d.npz", __header__=np.array(json.dumps(header)))
    _fails(tmp_path / "d.npz", "unknown predictor kind 'forest'")
    np.savez(tmp_path / "e.npz", __header__=np.array(json.dumps({**header, "kind": "ridge"})))
    _fails(tmp_path / "e.npz", "is an incomplete ridge predictor")
