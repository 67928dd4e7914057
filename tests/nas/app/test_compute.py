"""The run config's `compute` section: every config key is read by a stage or listed as in no
fingerprint (with why); moving a run to another device keeps its stages, a new precision or
grad_accum redoes the supernet and what follows it, run folders from before the section keep
theirs; the stages hand the settings to the training loops and a batch that does not fit
names the run config's keys."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import nas.app.pipeline  # noqa: F401  (registers the built-in stages)
from nas.app.builtin_stages import RunState, make_test_evaluator, stage_supernet
from nas.app.config import RunConfig, config_from_dict
from nas.app.demo import demo_config
from nas.app.errors import InputError
from nas.app.stages import (
    STAGES,
    UNFINGERPRINTED,
    closure_keys,
    exempt_keys,
    fingerprint,
    plan_run,
)
from search_spaces import TinySpace
from tests.nas.app.test_stages import _covered, _leaves

EXECUTION = {"device": "cpu", "channels_last": True, "compile": True, "workers": 7}


def test_every_config_key_is_read_by_a_stage_or_listed_with_why() -> None:
    read = sorted({k for s in STAGES.values() for k in (*closure_keys(s), *s.extends)})
    exempt = sorted(UNFINGERPRINTED)
    assert all(UNFINGERPRINTED[k].strip() for k in exempt), "each says why"
    assert not [k for k in exempt if _covered(tuple(k.split(".")), read)], "read, not exempt"
    for path in _leaves(RunConfig().to_dict()):
        assert _covered(path, read) or _covered(path, exempt), (
            f"{'.'.join(path)}: no stage reads it and it is not listed as in no fingerprint "
            "(nas.app.stages.exempt_keys, with why)"
        )
    with pytest.raises(ValueError, match="say why"):
        exempt_keys({"compute.device": " "})


def _records(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What stages.json holds once every stage finished with `config` (no outputs kept)."""
    from nas.app.stages import _inputs

    return {
        n: {"fingerprint": fingerprint(s, config), "inputs": _inputs(s, config, STAGES)}
        for n, s in STAGES.items()
    }


def _actions(config: dict[str, Any], records: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    plan = plan_run(config, tmp_path, records)
    return {d.stage: d.action for d in plan if d.action != "off"}


def test_another_device_keeps_every_stage_and_a_new_precision_redoes_the_supernet(
    tmp_path: Path,
) -> None:
    base = demo_config().to_dict()
    records = _records(base)
    moved = copy.deepcopy(base)
    moved["compute"].update(EXECUTION)
    assert set(_actions(moved, records, tmp_path).values()) == {"keep"}
    for key, value in (("precision", "bf16"), ("grad_accum", 4)):
        changed = copy.deepcopy(moved)
        changed["compute"][key] = value
        plan = plan_run(changed, tmp_path, records)
        first = next(d for d in plan if d.stage == "supernet")
        old = '"fp32"' if key == "precision" else "1"
        assert first.action == "redo" and first.reason == f"compute.{key} changed ({old} -> " + (
            '"bf16")' if key == "precision" else "4)"
        )
        redone = {d.stage for d in plan if d.action == "redo"}
        assert {"supernet", "accuracy", "search", "winners", "compress"} <= redone
        assert "latency" not in redone


def test_a_run_folder_from_before_the_compute_section_keeps_its_stages(tmp_path: Path) -> None:
    old = demo_config().to_dict()
    del old["compute"]  # a config.yaml (and stages.json) written before the section came
    del old["search"]["enabled"]  # and before the search had a switch
    actions = _actions(demo_config().to_dict(), _records(old), tmp_path)
    on = {name: a for name, a in actions.items() if STAGES[name].switch in ("", "search.enabled")}
    assert set(on.values()) == {"keep"}, on
    assert {a for name, a in actions.items() if name not in on} <= {"off"}  # optional stages


def test_the_section_is_checked_naming_the_devices_that_are_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError) as err:
        config_from_dict({"compute": {"device": "cuda:1", "workers": -1, "grad_accum": 0}})
    text = str(err.value)
    assert "compute.device: device 'cuda:1' is not there; this machine has: cpu" in text
    assert "compute.workers: expected >= 0" in text and "compute.grad_accum: expected >= 1" in text
    with pytest.raises(InputError, match=r"compute\.precision: fp16 autocast needs a GPU"):
        config_from_dict({"compute": {"device": "cpu", "precision": "fp16"}})
    ok = config_from_dict({"compute": {"device": "cpu", "precision": "bf16", "workers": 0}})
    assert ok.compute.precision == "bf16"


def _state(tmp_path: Path, **compute: Any) -> RunState:
    config = demo_config()
    for key, value in compute.items():
        setattr(config.compute, key, value)
    g = torch.Generator().manual_seed(0)
    split = (torch.randn(24, 3, 32, 32, generator=g), torch.randint(0, 10, (24,), generator=g))
    data = SimpleNamespace(train=split, val=split, test=split)
    return RunState(config, tmp_path, TinySpace(), data)


def test_the_stages_hand_the_settings_to_the_training_loops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nas.supernet

    seen: dict[str, Any] = {}

    def fake_train(space: Any, data: Any, out: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        net = space.supernet().to(memory_format=torch.channels_last)
        return SimpleNamespace(supernet=net, step=1, images_per_s=1.0)

    monkeypatch.setattr(nas.supernet, "train_supernet", fake_train)
    state = _state(tmp_path, precision="bf16", grad_accum=3, channels_last=True, workers=0)
    stage_supernet(state, progress=False)
    assert {k: seen[k] for k in ("device", "precision", "accumulate", "num_workers")} == {
        "device": "auto",
        "precision": "bf16",
        "accumulate": 3,
        "num_workers": 0,
    }
    assert seen["channels_last"] is True and seen["compile"] is False
    conv = next(m for m in state.supernet.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(), "handed on in the default layout, on the CPU"
    evaluator = make_test_evaluator(state)
    assert evaluator.precision.name == "bf16" and evaluator.precision.device.type == "cpu"


def test_a_supernet_batch_that_does_not_fit_names_the_run_config_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nas.supernet
    from nas.supernet import out_of_memory

    def no_memory(*args: Any, **kwargs: Any) -> Any:
        out_of_memory(torch.OutOfMemoryError("CUDA out of memory"), torch.device("cuda:0"), 64, 0)

    monkeypatch.setattr(nas.supernet, "train_supernet", no_memory)
    with pytest.raises(InputError) as err:
        stage_supernet(_state(tmp_path, grad_accum=2), progress=False)
    assert str(err.value) == (
        "supernet: a batch of 64 images does not fit the memory of cuda:0. In the run config, "
        "lower supernet.batch_size (e.g. 32) and raise compute.grad_accum to 4 to keep the "
        "effective batch, or set compute.precision: bf16"
    )


def test_a_run_config_may_stream_an_image_folder(tmp_path: Path) -> None:
    """`data.args` takes what `load_dataset` takes for a folder: `stream` and the streamed
    loader's arguments beside the in-memory loader's."""
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    data = {"name": str(tmp_path / "imgs"), "args": {"stream": True, "on_bad": "skip"}}
    assert config_from_dict({"data": data}).data.args["stream"] is True
    with pytest.raises(InputError, match=r"unknown argument\(s\) \['on_bda'\].*on_bad"):
        config_from_dict({"data": {**data, "args": {"on_bda": "skip"}}})
    with pytest.raises(InputError, match=r"unknown argument\(s\) \['stream'\]"):
        config_from_dict({"data": {"name": "digits", "args": {"stream": True}}})


def test_nas_supernet_train_takes_every_execution_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nas.supernet
    from nas.app.cli import main

    seen: dict[str, Any] = {}

    def fake_train(space: Any, data: Any, out: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return SimpleNamespace(step=0, completed=False, images_per_s=0.0, out_dir=out)

    monkeypatch.setattr(nas.supernet, "train_supernet", fake_train)
    flags = "--device cpu --precision bf16 --workers 0 --accumulate 3 --channels-last --compile"
    assert main(["--quiet", "supernet", "train", *flags.split(), "--out", str(tmp_path)]) == 0
    assert {k: seen[k] for k in ("device", "precision", "num_workers", "accumulate")} == {
        "device": "cpu",
        "precision": "bf16",
        "num_workers": 0,
        "accumulate": 3,
    }
    assert seen["channels_last"] is True and seen["compile"] is True
