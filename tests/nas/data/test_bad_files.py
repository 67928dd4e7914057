"""Data files that are cut, empty or of another kind fail with a FileProblem naming the file,
what is wrong and what to do (issue 18 item 5); a missing path keeps its FileNotFoundError."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from nas import data as D
from nas.core.files import FileProblem
from tests.nas.data.test_data import _write_cifar10, _write_folder

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))


@pytest.mark.parametrize("content", [b"", PNG, b"not an image", "cut"])
def test_a_bad_image_is_named(tmp_path: Path, content: bytes | str) -> None:
    root = _write_folder(tmp_path / "imgs", per_class=1)
    bad = root / "red" / "bad.png"
    if content == "cut":
        Image.new("RGB", (40, 40), (1, 2, 3)).save(bad)
        bad.write_bytes(bad.read_bytes()[:30])
    else:
        assert isinstance(content, bytes)
        bad.write_bytes(content)
    with pytest.raises(FileProblem) as err:
        D.load_image_folder(root)
    assert err.value.path == bad and err.value.problem.startswith("cannot read image")
    assert "replace it" in err.value.remedy


def test_folder_layout_problems_name_the_folder(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    with pytest.raises(FileProblem) as err:
        D.load_image_folder(tmp_path / "flat")
    assert err.value.path == tmp_path / "flat" and "<root>/<class name>" in err.value.remedy


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("test_batch", b"", "is not a readable CIFAR pickle"),
        ("test_batch", PNG, "is not a readable CIFAR pickle"),
        ("test_batch", b'{"data": []}', "is not a readable CIFAR pickle"),
        ("batches.meta", PNG, "is not a readable CIFAR pickle"),
    ],
)
def test_a_bad_cifar_file_is_named(tmp_path: Path, name: str, content: bytes, problem: str) -> None:
    root = tmp_path / "c10"
    _write_cifar10(root)
    (root / name).write_bytes(content)
    with pytest.raises(FileProblem) as err:
        D.load_cifar(root)
    assert err.value.path == root / name and err.value.problem.startswith(problem)
    assert "fresh copy" in err.value.remedy


def test_a_cut_cifar_pickle_is_named(tmp_path: Path) -> None:
    root = tmp_path / "c10"
    _write_cifar10(root)
    data = (root / "data_batch_2").read_bytes()
    (root / "data_batch_2").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileProblem, match="data_batch_2: is not a readable CIFAR pickle"):
        D.load_cifar(root)
