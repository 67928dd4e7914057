"""A federated run killed (SIGKILL) mid-round resumes and ends with the uninterrupted weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nas.app.cli import main
from nas.app.federated_apps import resolve
from nas.federated import FederatedSpec, load_server_state

ROOT = Path(__file__).resolve().parents[3]
ARGS = [
    "federated", "run", "--rounds", "2", "--candidates", "20", "--max-batches", "3",
    "--batch-size", "16", "--test-images", "64",
    "--tier", "fast:pixel3-emulated:0.7:2", "--tier", "slow:pixel3-emulated:0.2:2",
]  # fmt: skip


def _weights(out: Path) -> dict:
    spec = FederatedSpec.from_json((out / "spec.json").read_text())
    family, _ = resolve(spec)
    state = load_server_state(out, spec.digest, family.full_model(spec.seed).state_dict())
    assert state is not None and state.round == 2
    return state.weights


@pytest.mark.slow
def test_a_run_killed_mid_round_resumes_to_the_same_weights(tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "nas", *ARGS, "--out", str(killed)]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while not (killed / "rounds.jsonl").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before its first round was saved"
            time.sleep(0.05)
        time.sleep(0.5)  # into round 2's local training
        assert proc.poll() is None, "the run finished before it could be killed mid-round"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert (killed / "rounds.jsonl").read_text().count("\n") == 1
    assert main([*ARGS, "--out", str(killed)]) == 0  # resumes at round 2
    assert (killed / "rounds.jsonl").read_text().count("\n") == 2  # not restarted
    assert main([*ARGS, "--out", str(tmp_path / "whole")]) == 0
    resumed, whole = _weights(killed), _weights(tmp_path / "whole")
    diff = max(float((resumed[k].double() - whole[k].double()).abs().max()) for k in whole)
    assert diff <= 1e-6
