"""The exporters' chatter stays out of the user's log during our exports, and only then."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from nas.backends import export_onnx, quiet_exporters

pytest.importorskip("onnxscript")

ROOT = Path(__file__).resolve().parents[3]
CHATTY = ("torch.onnx", "torch.export", "onnxscript", "onnx_ir", "onnxruntime", "executorch")
EXAMPLE = torch.zeros(1, 3, 8, 8)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _everything(
    caplog: pytest.LogCaptureFixture,
) -> Iterator[tuple[_Records, list[warnings.WarningMessage]]]:
    """Every log record that a handler would print, and every warning shown, while inside.

    The root logger at INFO (as `nas`'s command line sets it); a handler on the root logger and
    one on ``torch.onnx``, whose records do not propagate (torch gives it its own handler)."""
    caplog.set_level(logging.INFO)
    records = _Records()
    hooked = [logging.getLogger(), logging.getLogger("torch.onnx")]
    for lg in hooked:
        lg.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            yield records, shown
    finally:
        for lg in hooked:
            lg.removeHandler(records)


def _chatter(records: _Records) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in records.records
        if r.name.split(".")[0] in ("torch", "onnxscript", "onnx_ir", "onnxruntime")
    ]


_SCRIPT = """
import logging, sys
import torch
from torch import nn
from nas.backends import export_onnx
logging.basicConfig(level=logging.INFO)  # as `nas` sets it up
module, x = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval(), torch.zeros(1, 3, 8, 8)
print("--ours--", file=sys.stderr, flush=True)
export_onnx(module, x, sys.argv[1])
print("--raw--", file=sys.stderr, flush=True)
torch.onnx.export(torch.export.export(module, (x,)), (x,), dynamo=True, verbose=False)
print("--end--", file=sys.stderr, flush=True)
"""


@pytest.mark.slow
def test_a_user_sees_no_exporter_chatter_on_stderr(tmp_path: Path) -> None:
    """What a user's terminal shows, in a fresh process (torch's handler on ``torch.onnx``
    writes to the stderr it found at import), every warning shown (``-W always``)."""
    path = tmp_path / "m.onnx"
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", _SCRIPT, str(path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    _, _, rest = done.stderr.partition("--ours--\n")
    ours, _, rest = rest.partition("--raw--\n")
    raw, _, _ = rest.partition("--end--\n")
    assert ours == "", ours
    assert path.stat().st_size > 0
    # The control: the exporter called directly does chatter (if this fails, torch.onnx has
    # gone quiet and quiet_exporters may have nothing left to do).
    assert "onnx_ir" in raw or "onnxscript" in raw, raw
    if importlib.util.find_spec("torchvision") is None:
        assert "torchvision is not installed. Skipping torchvision::" in raw, raw


@pytest.mark.slow
def test_an_onnx_export_of_ours_logs_and_warns_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    with _everything(caplog) as (records, shown):
        export_onnx(module, EXAMPLE, tmp_path / "m.onnx")
    assert _chatter(records) == []
    assert [str(w.message) for w in shown] == []
    with _everything(caplog) as (records, shown):  # the control: the exporter on its own
        torch.onnx.export(torch.export.export(module, (EXAMPLE,)), (EXAMPLE,), dynamo=True)
    assert _chatter(records), "the exporter called directly logged nothing to filter"


def test_records_and_warnings_outside_our_calls_are_untouched(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = logging.getLogger("torch.onnx._internal.exporter._registration")
    ours = logging.getLogger("nas.backends.test")
    watched = logging.getLogger("onnxscript")
    before = {name: logging.getLogger(name).level for name in CHATTY}
    root_filters = list(logging.getLogger().filters)
    watched.setLevel(logging.DEBUG)  # someone watches onnxscript: that logger stays open
    try:
        with _everything(caplog) as (records, shown):
            exporter.warning("before")
            warnings.warn("before", UserWarning, stacklevel=1)
            with quiet_exporters():
                exporter.warning("inside")
                logging.getLogger().warning("inside, on the root logger itself")
                ours.warning("ours, inside")
                watched.info("watched, inside")
                warnings.warn("inside", UserWarning, stacklevel=1)
            exporter.warning("after")
            logging.getLogger().warning("after, on the root logger itself")
            warnings.warn("after", UserWarning, stacklevel=1)
    finally:
        watched.setLevel(before["onnxscript"])
    assert [r.getMessage() for r in records.records] == [
        "before",
        "ours, inside",
        "watched, inside",
        "after",
        "after, on the root logger itself",
    ]
    assert [str(w.message) for w in shown] == ["before", "after"]
    assert {name: logging.getLogger(name).level for name in CHATTY} == before
    assert logging.getLogger().filters == root_filters
