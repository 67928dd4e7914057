"""The run config's `federated` stage on tiny settings: off by default, two rounds on the
in-process grid, a resume that adds a round, each tier re-checked on its device, the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nas.app.config import ConfigError
from nas.app.demo import demo_config

PIXEL = "pixel3-emulated-fp32"
TIERS = [
    {"name": "fast", "device": "pixel3-emulated", "budget_ms": 1.0, "clients": 2},
    {"name": "slow", "device": PIXEL, "budget_ms": 0.2, "clients": 2},
]
FEDERATED: dict[str, Any] = {
    "enabled": True,
    "tiers": TIERS,
    "rounds": 2,
    "batch_size": 16,
    "max_batches": 1,
    "test_images": 48,
    "candidates": 20,
}


def _config(**federated: Any) -> Any:
    return demo_config(
        name="fed",
        data={"args": {"copies_train": 1, "copies_val": 1, "copies_test": 1}},
        devices=[{"name": "pixel3-emulated", "dtype": "fp32", "lut_archs": 20}],
        federated={**FEDERATED, **federated},
    )


def _state(tmp_path: Path, config: Any) -> Any:
    """A run state as the latency stage leaves it (the device's cost model as its latency
    model: what the stage reads), without training a supernet."""
    import latency_models as lm
    import search_spaces
    from nas.app.builtin_stages import RunState

    state = RunState(config, tmp_path, search_spaces.get_space("tiny"), data=None)
    device = lm.get_device("pixel3-emulated")
    state.devices[PIXEL] = device
    state.latency_models[PIXEL] = lm.CostModelPredictor(device)
    return state


def test_the_stage_is_registered_before_the_report_and_off_by_default(tmp_path: Path) -> None:
    from nas.app.pipeline import plan
    from nas.app.stages import STAGES

    names = list(STAGES)
    assert names.index("compress") < names.index("federated") < names.index("report")
    assert STAGES["federated"].after == ("latency", "supernet")
    decisions = {d.stage: d for d in plan(demo_config(), tmp_path)}
    assert decisions["federated"].action == "off"
    assert decisions["report"].action != "off"


@pytest.mark.slow
def test_two_rounds_then_a_resumed_third_with_tiers_rechecked_and_reported(
    tmp_path: Path,
) -> None:
    from nas.app.federated_stage import federated_section, stage_federated

    state = _state(tmp_path, _config())
    stage_federated(state, progress=False)
    out = tmp_path / "federated"
    summary = json.loads((out / "tiers.json").read_text())
    assert summary["rounds"] == 2 and summary["init"] == "scratch"
    rows = {r["tier"]: r for r in summary["tiers"]}
    assert rows["fast"]["mmacs"] > rows["slow"]["mmacs"]
    for r in rows.values():  # priced again as a whole network on the emulated device
        assert r["how"] == "priced" and r["device_ms"] > 0
        assert r["meets_budget"] == (r["device_ms"] <= r["budget_ms"])
    assert sorted(p.name for p in out.glob("tier-*.png")) == ["tier-fast.png", "tier-slow.png"]
    first = json.loads((out / "server_state.json").read_text())["history"]

    state = _state(tmp_path, _config(rounds=3))  # resumes after round 2, runs round 3 only
    stage_federated(state, progress=False)
    history = json.loads((out / "server_state.json").read_text())["history"]
    assert [r["round"] for r in history] == [1, 2, 3]
    assert history[:2] == first

    text = "\n".join(federated_section(state))
    assert "## Federated rounds" in text and "3 of 3 rounds" in text
    assert "| fast | pixel3-emulated-fp32 | 2 |" in text
    assert "bytes sent per client per round" in text and "(priced)" in text
    assert "![accuracy per round, fast](federated/tier-fast.png)" in text
    off = _state(tmp_path, _config(enabled=False))
    assert federated_section(off) == []


def test_init_from_the_runs_supernet_starts_the_rounds_from_its_weights(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from nas.app.federated_stage import stage_federated

    state = _state(tmp_path, _config(init="supernet", rounds=1, tiers=TIERS[:1]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)  # other weights than the rounds' seeded start
        state.supernet = state.space.supernet()
    stage_federated(state, progress=False)
    spec = json.loads((tmp_path / "federated" / "spec.json").read_text())
    start = load_file(spec["init"])
    for k, v in state.supernet.state_dict().items():
        assert torch.equal(start[k], v), k
    assert json.loads((tmp_path / "federated" / "tiers.json").read_text())["init"] == "supernet"


@pytest.mark.slow
def test_rounds_begun_on_the_grid_resume_on_the_deployment_runtime_to_the_same_weights(
    tmp_path: Path,
) -> None:
    from nas.app.federated_stage import federated_section, stage_federated

    (tmp_path / "grid").mkdir()
    stage_federated(_state(tmp_path / "grid", _config(rounds=2, tiers=TIERS[:1])), progress=False)
    moved = tmp_path / "moved"
    moved.mkdir()
    stage_federated(_state(moved, _config(rounds=1, tiers=TIERS[:1])), progress=False)
    first = json.loads((moved / "federated" / "server_state.json").read_text())["history"]
    state = _state(moved, _config(rounds=2, tiers=TIERS[:1], runtime="deployment"))
    stage_federated(state, progress=False)  # round 2 on SuperLink + SuperNodes (loopback)

    summary = json.loads((moved / "federated" / "tiers.json").read_text())
    assert summary["runtime"] == "deployment" and summary["rounds"] == 2
    history = json.loads((moved / "federated" / "server_state.json").read_text())["history"]
    assert history[:1] == first  # round 1 kept: a change of runtime resumes, it does not redo
    assert "on the deployment runtime" in "\n".join(federated_section(state))
    a, b = (_final_weights(run / "federated") for run in (tmp_path / "grid", moved))
    assert a.keys() == b.keys()
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) <= 1e-6


def _final_weights(out: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    meta = json.loads((out / "server_state.json").read_text())
    return load_file(str(out / meta["tensors"]))


@pytest.mark.parametrize(
    ("change", "key", "says"),
    [
        ({"partition": "dirichlet", "alpha": 0.0}, "federated.alpha", "alpha > 0"),
        ({"partition": "dirichlet"}, "federated.alpha", "alpha > 0"),
        (
            {"tiers": [{**TIERS[0], "budget_ms": 0.001}]},
            "federated.tiers[0].budget_ms",
            "the fastest of",
        ),
        ({"tiers": [{**TIERS[0], "device": "ort-cpu-1t"}]}, "federated.tiers[0].device", "not a"),
        ({"tiers": [{**TIERS[0], "clients": 5000}]}, "federated.tiers", "source images"),
        ({"tiers": []}, "federated.tiers", "at least one tier"),
        ({"kind": "fedprox"}, "federated.kind", "supernet, fedavg, width"),
        ({"runtime": "ray"}, "federated.runtime", "grid, deployment"),
        ({"server_momentum": 1.0}, "federated.server_momentum", "in [0, 1)"),
        ({"server_lr": 0.0}, "federated.server_lr", "expected > 0"),
        ({"init": "supernet", "kind": "width"}, "federated.init", "do not fit"),
        ({"tier_rule": "params"}, "federated.tier_rule", "macs, depth"),
        ({"tier_sampling": "all"}, "federated.tier_sampling", "own, nested, sandwich"),
        ({"min_macs_ratio": 0.5}, "federated.min_macs_ratio", "expected >= 1"),
        ({"min_macs_ratio": 50.0}, "federated.min_macs_ratio", "at most 1/50 of the tier above"),
    ],
)
def test_bad_federated_settings_are_refused_with_the_key(
    change: dict[str, Any], key: str, says: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _config(**change)
    assert f"{key}: " in str(err.value) and says in str(err.value)


def test_a_disabled_section_is_not_checked() -> None:
    assert _config(enabled=False, tiers=[]).federated.enabled is False


def test_more_rounds_continue_the_stage_and_other_keys_redo_it() -> None:
    from nas.app.stages import STAGES, fingerprint

    stage = STAGES["federated"]
    base = _config().to_dict()
    more = _config(rounds=5).to_dict()
    other = _config(lr=0.1).to_dict()
    assert fingerprint(stage, more) == fingerprint(stage, base)
    assert fingerprint(stage, other) != fingerprint(stage, base)
    assert stage.extends == ("federated.rounds",)


def test_the_tier_keys_reach_the_tiers_and_the_spec(tmp_path: Path) -> None:
    from nas.app.federated_stage import _spec, _tiers

    three = [
        {"name": "fast", "device": PIXEL, "budget_ms": 0.7, "clients": 2},
        {"name": "mid", "device": PIXEL, "budget_ms": 0.35, "clients": 2},
        {"name": "slow", "device": PIXEL, "budget_ms": 0.23, "clients": 2},
    ]
    free = _tiers(_state(tmp_path, _config(tiers=three, candidates=200)))
    kept = _tiers(_state(tmp_path, _config(tiers=three, candidates=200, min_macs_ratio=2.0)))
    assert [t.name for t in kept] == ["fast", "mid", "slow"]
    assert kept[0].arch == free[0].arch
    assert kept[0].mmacs >= 2 * kept[1].mmacs and kept[1].mmacs >= 2 * kept[2].mmacs
    assert free[1].mmacs < 2 * free[2].mmacs  # without the cap these budgets sit closer
    deep = _tiers(_state(tmp_path, _config(tiers=three, candidates=200, tier_rule="depth")))
    assert deep != free
    state = _state(tmp_path, _config())
    assert _spec(state, _tiers(state), tmp_path).tier_sampling == "sandwich"
    own = _state(tmp_path, _config(tier_sampling="own"))
    assert _spec(own, _tiers(own), tmp_path).tier_sampling == "own"
    width = _state(tmp_path, _config(kind="width"))
    assert _spec(width, _tiers(width), tmp_path).tier_sampling == "own"  # HeteroFL's


def test_folders_made_before_the_tier_keys_keep_their_rounds_with_own_sampling() -> None:
    from nas.app.stages import STAGES, fingerprint

    stage = STAGES["federated"]
    before = _config().to_dict()
    for key in ("tier_rule", "min_macs_ratio", "tier_sampling"):
        del before["federated"][key]
    assert fingerprint(stage, _config(tier_sampling="own").to_dict()) == fingerprint(stage, before)
    assert fingerprint(stage, _config().to_dict()) != fingerprint(stage, before)  # sandwich
    assert fingerprint(stage, _config(min_macs_ratio=2.0).to_dict()) != fingerprint(
        stage, _config().to_dict()
    )
