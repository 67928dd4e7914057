"""Files the latency models read back: calibrated CostParams that are cut, empty, a folder or of
another kind give a FileProblem naming the file; a damaged artifact cache entry is rebuilt
instead of crashing its runtime (issue 18 item 5)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from latency_models.costmodel import CostParams
from latency_models.runtimes.cache import ArtifactCache
from nas.core.files import FileProblem

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
KEY = hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (PNG, "is binary"),
        (b'{"alpha": 1.', "is not valid JSON"),
        (b"[1, 2]", "holds a JSON list"),
        (b"key,op\nconv,1\n", "is not valid JSON"),
        (b'{"not_a_field": 1}', "unknown CostParams fields"),
        (None, "is a folder"),
        ("missing", "is missing"),
    ],
)
def test_bad_cost_params_are_named(
    tmp_path: Path, content: bytes | str | None, problem: str
) -> None:
    path = tmp_path / "params.json"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(FileProblem) as err:
        CostParams.load(path)
    assert err.value.path == path and problem in err.value.problem, str(err.value)
    assert "calibrate again" in err.value.remedy
    CostParams().save(path.with_name("good.json"))
    assert CostParams.load(path.with_name("good.json")) == CostParams()


def test_a_damaged_cache_entry_is_a_miss_and_is_rebuilt(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    path = cache.store("ort", KEY, ".onnx", b"model bytes", {"dtype": "fp32"})
    assert cache.load("ort", KEY, ".onnx") == b"model bytes"
    path.write_bytes(b"model bytEs")  # changed on disk: the checksum beside it disagrees
    assert cache.load("ort", KEY, ".onnx") is None
    path.write_bytes(b"")
    assert cache.load("ort", KEY, ".onnx") is None
    path.with_suffix(".json").write_bytes(PNG)  # an unreadable description: no checksum to test
    path.write_bytes(b"model bytes")
    assert cache.load_meta("ort", KEY, ".onnx") is None
    assert cache.load("ort", KEY, ".onnx") == b"model bytes"
    cache.store("ort", KEY, ".onnx", b"new", {})
    assert cache.load("ort", KEY, ".onnx") == b"new"
    path.unlink()
    path.mkdir()
    with pytest.raises(FileProblem, match="is a folder, not a cached artifact; delete it"):
        cache.load("ort", KEY, ".onnx")


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"", "is empty"), (PNG, "is binary"), (None, "is a folder")],
)
def test_a_bad_measurement_table_is_named(
    tmp_path: Path, content: bytes | str | None, problem: str
) -> None:
    from latency_models.tabular import TabularDevice
    from search_spaces import TinySpace

    path = tmp_path / "measured.csv"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(FileProblem) as err:
        TabularDevice(path, "ms", TinySpace())
    assert err.value.path == path and problem in err.value.problem, str(err.value)
    assert "name the CSV" in err.value.remedy
