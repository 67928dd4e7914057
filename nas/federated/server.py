"""The server's rounds on a Flower grid: send each client its tier's slices, average them back.

Flower's `FedAvg` sends every node one payload and adds replies of one shape; here each tier
holds a different part of the weights, so the server drives `grid.send_and_receive` itself
(Flower's Message API), one message per client with only its sub-model's elements. Replies are
folded in partition order (`aggregate_held`), the server steps on the average (plain FedAvg
takes it; `server_momentum` makes it FedAvgM), the state is saved after every round
(`save_server_state`), and a resumed run starts after the last saved round.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from safetensors.torch import load_file
from torch import Tensor

from nas.core.files import CheckpointError, append_lines, sha256_file
from nas.data import ImageDataset
from nas.federated.family import SubModelFamily
from nas.federated.local import evaluate_tier
from nas.federated.partitions import partition_indices
from nas.federated.slices import HeldUpdate, aggregate_held, held_bytes, take_held
from nas.federated.spec import FederatedSpec
from nas.federated.state import ServerState, load_server_state, save_server_state

__all__ = [
    "ROUNDS_LOG",
    "RoundFailed",
    "check_partitions",
    "partition_nodes",
    "run_rounds",
    "server_step",
]

logger = logging.getLogger(__name__)

ROUNDS_LOG = "rounds.jsonl"


class RoundFailed(RuntimeError):
    """Too few clients answered a round; the rounds before it are saved."""


def check_partitions(spec: FederatedSpec, data: ImageDataset) -> None:
    """ValueError unless `spec`'s partition of `data`'s train split gives every client data
    (more clients than source images, or a Dirichlet draw that starves one, fail here)."""
    labels = data.train.tensors[1].numpy()
    partition_indices(
        labels, data.groups("train"), spec.num_clients, spec.partition, spec.alpha, spec.seed
    )


def _wait_for_nodes(grid: Grid, count: int, wait_s: float) -> list[int]:
    """The grid's nodes, once `count` have joined or `wait_s` has passed (nodes of a
    deployment register over seconds; an in-process grid has them all at once)."""
    deadline = time.monotonic() + wait_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count or time.monotonic() > deadline:
            return nodes
        time.sleep(0.5)


def partition_nodes(grid: Grid, spec: FederatedSpec, timeout: float | None) -> dict[int, int]:
    """Ask every node which partition it holds (its node config); partition -> node id."""
    nodes = _wait_for_nodes(grid, spec.num_clients, 120.0 if timeout is None else timeout)
    asks = [Message(RecordDict(), node, "query.partition", group_id="setup") for node in nodes]
    found: dict[int, int] = {}
    for reply in grid.send_and_receive(asks, timeout=timeout):
        if reply.has_error():
            continue
        part = int(reply.content["partition"]["partition-id"])  # type: ignore[arg-type]
        if part in found:
            raise RuntimeError(
                f"two nodes ({found[part]}, {reply.metadata.src_node_id}) hold partition {part}"
            )
        found[part] = reply.metadata.src_node_id
    missing = sorted(set(range(spec.num_clients)) - set(found))
    if len(found) < spec.needed_replies:
        raise RoundFailed(
            f"{len(found)} of {spec.num_clients} clients answered (partitions {missing} are "
            f"missing); the run needs {spec.needed_replies}"
        )
    return found


@dataclass
class _Round:
    updates: list[HeldUpdate]
    clients: list[dict[str, Any]]
    dead: list[int]


def _train_round(
    grid: Grid,
    spec: FederatedSpec,
    family: SubModelFamily,
    weights: dict[str, Tensor],
    nodes: dict[int, int],
    rnd: int,
) -> _Round:
    messages, sent = [], {}
    for part, node in sorted(nodes.items()):
        tier = spec.tiers[spec.tier_of(part)]
        held = take_held(weights, family.masks(tier.sub_model))
        sent[node] = (part, held_bytes(held))
        content = RecordDict(
            {
                "held": ArrayRecord(torch_state_dict=held),
                "config": ConfigRecord({"round": rnd, "partition": part}),
            }
        )
        messages.append(Message(content, node, "train", group_id=str(rnd)))
    replies = {
        r.metadata.src_node_id: r
        for r in grid.send_and_receive(messages, timeout=spec.round_timeout_s)
    }
    result = _Round([], [], sorted(set(range(spec.num_clients)) - set(nodes)))
    for node, (part, down) in sorted(sent.items(), key=lambda kv: kv[1][0]):  # partition order
        reply = replies.get(node)
        if reply is None or reply.has_error():
            why = "no reply" if reply is None else reply.error.reason
            logger.warning(
                "round %d: client %d failed (%s); the round goes on without it", rnd, part, why
            )
            result.dead = sorted([*result.dead, part])
            continue
        tier = spec.tiers[spec.tier_of(part)]
        values = reply.content["held"].to_torch_state_dict()  # type: ignore[union-attr]
        metrics = reply.content["metrics"]
        n = int(metrics["num-examples"])  # type: ignore[arg-type]
        result.updates.append(HeldUpdate(family.masks(tier.sub_model), values, n))
        result.clients.append(
            {
                "partition": part,
                "tier": tier.name,
                "num_examples": n,
                "train_loss": float(metrics["train-loss"]),  # type: ignore[arg-type]
                "bytes_down": down,
                "bytes_up": held_bytes(values),
            }
        )
    if len(result.updates) < spec.needed_replies:
        raise RoundFailed(
            f"round {rnd}: {len(result.updates)} of {spec.num_clients} clients answered "
            f"(failed: {result.dead}); the run needs {spec.needed_replies}. Rounds up to "
            f"{rnd - 1} are saved: fix the clients and run again to resume"
        )
    return result


def _evaluate(
    spec: FederatedSpec, family: SubModelFamily, weights: dict[str, Tensor], data: ImageDataset
) -> dict[str, dict[str, float]]:
    calibration = data.val.tensors[0][: spec.calibration_images]
    images, labels = (
        data.test.tensors[0][: spec.test_images],
        data.test.tensors[1][: spec.test_images],
    )
    out: dict[str, dict[str, float]] = {}
    for tier in spec.tiers:
        model = family.full_model(spec.seed)
        model.load_state_dict(weights)
        correct = evaluate_tier(family, model, tier.sub_model, calibration, images, labels)
        out[tier.name] = {"accuracy": float(np.mean(correct))}
    return out


def _start_weights(spec: FederatedSpec, family: SubModelFamily) -> dict[str, Tensor]:
    """The seeded full model's weights, or those of `spec.init` (checked against its sum)."""
    like = {k: v.detach().clone() for k, v in family.full_model(spec.seed).state_dict().items()}
    if spec.init is None:
        return like
    path = Path(spec.init)
    remedy = "run the stage that wrote it again, or start from seeded weights"
    if not path.is_file() or sha256_file(path) != spec.init_sha256:
        raise CheckpointError(path, "is missing or does not match its recorded checksum", remedy)
    weights = load_file(str(path))
    bad = sorted(k for k, v in like.items() if k not in weights or weights[k].shape != v.shape)
    if bad:
        raise CheckpointError(path, f"does not fit the run's model (entries {bad[:5]})", remedy)
    return {k: weights[k].to(v.dtype).clone() for k, v in like.items()}


def server_step(
    spec: FederatedSpec,
    old: dict[str, Tensor],
    averaged: dict[str, Tensor],
    momentum: dict[str, Tensor],
    parameters: set[str],
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The server's step on the averaged weights (FedAvgM): for each parameter, the
    pseudo-gradient `old - averaged` feeds a momentum buffer, and the weights move by
    `server_lr` times it; buffers (batch-norm statistics, counters) take the average as plain
    FedAvg does. Returns the new weights and buffer (plain FedAvg: the average, no buffer)."""
    if not spec.server_step:
        return averaged, momentum
    weights, buffer = dict(averaged), {}
    for name in sorted(parameters):
        delta = old[name] - averaged[name]
        if name in momentum:
            delta = delta + spec.server_momentum * momentum[name]
        buffer[name] = delta
        weights[name] = old[name] - spec.server_lr * delta
    return weights, buffer


def run_rounds(
    grid: Grid,
    spec: FederatedSpec,
    family: SubModelFamily,
    data: ImageDataset,
    out_dir: str | os.PathLike[str],
) -> ServerState:
    """Run the rounds of `spec` on `grid`, resuming from `out_dir`'s saved state when present;
    every round appends its record (accuracy per tier, bytes and loss per client, wall time) to
    ``rounds.jsonl`` and saves the state. Returns the final state."""
    out = Path(out_dir)
    start_weights = _start_weights(spec, family)
    state = load_server_state(out, spec.digest, start_weights)
    if state is None:
        state = ServerState(spec.digest, 0, start_weights)
    elif state.round:
        logger.info("resuming after round %d of %d", state.round, spec.rounds)
    if state.round >= spec.rounds:
        return state
    check_partitions(spec, data)
    nodes = partition_nodes(grid, spec, spec.round_timeout_s)
    parameters = {n for n, _ in family.full_model(spec.seed).named_parameters()}
    for rnd in range(state.round + 1, spec.rounds + 1):
        began = time.perf_counter()
        result = _train_round(grid, spec, family, state.weights, nodes, rnd)
        averaged = aggregate_held(state.weights, result.updates)
        weights, momentum = server_step(spec, state.weights, averaged, state.momentum, parameters)
        record: dict[str, Any] = {
            "round": rnd,
            "tiers": _evaluate(spec, family, weights, data),
            "clients": result.clients,
            "failed_clients": result.dead,
            "wall_s": time.perf_counter() - began,
        }
        state = ServerState(spec.digest, rnd, weights, [*state.history, record], momentum)
        save_server_state(out, state)
        append_lines(out / ROUNDS_LOG, [json.dumps(record, sort_keys=True)])
        logger.info(
            "round %d: %s", rnd, {k: round(v["accuracy"], 4) for k, v in record["tiers"].items()}
        )
    return state
