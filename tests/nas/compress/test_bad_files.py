"""A compression checkpoint, a step's done.json or a chain's report.json that is empty, cut,
of another kind or a folder fails with a FileProblem (a CheckpointError for checkpoints) naming
the file and what to do (issue 18 item 5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nas.compress import CheckpointError, load_model, read_report, save_model
from nas.compress.chain import _read_done
from nas.core.files import FileProblem, sha256_file
from search_spaces.tiny import TinySpace

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))


def _fails(path: Path, space: TinySpace, arch: dict[str, Any], named: str, problem: str) -> None:
    with pytest.raises(CheckpointError) as err:
        load_model(path, lambda: space.build(arch))
    assert isinstance(err.value, FileProblem)
    assert err.value.path.name == named and problem in err.value.problem, str(err.value)
    assert str(err.value).startswith(str(err.value.path)) and "delete" in err.value.remedy


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (PNG, "is binary"),
        (b'{"format": "edge-nas', "is not valid JSON"),
        (b'"a string"', "holds a JSON str"),
        (b'{"version": 1}', "format field: None"),
    ],
)
def test_a_bad_description_is_named(
    tmp_path: Path, space: TinySpace, arch: dict[str, Any], content: bytes, problem: str
) -> None:
    path = save_model(tmp_path / "m.safetensors", space.build(arch))
    path.with_suffix(".json").write_bytes(content)
    _fails(path, space, arch, "m.json", problem)


def test_a_description_that_is_a_folder_is_named(
    tmp_path: Path, space: TinySpace, arch: dict[str, Any]
) -> None:
    path = save_model(tmp_path / "m.safetensors", space.build(arch))
    path.with_suffix(".json").unlink()
    path.with_suffix(".json").mkdir()
    _fails(path, space, arch, "m.json", "is a folder")


def test_a_foreign_tensor_file_is_named(
    tmp_path: Path, space: TinySpace, arch: dict[str, Any]
) -> None:
    path = save_model(tmp_path / "m.safetensors", space.build(arch))
    meta = json.loads(path.with_suffix(".json").read_text())
    path.write_bytes(PNG)  # with its checksum recorded, so it is read as safetensors
    meta["sha256"] = sha256_file(path)
    path.with_suffix(".json").write_text(json.dumps(meta))
    _fails(path, space, arch, "m.safetensors", "cannot be read as safetensors")
    path.unlink()
    path.mkdir()
    _fails(path, space, arch, "m.safetensors", "is missing")


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"", "is empty"), (PNG, "is binary"), (b'{"step": ', "not valid JSON"), (b"{}", "lacks")],
)
def test_a_bad_done_record_says_to_delete_the_step(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    (tmp_path / "done.json").write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        _read_done(tmp_path)
    assert problem in err.value.problem and err.value.path.name == "done.json"
    assert err.value.remedy == f"delete {tmp_path} to rerun the step"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (PNG, "is binary"),
        (b'{"rows": [', "not valid JSON"),
        (b"{}", "is not a chain's report"),
        (b'{"rows": [{"no_such_field": 1}]}', "is not a chain's report"),
        (None, "is a folder"),
        ("missing", "is missing"),
    ],
)
def test_a_bad_report_is_named(tmp_path: Path, content: bytes | str | None, problem: str) -> None:
    path = tmp_path / "report.json"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(FileProblem) as err:
        read_report(tmp_path)
    assert err.value.path == path and problem in err.value.problem, str(err.value)
    assert "rerun the chain" in err.value.remedy
