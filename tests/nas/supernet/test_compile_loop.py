"""`train_supernet(compile=True)`: the loop's own compile path (the supernet wrapped by
`compile_model`, one graph per subnet shape, the checkpoint written from the eager module)
trains the weights the eager loop trains. Inductor, the default backend, compiles C++ for every
subnet of the sandwich (about 300 s for two steps on a shared core), so the loop is run with
TorchDynamo's `aot_eager` backend, which traces forward and backward as inductor does but runs
the traced graphs with the eager kernels; inductor itself is tested on a small net in
test_execution.py."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch

from nas.supernet import train_supernet
from search_spaces import TinySpace

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/nas/supernet/conftest.py


def _train(out: Path, compiled: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    data = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    result = train_supernet(
        TinySpace(),
        data,
        out,
        schedule="sandwich",
        epochs=1,
        batch_size=8,
        compile=compiled,
        progress=False,
    )
    assert result.step == 2 and result.completed
    return {k: v.detach().clone() for k, v in result.supernet.state_dict().items()}


@pytest.mark.slow  # dynamo traces each subnet of the sandwich: about 70 s on a shared core
def test_train_supernet_compiled_trains_as_eager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []
    compile_ = torch.compile

    def aot_eager(model: Any, **kwargs: Any) -> Any:
        calls.append(model)
        return compile_(model, **{**kwargs, "backend": "aot_eager"})

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.wraps(compile_)(aot_eager))
    eager = _train(tmp_path / "eager", compiled=False)
    assert calls == []
    compiled = _train(tmp_path / "compiled", compiled=True)
    assert len(calls) == 1  # the loop compiled its supernet once
    torch._dynamo.reset()
    assert eager.keys() == compiled.keys()
    for name, a in eager.items():
        assert torch.allclose(a.float(), compiled[name].float(), atol=1e-5), name
    # the checkpoint is of the eager module (no "_orig_mod." prefix): it resumes without compile
    again = train_supernet(
        TinySpace(),
        (torch.randn(16, 3, 32, 32), torch.zeros(16, dtype=torch.int64)),
        tmp_path / "compiled",
        schedule="sandwich",
        epochs=1,
        batch_size=8,
        compile=False,
        progress=False,
    )
    assert again.step == 2
