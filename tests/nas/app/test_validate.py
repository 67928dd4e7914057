"""Every input checked before any work (issue 18 item 1): a run config whole, against the
registries, in one error that names each key, its bad value and the valid choices; the command
line's names, numbers and paths likewise. Each of these was accepted before and failed (or ran)
only when the stage that reads it started."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nas.app.cli import main
from nas.app.config import ConfigError, config_from_dict, load_config

LATE = {
    "devices": [{"name": "pixel3-emulated", "dtype": "int4"}],
    "accuracy": {"predictor": "gpp"},
    "search": {
        "sampler": "bogus",
        "trials": 0,
        "objectives": ["accuracy", "latncy"],
        "budgets": {"latency_ms@pixel-3": 5.0},
    },
}


def test_every_late_problem_is_in_one_error_with_its_key_value_and_choices() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(LATE)
    text = str(err.value)
    for key, value in [
        ("devices[0].dtype", "'int4'"),
        ("accuracy.predictor", "'gpp'"),
        ("search.sampler", "'bogus'"),
        ("search.trials", "got 0"),
        ("search.objectives", "'latncy'"),
        ("search.budgets.latency_ms@pixel-3", "latency_ms@pixel-3"),
    ]:
        line = next((ln for ln in text.splitlines() if key in ln), "")
        assert value in line, f"{key}: {value} not in {line!r} of\n{text}"
    assert "fp32" in text, "a dtype problem lists the device's dtypes"
    assert "'gp'" in text, "a misspelt name gets its close match"


def test_an_empty_config_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# only a comment\n\n")
    with pytest.raises(ConfigError, match="empty"):
        load_config(path)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_a_bad_config_exits_2_and_leaves_no_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(LATE))
    out = tmp_path / "run"
    code, err = _run(["run", str(config), "--out", str(out)], capsys)
    assert code == 2 and "Traceback" not in err
    assert "search.sampler" in err and "devices[0].dtype" in err
    assert not out.exists(), "a run folder's config is written only after it validates"
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    code, err = _run(["run", str(empty), "--out", str(out)], capsys)
    assert code == 2 and "empty.yaml" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["latency", "build", "--device", "xnnpack-1t", "--archs", "-3"], "--archs"),
        (["search", "--trials", "0"], "--trials"),
        (["supernet", "train", "--epochs", "0"], "--epochs"),
        (["supernet", "train", "--lr", "-0.1"], "--lr"),
        (
            [
                "bench",
                "tabular",
                "--table",
                "t.csv",
                "--accuracy-column",
                "a",
                "--latency-column",
                "l",
                "--budgets",
                "50,-1",
            ],
            "--budgets",
        ),
        (["search", "worker", "--storage", "x.db", "--trials", "-1"], "--trials"),
    ],
)
def test_numbers_out_of_range_exit_2(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(argv, capsys)
    assert code == 2 and flag in err and "Traceback" not in err


def test_names_and_paths_are_checked_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "search"
    argv = ["search", "--device", "pixel-3", "--sampler", "nsga", "--space", "tiny"]
    argv += ["--objectives", "latency,parms", "--budget", "params<=-1", "--out", str(out)]
    code, err = _run(argv, capsys)
    assert code == 2 and "Traceback" not in err
    for key, value in [
        ("--device", "pixel-3"),
        ("--sampler", "nsga"),
        ("--objectives", "parms"),
        ("--budget", "-1"),
    ]:
        assert any(key in ln and value in ln for ln in err.splitlines()), (key, err)
    assert not out.exists(), "nothing written for a refused command"
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    code, err = _run(
        [
            "latency",
            "build",
            "--device",
            "xnnpack-1t",
            "--dtype",
            "int4",
            "--space",
            "tyni",
            "--out",
            str(a_file),
        ],
        capsys,
    )
    assert code == 2
    for key in ("--space", "'tyni'", "--dtype", "'int4'", "--out", "a-file"):
        assert key in err, (key, err)


def test_a_run_folder_that_is_a_file_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`nas run --out FILE` ended in a FileExistsError traceback (exit 1)."""
    from nas.app.errors import InputError
    from nas.app.lock import folder_lock

    a_file = tmp_path / "f"
    a_file.write_text("x")
    code, err = _run(["demo", "--quick", "--out", str(a_file)], capsys)
    assert code == 2 and "--out" in err and "is a file" in err and "Traceback" not in err
    assert a_file.read_text() == "x"
    with pytest.raises(InputError, match="is a file"), folder_lock(a_file):
        pass
