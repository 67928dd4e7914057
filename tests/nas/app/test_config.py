from __future__ import annotations

from pathlib import Path

import pytest

from nas.app.config import ConfigError, RunConfig, config_from_dict, load_config, save_config


def test_defaults_and_round_trip(tmp_path: Path) -> None:
    config = config_from_dict(
        {
            "name": "x",
            "supernet": {"epochs": 2, "lr": 1},
            "devices": [{"name": "pixel3-emulated", "dtype": "int8"}],
            "search": {"budgets": {"latency_ms@pixel3-emulated": 15}},
        }
    )
    assert config.supernet.epochs == 2 and config.supernet.lr == 1.0
    assert config.devices[0].dtype == "int8" and config.search.trials == 200
    path = save_config(config, tmp_path)
    text = path.read_text()
    assert "git_commit" in text and "package_version" in text
    assert load_config(path) == config


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(
            {
                "nmae": "x",
                "supernet": {"epochs": "six", "shedule": "spos"},
                "devices": [{"name": 3}],
                "search": {"trials": True},
            }
        )
    msg = str(err.value)
    assert "nmae: unknown key (did you mean 'name'?)" in msg
    assert "supernet.epochs: expected int, got str 'six'" in msg
    assert "supernet.shedule: unknown key (did you mean 'schedule'?)" in msg
    assert "devices[0].name: expected str" in msg
    assert "search.trials: expected int, got bool" in msg


def test_device_latency_model_and_passes_are_checked() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"devices": [{"latency_model": "kernel", "lut_passes": 0}]})
    msg = str(err.value)
    assert "devices[0].latency_model: 'kernel' is not one of lut, kernels" in msg
    assert "devices[0].lut_passes: expected >= 1, got 0" in msg
    config = config_from_dict({"devices": [{"latency_model": "kernels"}]})
    assert config.devices[0].latency_model == "kernels"


def test_files_yaml_and_toml(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\nseed: 3\nspace: {name: nb201}\n")
    (tmp_path / "b.toml").write_text('name = "b"\n[search]\ntrials = 5\n')
    assert load_config(tmp_path / "a.yaml").space.name == "nb201"
    assert load_config(tmp_path / "b.toml").search.trials == 5
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"\.yaml"):
        load_config(tmp_path / "c.txt")
    (tmp_path / "d.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="could not parse"):
        load_config(tmp_path / "d.yaml")
    assert isinstance(config_from_dict({}), RunConfig)


def test_compression_options_are_checked_when_the_config_loads() -> None:
    # a typo here used to surface only at the compress stage, after the supernet and the search
    with pytest.raises(ConfigError) as err:
        config_from_dict(
            {
                "compress": {
                    "steps": ["prune", "distill"],
                    "options": {"qat": {"epochs": 1}},
                }
            }
        )
    msg = str(err.value)
    assert "compress.steps: compression steps must be distinct and in the order" in msg
    assert "compress.options: unknown key(s) ['epochs'] in ChainConfig.qat" in msg


def test_the_demo_config_is_valid() -> None:
    from nas.app.demo import demo_config

    config = demo_config()
    assert config_from_dict(config.to_dict()) == config


def test_git_commit_marks_a_dirty_checkout(tmp_path: Path) -> None:
    import subprocess

    from nas.app.config import git_commit

    assert git_commit(tmp_path) == "unknown"  # not a checkout
    git = ["git", "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "f.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "f.py"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "c"], cwd=tmp_path, check=True)
    head = git_commit(tmp_path)
    assert len(head) == 40 and git_commit(tmp_path, mark_dirty=True) == head
    (tmp_path / "f.py").write_text("x = 2\n")
    assert git_commit(tmp_path, mark_dirty=True) == head + "-dirty"
    assert git_commit(tmp_path) == head
