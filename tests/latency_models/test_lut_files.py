"""A LUT file that is empty, of another kind or cut in its header fails with a CorruptLUTError
that is a FileProblem: it names the file, what is wrong and says to measure it again (issue 18
item 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from latency_models import CorruptLUTError
from latency_models.lut import LUT
from nas.core.files import FileProblem

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is not an edge-nas LUT"),
        (PNG, "is not an edge-nas LUT"),
        (b'{"device": "pixel3"}\n', "is not an edge-nas LUT"),
        (b"SQLite format 3\x00" + bytes(64), "is not an edge-nas LUT"),
        (b'# edge-nas-lut/2 {"device": "pix\n', "line 1: metadata is not valid JSON"),
        (b"# edge-nas-lut/2 [1, 2]\n", "line 1: metadata must be a JSON object"),
    ],
)
def test_a_foreign_or_cut_lut_is_a_file_problem(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "lut.csv"
    path.write_bytes(content)
    with pytest.raises(CorruptLUTError) as err:
        LUT.load(path)
    assert isinstance(err.value, FileProblem)
    assert err.value.path == path and err.value.problem.startswith(problem)
    assert str(err.value).startswith(f"{path}: ")
    assert "delete it to measure the table again" in str(err.value)
