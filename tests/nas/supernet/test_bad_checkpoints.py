"""A supernet checkpoint that is empty, cut, of another kind or a folder fails with a
CheckpointError (a FileProblem) that names the file and says what to do, never a JSON or
safetensors traceback (issue 18 item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nas.core.files import CheckpointError, FileProblem, sha256_file
from nas.supernet import load_supernet
from search_spaces import TinySpace

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))


def _meta(run: Path, tensors: bytes) -> dict[str, object]:
    (run / "checkpoint-1.safetensors").write_bytes(tensors)
    return {
        "version": 1,
        "space": "tiny",
        "config": {},
        "state": {},
        "tensors": "checkpoint-1.safetensors",
        "sha256": sha256_file(run / "checkpoint-1.safetensors"),
    }


def _fails(run: Path, named: str, problem: str) -> str:
    with pytest.raises(CheckpointError) as err:
        load_supernet(TinySpace(), run)
    assert isinstance(err.value, FileProblem)
    assert err.value.path.name == named and problem in err.value.problem
    text = str(err.value)
    assert (
        text.startswith(str(err.value.path)) and "delete" in err.value.remedy
    ) or "train" in text
    return text


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (PNG, "is binary"),
        (b'{"version": 1, "space": "ti', "is not valid JSON"),  # cut short
        (b"[1, 2]", "holds a JSON list"),
        (b'{"format": "edge-nas-compress-checkpoint"}', "checkpoint version None"),
    ],
)
def test_a_bad_checkpoint_description_is_named(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    (tmp_path / "checkpoint.json").write_bytes(content)
    text = _fails(tmp_path, "checkpoint.json", problem)
    assert f"delete {tmp_path} to train the supernet again" in text


def test_a_description_that_is_a_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.json").mkdir()
    _fails(tmp_path, "checkpoint.json", "is a folder")


def test_a_description_without_its_fields_is_named(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.json").write_text(json.dumps({"version": 1}))
    _fails(tmp_path, "checkpoint.json", "lacks the field(s)")


def test_bad_tensor_files_are_named(tmp_path: Path) -> None:
    meta = _meta(tmp_path, PNG)  # its checksum recorded: the file is read as safetensors
    (tmp_path / "checkpoint.json").write_text(json.dumps(meta))
    _fails(tmp_path, "checkpoint-1.safetensors", "cannot be read as safetensors")
    (tmp_path / "checkpoint-1.safetensors").write_bytes(PNG[:10])  # cut after the record
    _fails(tmp_path, "checkpoint-1.safetensors", "does not match the checksum")
    (tmp_path / "checkpoint-1.safetensors").unlink()
    _fails(tmp_path, "checkpoint-1.safetensors", "is missing")
    (tmp_path / "checkpoint-1.safetensors").mkdir()
    _fails(tmp_path, "checkpoint-1.safetensors", "is missing")


def test_a_folder_without_a_checkpoint_says_to_train_first(tmp_path: Path) -> None:
    text = _fails(tmp_path, "checkpoint.json", "is missing")
    assert "train one first" in text
    with pytest.raises(CheckpointError, match="train one first"):
        load_supernet(TinySpace(), tmp_path / "not-there")
