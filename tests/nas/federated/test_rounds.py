"""Rounds on the in-process grid: logged, resumable to the same weights, robust to a dead client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flwr.app import Message

from nas.app.federated_apps import client_app, resolve, server_app
from nas.core.files import CheckpointError
from nas.federated import (
    ROUNDS_LOG,
    STATE_JSON,
    FederatedSpec,
    LocalGrid,
    RoundFailed,
    load_server_state,
    run_in_process,
)

from .conftest import small_spec


def _run(spec: FederatedSpec, out: Path, grid: LocalGrid | None = None) -> dict[str, torch.Tensor]:
    run_in_process(server_app, client_app, spec.num_clients, _config(spec, out), grid)
    return _weights(spec, out)


def _config(spec: FederatedSpec, out: Path) -> dict[str, str]:
    return {"spec": spec.to_json(), "out": str(out)}


def _weights(spec: FederatedSpec, out: Path) -> dict[str, torch.Tensor]:
    family, _ = resolve(spec)
    like = family.full_model(spec.seed).state_dict()
    state = load_server_state(out, spec.digest, like)
    assert state is not None
    return state.weights


def test_rounds_are_logged_and_slices_travel(spec: FederatedSpec, tmp_path: Path) -> None:
    weights = _run(spec, tmp_path)
    records = [json.loads(line) for line in (tmp_path / ROUNDS_LOG).read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    for r in records:
        assert set(r["tiers"]) == {"fast", "slow"}
        assert all(0.0 <= t["accuracy"] <= 1.0 for t in r["tiers"].values())
        by_tier = {c["tier"]: c for c in r["clients"]}
        assert by_tier["fast"]["bytes_down"] > 4 * by_tier["slow"]["bytes_down"]
        assert all(c["bytes_up"] == c["bytes_down"] for c in r["clients"])
    family, _ = resolve(spec)
    start = family.full_model(spec.seed).state_dict()
    moved = sum(int((weights[k] != start[k]).sum()) for k in start)
    assert moved > 1000


def test_a_resumed_run_ends_with_the_uninterrupted_weights(
    spec: FederatedSpec, tmp_path: Path
) -> None:
    whole = _run(spec, tmp_path / "whole")
    _run(small_spec(rounds=1), tmp_path / "parts")
    assert json.loads((tmp_path / "parts" / STATE_JSON).read_text())["round"] == 1
    resumed = _run(spec, tmp_path / "parts")
    log = (tmp_path / "parts" / ROUNDS_LOG).read_text().splitlines()
    assert [json.loads(line)["round"] for line in log] == [1, 2]  # resumed, not restarted
    diff = max(float((whole[k].double() - resumed[k].double()).abs().max()) for k in whole)
    assert diff <= 1e-6


class _TrainFails(LocalGrid):
    """Node 9 answers the set-up query; then its ClientApp raises in every round (its node
    config turns wrong), and the grid turns that into an error reply as Flower does."""

    def _call(self, message: Message) -> Message:
        if message.metadata.dst_node_id == 9 and message.metadata.message_type == "train":
            self.contexts[9].node_config["num-partitions"] = 5
        return super()._call(message)


def test_a_dead_client_is_survived_above_the_minimum_else_a_clear_error(tmp_path: Path) -> None:
    spec = small_spec(rounds=1, min_clients=3)
    nodes = {7 + i: {"partition-id": i, "num-partitions": 4} for i in range(4)}
    grid = _TrainFails(client_app, nodes, _config(spec, tmp_path / "ok"))
    _run(spec, tmp_path / "ok", grid)
    record = json.loads((tmp_path / "ok" / ROUNDS_LOG).read_text().splitlines()[0])
    assert record["failed_clients"] == [2]
    assert len(record["clients"]) == 3

    strict = small_spec(rounds=2)
    _run(small_spec(rounds=1), tmp_path / "strict")
    grid = LocalGrid(
        client_app,
        {i: {"partition-id": i, "num-partitions": 4} for i in range(4)},
        _config(strict, tmp_path / "strict"),
    )
    grid.down = {3}
    with pytest.raises(RoundFailed, match="3 of 4 clients answered"):
        run_in_process(server_app, client_app, 4, _config(strict, tmp_path / "strict"), grid)
    assert json.loads((tmp_path / "strict" / STATE_JSON).read_text())["round"] == 1


def test_a_state_of_other_settings_is_refused(spec: FederatedSpec, tmp_path: Path) -> None:
    _run(small_spec(rounds=1), tmp_path)
    other = small_spec(seed=1)
    with pytest.raises(CheckpointError, match="other settings"):
        _run(other, tmp_path)
