"""One error contract for every command (issue 18 item 5) and one lock per run folder (item
3): bad input exits 2 with a few lines and no traceback (`--debug` / EDGE_NAS_DEBUG=1 show
it), a stage that fails on valid input exits 1 with its traceback in a log file, an interrupt
130; a second command on a folder in use exits 2 naming the process that holds it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nas.app.cli import main
from nas.app.demo import demo_config

ROOT = Path(__file__).resolve().parents[3]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_bad_input_has_no_traceback_unless_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = str(tmp_path / "missing.yaml")
    code, err = _run(["run", missing], capsys)
    assert code == 2 and "missing.yaml" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3
    code, err = _run(["--debug", "run", missing], capsys)
    assert code == 2 and "Traceback" in err
    monkeypatch.setenv("EDGE_NAS_DEBUG", "1")
    code, err = _run(["run", missing], capsys)
    assert code == 2 and "Traceback" in err


def test_a_stage_that_fails_on_valid_input_exits_1_with_its_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import nas.app.price

    def broken(*args: object, **kwargs: object) -> Path:
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(nas.app.price, "price_archs", broken)
    out = tmp_path / "price"
    code, err = _run(["price", "--out", str(out)], capsys)
    assert code == 1 and "Traceback" not in err
    assert "price failed: RuntimeError: the disk went away" in err
    logs = list((out / "logs").glob("*.log"))
    assert len(logs) == 1 and str(logs[0]) in err
    assert "Traceback" in logs[0].read_text() and "the disk went away" in logs[0].read_text()

    def interrupted(*args: object, **kwargs: object) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(nas.app.price, "price_archs", interrupted)
    code, err = _run(["price", "--out", str(out)], capsys)
    assert code == 130 and "resume" in err


def test_no_arch_within_the_budget_is_a_sentence_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`nas search` said nothing (exit 0, an empty front); `nas run`'s winners stage raised a
    RuntimeError with a traceback."""
    argv = ["-q", "search", "--device", "pixel3-emulated", "--objectives", "latency,params"]
    argv += ["--budget", "latency_ms@pixel3-emulated<=0.0001", "--trials", "4"]
    code, err = _run([*argv, "--lut-archs", "4", "--out", str(tmp_path / "s")], capsys)
    assert code == 2 and "Traceback" not in err
    assert "the fastest latency_ms@pixel3-emulated found is" in err
    assert "against the budget <= 0.0001" in err and "--budget" in err


def test_the_winners_stage_says_which_budget_no_arch_meets(tmp_path: Path) -> None:
    import search_spaces
    from nas.app.builtin_stages import RunState, stage_winners
    from nas.app.errors import InputError
    from nas.search import run_search

    space = search_spaces.get_space("tiny")
    study = run_search(
        space,
        ["params", "macs"],
        constraints={"params": 1.0},
        sampler="random",
        n_evaluations=3,
        seed=0,
    )
    state = RunState(demo_config(), tmp_path, space, data=None, study=study)
    with pytest.raises(InputError) as err:
        stage_winners(state, progress=False)
    assert "the best params found is" in str(err.value)
    assert "against the budget <= 1" in str(err.value)


# -- the lock ---------------------------------------------------------------------------------
HOLD = """
import sys, time
from nas.app.lock import folder_lock
with folder_lock(sys.argv[1], ["nas", "run", "held-by-test"]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def held(tmp_path: Path) -> object:
    """A run folder whose lock another process holds (killed with -9 at the end)."""
    folder = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield folder, proc
    proc.kill()
    proc.wait()


def test_a_second_command_on_a_folder_in_use_exits_2_naming_the_holder(
    held: tuple[Path, subprocess.Popen[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from nas.app.config import save_config
    from nas.app.lock import folder_lock

    folder, proc = held
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"name": "locked", "search": {"trials": 5}}))
    before = sorted(p.name for p in folder.iterdir())
    code, err = _run(["run", str(config), "--out", str(folder)], capsys)
    assert code == 2 and f"process {proc.pid}" in err and "held-by-test" in err
    assert sorted(p.name for p in folder.iterdir()) == before, "nothing written"
    code, err = _run(["search", "--device", "pixel3-emulated", "--out", str(folder)], capsys)
    assert code == 2 and f"process {proc.pid}" in err
    save_config(demo_config(), folder)
    (folder / "supernet").mkdir()
    import search_spaces
    from nas.core.space import as_rng

    key = search_spaces.get_space("tiny").key(search_spaces.get_space("tiny").sample(as_rng(0)))
    code, err = _run(["compress", "--run", str(folder), "--arch", key], capsys)
    assert code == 2 and f"process {proc.pid}" in err

    # the OS releases the lock of a killed process: no stale lock to clean up
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    with folder_lock(folder, wait_s=max(0.0, deadline - time.monotonic())):
        pass


def test_a_corrupt_file_of_the_run_folder_is_bad_input_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nas.core.files import FileProblem

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"name": "cut", "search": {"trials": 5}}))
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "stages.json").write_text('{"format": 1, "stag')  # a cut write
    code, err = _run(["run", str(config), "--out", str(folder)], capsys)
    assert code == 2 and "Traceback" not in err
    assert str(folder / "stages.json") in err and "delete it" in err
    assert sorted(p.name for p in folder.iterdir()) == ["stages.json"], "rejected up front"
    code, err = _run(
        ["run", str(config), "--out", str(tmp_path / "new"), "--force", "serch"], capsys
    )
    assert code == 2 and "'serch' (did you mean 'search'?)" in err
    assert not (tmp_path / "new").exists()

    import nas.app.price

    def corrupt(*args: object, **kwargs: object) -> Path:
        raise FileProblem(tmp_path / "x.db", "not a SQLite database", "delete it to redo")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nas.app.price, "price_archs", corrupt)
        code, err = _run(["price", "--out", str(tmp_path / "p")], capsys)
    assert code == 2 and "x.db: not a SQLite database; delete it to redo" in err
    assert "Traceback" not in err
