"""A `.pte` or `.onnx` that is empty, cut, of another kind, a folder or missing fails with a
FileProblem naming it and saying what to do, not a runtime's own error (issue 18 item 5)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from nas.backends import open_runner
from nas.core.files import FileProblem

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
CUT_PTE = b"\x1c\x00\x00\x00ET12" + bytes(56)  # the right identifier, the rest missing

CASES = [
    (b"", "is empty"),
    (PNG, "cannot be loaded as"),
    (b'{"graph": []}', "cannot be loaded as"),
    (None, "is a folder"),
    ("missing", "is missing"),
]


def _runtime(suffix: str) -> None:
    module = {".pte": "executorch", ".onnx": "onnxruntime"}[suffix]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


@pytest.mark.parametrize("suffix", [".pte", ".onnx"])
@pytest.mark.parametrize(("content", "problem"), CASES)
def test_a_bad_artifact_is_named(
    tmp_path: Path, suffix: str, content: bytes | str | None, problem: str
) -> None:
    _runtime(suffix)
    path = tmp_path / f"model{suffix}"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(FileProblem) as err:
        open_runner(path, (1, 3, 8, 8))
    assert err.value.path == path and problem in err.value.problem, str(err.value)
    assert str(err.value).startswith(f"{path}: ")
    assert "export it" in err.value.remedy


@pytest.mark.slow  # loads the ExecuTorch runtime
def test_a_cut_pte_with_its_identifier_is_named(tmp_path: Path) -> None:
    _runtime(".pte")
    path = tmp_path / "model.pte"
    path.write_bytes(CUT_PTE)
    with pytest.raises(FileProblem, match="cannot be loaded as an ExecuTorch program") as err:
        open_runner(path, (1, 3, 8, 8))
    assert "delete it to export it again" in str(err.value)
