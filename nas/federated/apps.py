"""Flower's ServerApp and ClientApp for a federated run (the Message API of flwr 1.42).

The apps are made by `make_server_app` / `make_client_app` from a `resolve` function that turns
a `FederatedSpec` into its sub-model family and dataset (names are looked up in `nas.app`, which
builds the apps Flower loads). Both read the spec from the run config's ``spec`` key; the server
also reads ``out`` (its state folder). A client knows only its node config's ``partition-id``
and ``num-partitions``: it loads the data, keeps its own partition's indices and nothing else,
trains its tier's sub-model on them and replies with the held elements. Flower may start each
message's ClientApp in a fresh process, so nothing is kept between rounds but what the server
sends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import LocalDpMod
from flwr.serverapp import Grid, ServerApp

from nas.data import ImageDataset
from nas.federated.family import SubModelFamily
from nas.federated.local import LocalSettings, round_seed, train_local
from nas.federated.partitions import client_indices
from nas.federated.sampling import client_sub_models
from nas.federated.server import run_rounds
from nas.federated.slices import put_held, take_held
from nas.federated.spec import FederatedSpec
from nas.supernet import Precision, execution

__all__ = ["Resolve", "client_partition", "make_client_app", "make_server_app"]

logger = logging.getLogger(__name__)

Resolve = Callable[[FederatedSpec], tuple[SubModelFamily, ImageDataset]]


def _spec(context: Context) -> FederatedSpec:
    text = context.run_config.get("spec")
    if not isinstance(text, str):
        raise ValueError("the run config needs a 'spec' entry: a FederatedSpec as JSON text")
    return FederatedSpec.from_json(text)


def make_server_app(resolve: Resolve) -> ServerApp:
    """A ServerApp that runs `run_rounds` with the spec and output folder of its run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        spec = _spec(context)
        out = context.run_config.get("out")
        if not isinstance(out, str) or not out:
            raise ValueError("the run config needs an 'out' entry: the server's state folder")
        family, data = resolve(spec)
        run_rounds(grid, spec, family, data, out)

    return app


def client_partition(
    spec: FederatedSpec, data: ImageDataset, partition: int, num_partitions: int
) -> tuple[Any, Any]:
    """(images, labels) of one client's partition of the train split."""
    if num_partitions != spec.num_clients:
        raise ValueError(
            f"this node says there are {num_partitions} partitions; the run has "
            f"{spec.num_clients} clients (check the nodes' num-partitions)"
        )
    images, labels = data.train.tensors[0], data.train.tensors[1]
    idx = client_indices(
        labels.numpy(),
        data.groups("train"),
        partition,
        num_partitions,
        spec.partition,
        spec.alpha,
        spec.seed,
    )
    return images[idx], labels[idx]


def _node_partition(context: Context) -> tuple[int, int]:
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as err:
        raise ValueError(
            f"the node config lacks {err}: start each node with partition-id and num-partitions"
        ) from None


def _node_execution(context: Context) -> Precision:
    """Where this node trains: fp32 on the CPU (the reproducible default) unless its node config
    names a ``device`` (auto, cuda, cuda:N, mps) or a ``precision`` (bf16, fp16)."""
    config = context.node_config
    return execution(str(config.get("device", "cpu")), str(config.get("precision", "fp32")))


def _train(message: Message, context: Context, resolve: Resolve) -> Message:
    """Train this node's sub-model on its partition; reply with the held elements."""
    spec = _spec(context)
    part, num = _node_partition(context)
    config = message.content["config"]
    rnd, sent_part = int(config["round"]), int(config["partition"])  # type: ignore[arg-type]
    if sent_part != part:
        raise ValueError(f"the server sent partition {sent_part}'s slices to partition {part}")
    family, data = resolve(spec)
    images, labels = client_partition(spec, data, part, num)
    own = spec.tier_of(part)
    tier = spec.tiers[own].sub_model
    subs = [t.sub_model for t in spec.tiers]
    smaller, every_step = client_sub_models(family, subs, own, spec.tier_sampling)
    model = family.full_model(spec.seed)
    masks = family.masks(tier)
    put_held(model, masks, message.content["held"].to_torch_state_dict())  # type: ignore[union-attr]
    settings: LocalSettings = spec.local
    seed = round_seed(spec.seed, rnd, part)
    loss = train_local(
        family,
        model,
        tier,
        images,
        labels,
        settings,
        seed,
        _node_execution(context),
        smaller,
        every_step,
    )
    held = take_held(model.state_dict(), masks)
    content = RecordDict(
        {
            "held": ArrayRecord(torch_state_dict=held),
            "metrics": MetricRecord({"num-examples": len(labels), "train-loss": loss}),
        }
    )
    return Message(content, reply_to=message)


def _private(spec: FederatedSpec, seed: int) -> Callable[..., Message]:
    """Flower's LocalDpMod around the training (clip the update's L2 norm to `clipping_norm`,
    add Gaussian noise for (epsilon, delta) per reply), its noise drawn from a seeded stream
    (Flower draws from numpy's global one, which is restored afterwards) so a resumed run
    repeats it. The guarantee is local: each reply is (epsilon, delta)-DP for that client's
    data whatever the server averages it with; rounds compose, and no epsilon is claimed for
    the trained model."""
    dp = dict(spec.dp or {})
    mod = LocalDpMod(dp["clipping_norm"], dp["clipping_norm"], dp["epsilon"], dp["delta"])

    def call(message: Message, context: Context, call_next: Callable[..., Message]) -> Message:
        saved = np.random.get_state()
        np.random.seed(seed % 2**32)
        try:
            return mod(message, context, call_next)
        finally:
            np.random.set_state(saved)

    return call


def make_client_app(resolve: Resolve) -> ClientApp:
    """A ClientApp that trains its tier's sub-model on its own partition."""
    app = ClientApp()

    @app.query("partition")
    def partition(message: Message, context: Context) -> Message:
        part, _ = _node_partition(context)
        reply = RecordDict({"partition": ConfigRecord({"partition-id": part})})
        return Message(reply, reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        spec = _spec(context)
        if spec.dp is None:
            return _train(message, context, resolve)
        part, _ = _node_partition(context)
        rnd = int(message.content["config"]["round"])  # type: ignore[arg-type]
        return _private(spec, round_seed(spec.seed, rnd, part) + 1)(
            message, context, lambda m, c: _train(m, c, resolve)
        )

    return app
