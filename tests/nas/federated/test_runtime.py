"""Flower's deployment runtime: a 2-round, 4-client run on loopback only, no process left, and
the same weights as the in-process grid."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import pytest
import torch

from nas.app.federated_apps import client_app, resolve, server_app
from nas.federated import load_server_state, run_deployment, run_in_process
from tests.sockets import Listener, assert_loopback_only, listening_sockets

from .conftest import small_spec


@pytest.mark.slow
def test_deployment_runs_on_loopback_leaves_nothing_and_matches_the_grid(tmp_path: Path) -> None:
    spec = small_spec(rounds=2, round_timeout_s=300.0)
    seen: set[Listener] = set()
    report = run_deployment(
        spec,
        tmp_path / "deployed",
        timeout_s=900.0,
        watch=lambda pids: seen.update(listening_sockets(pids)),
    )
    assert_loopback_only(seen)
    assert len({s.port for s in seen}) >= 1 + spec.num_clients  # the link and every node
    assert report.survivors == []
    alive = [
        p
        for p in report.pids
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert alive == [], f"processes of the run survived it: {alive}"

    run_in_process(
        server_app,
        client_app,
        spec.num_clients,
        {"spec": spec.to_json(), "out": str(tmp_path / "grid")},
    )
    family, _ = resolve(spec)
    like = family.full_model(spec.seed).state_dict()
    deployed = load_server_state(tmp_path / "deployed", spec.digest, like)
    local = load_server_state(tmp_path / "grid", spec.digest, like)
    assert deployed is not None and local is not None and deployed.round == local.round == 2
    diff = max(
        float((deployed.weights[k].double() - local.weights[k].double()).abs().max()) for k in like
    )
    assert diff <= 1e-6
    assert torch.equal(deployed.weights["stem.0.weight"], local.weights["stem.0.weight"])


def test_a_run_that_ends_early_says_why_in_the_error(tmp_path: Path) -> None:
    """The log folder of a failed run may be gone when the error is read (a CI machine's
    temporary folder), so the error carries the ServerApp's last lines and the nodes' errors."""
    from nas.federated.runtime import DeploymentError, _Processes, _wait_run

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "flwr-run.log").write_text(
        "\x1b[92mINFO \x1b[0m:      Start `flwr-serverapp` process\n"
        + "".join(f"line {i}\n" for i in range(40))
        + "Traceback (most recent call last):\nRoundFailed: 1 of 4 clients answered\n"
    )
    (logs / "supernode-0.log").write_text(
        "\x1b[93mWARNING \x1b[0m:   Option `--insecure` was set.\n"
        "\x1b[91mERROR \x1b[0m:     ClientApp raised an exception\n"
    )
    (logs / "superlink.log").write_text("INFO: all fine\n")
    procs = _Processes(dict(os.environ), logs)
    run = procs.start("ended", ["true"])
    run.wait()
    spec = small_spec(rounds=2)
    with pytest.raises(DeploymentError) as caught:
        _wait_run(run, tmp_path / "out", spec, procs, timeout_s=30.0)
    message = str(caught.value)
    assert "after round 0 of 2" in message and "exit code 0" in message
    assert "RoundFailed: 1 of 4 clients answered" in message and "line 39" in message
    assert "line 5\n" not in message  # only the log's end
    assert "ClientApp raised an exception" in message and "\x1b[" not in message
    assert "--insecure" not in message and "all fine" not in message


def test_ports_are_distinct_and_outside_the_range_outgoing_connections_take() -> None:
    from nas.federated.runtime import _ephemeral_range, _free_port

    taken: set[int] = set()
    ports = [_free_port(taken) for _ in range(20)]
    assert len(set(ports)) == 20 and set(ports) == taken
    low, high = _ephemeral_range()
    assert all(not low <= p <= high for p in ports)


def test_a_node_that_dies_at_start_is_named(tmp_path: Path) -> None:
    from nas.federated.runtime import DeploymentError, _Processes, _wait_listening

    logs = tmp_path / "logs"
    logs.mkdir()
    procs = _Processes(dict(os.environ), logs)
    node = procs.start("supernode-3", [sys.executable, "-c", "print('address already in use')"])
    node.wait()
    with pytest.raises(
        DeploymentError, match=r"SuperNode-3 exited with code 0 at start.*supernode-3\.log"
    ):
        _wait_listening(1, node, 30.0, "SuperNode-3", logs)
