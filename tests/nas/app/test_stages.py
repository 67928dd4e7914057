"""Stages declare what they read: a contract over every registered stage, and the plan of a
rerun (keep, run or redo, and why) on stand-in stages that take no time."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nas.app.pipeline  # noqa: F401  (registers the built-in stages)
from nas.app.config import RunConfig
from nas.app.demo import demo_config
from nas.app.errors import InputError
from nas.app.lock import FolderLocked, folder_lock
from nas.app.pipeline import plan, run_pipeline
from nas.app.stages import RUN_FILES, STAGES, Stage, closure_keys, fingerprint, register_stage

SCHEMA = RunConfig().to_dict()


def _leaves(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every leaf of a config dict (list items by index), and every empty container."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _leaves(v, (*path, str(k)))
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, str(i)))
    else:
        yield path


def _changed(config: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    out = copy.deepcopy(config)
    parent: Any = out
    for part in path[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last: Any = int(path[-1]) if isinstance(parent, list) else path[-1]
    value = parent[last]
    if value is None:  # an automatic default (devices[].calibration_archs)
        parent[last] = 1
    elif isinstance(value, bool):
        parent[last] = not value
    elif isinstance(value, (int, float)):
        parent[last] = value + 1
    elif isinstance(value, str):
        parent[last] = value + "x"
    elif isinstance(value, list):
        parent[last] = [*value, "x"]
    else:
        parent[last] = {**value, "x": 1}
    return out


def _covered(path: tuple[str, ...], keys: list[str]) -> bool:
    dotted = [p for p in path if not p.isdigit()]
    return any(dotted[: len(k.split("."))] == k.split(".") for k in keys)


def _in_schema(key: str) -> bool:
    value: Any = SCHEMA
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return True


@pytest.mark.parametrize("name", list(STAGES))
def test_every_stage_declares_what_it_reads(name: str) -> None:
    stage = STAGES[name]
    order = list(STAGES)
    before = order[: order.index(name)]
    assert stage.doc, f"{name}: say in one line what the stage does"
    assert all(_in_schema(k) for k in (*stage.keys, *stage.extends)), "keys of the schema"
    assert not set(stage.extends) & set(closure_keys(stage)), "an extended key is not a key"
    assert set(stage.after) <= set(before), "it follows stages registered before it"
    produced = [p for s in [*before, name] for p in (*STAGES[s].writes, *STAGES[s].caches)]
    produced += RUN_FILES
    for path in stage.reads:
        assert any(path == p or path.startswith(p.rstrip("/") + "/") for p in produced), (
            f"{name} reads {path}, which no stage before it writes"
        )
    for path in (*stage.reads, *stage.writes, *stage.caches):
        assert not Path(path).is_absolute() and ".." not in Path(path).parts
    assert not set(stage.writes) & set(stage.caches)
    assert not set(stage.writes) & set(RUN_FILES), "the pipeline's own files are not a stage's"


@pytest.mark.parametrize("name", list(STAGES))
def test_fingerprint_changes_when_and_only_when_a_declared_key_changes(name: str) -> None:
    stage = STAGES[name]
    keys = closure_keys(stage)
    config = demo_config().to_dict()
    base = fingerprint(stage, config)
    assert fingerprint(stage, copy.deepcopy(config)) == base
    for path in _leaves(config):
        changed = fingerprint(stage, _changed(config, path)) != base
        assert changed == _covered(path, keys), (
            f"{name}: changing {'.'.join(path)} {'changes' if changed else 'keeps'} the "
            f"fingerprint, but the stage {'does not read' if changed else 'reads'} it ({keys})"
        )


def test_registering_a_stage_checks_what_it_follows() -> None:
    with pytest.raises(ValueError, match="not registered before it"):
        register_stage(Stage("later", lambda s, p: None, after=("nowhere",)))
    with pytest.raises(ValueError, match="already registered"):
        register_stage(Stage("search", lambda s, p: None))


# -- the plan of a rerun, on stand-in stages -------------------------------------------------
@pytest.fixture
def fake_stages() -> Iterator[list[str]]:
    """Three stages that write a file each and record their calls, instead of the real ones."""
    calls: list[str] = []
    saved = dict(STAGES)
    STAGES.clear()

    def make(name: str, out: str) -> Any:
        def run(state: Any, progress: bool) -> None:
            calls.append(name)
            path = state.run_dir / out
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.write_text(f"{name} of seed {state.config.seed}\n")

        return run

    register_stage(
        Stage(
            "train",
            make("train", "train/w.txt"),
            keys=("seed", "supernet"),
            writes=("train",),
            doc="x",
        )
    )
    register_stage(
        Stage(
            "price", make("price", "price.txt"), keys=("devices",), caches=("price.txt",), doc="x"
        )
    )
    register_stage(
        Stage(
            "pick",
            make("pick", "pick.txt"),
            keys=("search.budgets",),
            extends=("search.trials",),
            after=("train", "price"),
            writes=("pick.txt",),
            doc="x",
        )
    )
    yield calls
    STAGES.clear()
    STAGES.update(saved)


def _run(config: RunConfig, run_dir: Path, force: tuple[str, ...] = ()) -> dict[str, str]:
    import search_spaces

    run_pipeline(
        config,
        run_dir,
        progress=False,
        force=force,
        space=search_spaces.get_space("tiny"),
        data=object(),
    )
    return {d.stage: f"{d.action}: {d.reason}" for d in plan(config, run_dir)}


def test_a_changed_key_redoes_the_stages_that_read_it_and_keeps_the_others(
    fake_stages: list[str], tmp_path: Path
) -> None:
    config = demo_config()
    _run(config, tmp_path)
    assert fake_stages == ["train", "price", "pick"]
    first = (tmp_path / "train" / "w.txt").stat().st_mtime_ns
    decisions = {d.stage: d for d in plan(demo_config(seed=3), tmp_path)}
    assert (
        decisions["train"].action == "redo" and "seed changed (0 -> 3)" in decisions["train"].reason
    )
    assert decisions["price"].action == "keep"
    assert decisions["pick"].action == "redo" and "train" in decisions["pick"].reason

    budgets = {"latency_ms@pixel3-emulated": 0.5}
    changed = demo_config(search={"budgets": budgets, "trials": 500})
    decisions = {d.stage: d for d in plan(changed, tmp_path)}
    assert [decisions[s].action for s in ("train", "price", "pick")] == ["keep", "keep", "redo"]
    assert "search.budgets changed" in decisions["pick"].reason
    fake_stages.clear()
    (tmp_path / "pick.txt").write_text("stale\n")
    _run(changed, tmp_path)
    assert (tmp_path / "train" / "w.txt").stat().st_mtime_ns == first, "kept, not redone"
    assert (tmp_path / "pick.txt").read_text() == "pick of seed 0\n", "redone from nothing"
    records = json.loads((tmp_path / "stages.json").read_text())["stages"]
    assert records["pick"]["inputs"]["search.budgets"] == budgets

    more = demo_config(search={"budgets": budgets, "trials": 900})
    decisions = {d.stage: d for d in plan(more, tmp_path)}
    assert decisions["pick"].action == "keep", "more trials continue the search"
    assert "continues: search.trials 500 -> 900" in str(decisions["pick"])


def test_an_optional_stage_runs_only_when_its_switch_is_on(
    fake_stages: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nas.app.pipeline as pipeline

    # the stand-in's switch lives in a mapping the real config checks would refuse
    monkeypatch.setattr(pipeline, "check_config", lambda config, **kw: None)

    def tune(state: Any, progress: bool) -> None:
        fake_stages.append("tune")
        (state.run_dir / "tune.txt").write_text("tuned\n")

    register_stage(
        Stage(
            "tune",
            tune,
            keys=("compress.options",),
            after=("train",),
            writes=("tune.txt",),
            switch="compress.options.tune",
            doc="x",
        ),
        before="pick",
    )
    register_stage(Stage("ship", lambda s, p: fake_stages.append("ship"), after=("tune",), doc="x"))
    assert list(STAGES) == ["train", "price", "tune", "pick", "ship"]
    config = demo_config()
    plan_off = _run(config, tmp_path)
    assert fake_stages == ["train", "price", "pick"]
    assert plan_off["tune"] == "off: set compress.options.tune: true to run it"
    assert plan_off["ship"] == "off: it follows tune, which is off"
    fake_stages.clear()
    config.compress.options["tune"] = True
    assert _run(config, tmp_path)["tune"] == "keep: "
    assert fake_stages == ["train", "price", "tune", "pick", "ship"]  # kept ones resume
    assert (tmp_path / "tune.txt").exists()
    config.compress.options["tune"] = False  # off again: what it made stays
    assert _run(config, tmp_path)["tune"].startswith("off")
    assert (tmp_path / "tune.txt").exists()


def test_an_optional_stage_is_registered_with_its_switch_among_its_keys() -> None:
    with pytest.raises(ValueError, match="must be one of its keys"):
        register_stage(Stage("x1", lambda s, p: None, switch="hwtrain.enabled", doc="x"))
    with pytest.raises(ValueError, match="no stage 'nowhere'"):
        register_stage(Stage("x2", lambda s, p: None, doc="x"), before="nowhere")
    with pytest.raises(ValueError, match="not registered before it"):
        register_stage(Stage("x3", lambda s, p: None, after=("report",), doc="x"), before="report")
    assert not {"x1", "x2", "x3"} & set(STAGES)


def test_force_redoes_a_stage_and_what_reads_it(fake_stages: list[str], tmp_path: Path) -> None:
    config = demo_config()
    _run(config, tmp_path)
    decisions = {d.stage: d for d in plan(config, tmp_path, force=["train"])}
    assert decisions["train"].reason == "--force"
    assert decisions["price"].action == "keep"
    assert decisions["pick"].action == "redo" and "what train makes" in decisions["pick"].reason
    (tmp_path / "train" / "w.txt").write_text("old\n")
    (tmp_path / "price.txt").write_text("a cache\n")
    _run(config, tmp_path, force=("train",))
    assert (tmp_path / "train" / "w.txt").read_text() == "train of seed 0\n"
    assert (tmp_path / "price.txt").read_text() == "a cache\n", "caches stay"
    with pytest.raises(InputError, match=r"unknown stage 'trian' \(did you mean 'train'\?\)"):
        plan(config, tmp_path, force=["trian"])


def test_a_deleted_output_redoes_its_stage(fake_stages: list[str], tmp_path: Path) -> None:
    config = demo_config()
    _run(config, tmp_path)
    (tmp_path / "train" / "w.txt").unlink()
    (tmp_path / "train").rmdir()
    decisions = {d.stage: d for d in plan(config, tmp_path)}
    assert decisions["train"].action == "redo" and "train was deleted" in decisions["train"].reason
    assert decisions["pick"].action == "redo"


def test_a_folder_from_before_stage_records_uses_its_config(
    fake_stages: list[str], tmp_path: Path
) -> None:
    from nas.app.config import save_config

    save_config(demo_config(), tmp_path)  # what a run of an older version left
    decisions = {d.stage: d for d in plan(demo_config(seed=2), tmp_path)}
    assert decisions["train"].action == "redo" and decisions["price"].action == "keep"


def test_the_run_folder_is_locked_while_stages_run(fake_stages: list[str], tmp_path: Path) -> None:
    seen: list[str] = []

    def probe(state: Any, progress: bool) -> None:
        with pytest.raises(FolderLocked) as err, folder_lock(state.run_dir):
            pass
        seen.append(str(err.value))

    register_stage(Stage("probe", probe, doc="x"))
    _run(demo_config(), tmp_path)
    assert "in use by process" in seen[0] and "nas" in seen[0]
    with folder_lock(tmp_path):  # released when the run ends
        pass


def test_a_bad_config_stops_before_any_stage_and_writes_nothing(
    fake_stages: list[str], tmp_path: Path
) -> None:
    from nas.app.config import ConfigError, DeviceConfig, SearchConfig

    run_dir = tmp_path / "run"
    config = RunConfig(
        devices=[DeviceConfig("pixel3-emulated")],
        search=SearchConfig(sampler="bogus", trials=0, budgets={"latency_ms@pixel-3": 1.0}),
    )
    with pytest.raises(ConfigError) as err:
        run_pipeline(config, run_dir, progress=False)
    assert fake_stages == [] and not run_dir.exists()
    for key in ("search.sampler", "search.trials", "search.budgets.latency_ms@pixel-3"):
        assert key in str(err.value)
