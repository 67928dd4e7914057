"""Federated learning on Flower where each device tier trains the subnet it affords.

Slice-wise aggregation of a supernet's weights (every element averaged over the clients whose
subnet holds it), HeteroFL's width-only slicing as a baseline, client partitions (IID and
Dirichlet label skew by source image), resumable rounds, Flower's ServerApp / ClientApp and an
in-process grid that runs them without sockets.
"""

from __future__ import annotations

from nas.federated.apps import Resolve, client_partition, make_client_app, make_server_app
from nas.federated.family import SubModelFamily, SupernetFamily, Tier, WidthFamily
from nas.federated.grid import LocalGrid, run_in_process
from nas.federated.local import (
    LocalSettings,
    calibration_batches,
    evaluate_tier,
    one_thread,
    round_seed,
    train_local,
)
from nas.federated.partitions import PARTITION_KINDS, client_indices, partition_indices
from nas.federated.runtime import DeploymentError, DeploymentReport, run_deployment
from nas.federated.sampling import TIER_SAMPLING, client_sub_models, nested_tiers, step_tier
from nas.federated.server import (
    ROUNDS_LOG,
    RoundFailed,
    check_partitions,
    partition_nodes,
    run_rounds,
    server_step,
)
from nas.federated.slices import (
    HeldUpdate,
    Masks,
    aggregate_held,
    held_bytes,
    put_held,
    supernet_masks,
    take_held,
    width_masks,
    width_scaled,
)
from nas.federated.spec import FAMILY_KINDS, FederatedSpec, TierSpec
from nas.federated.state import STATE_JSON, ServerState, load_server_state, save_server_state
from nas.federated.tiers import (
    TIER_RULES,
    TierBudget,
    arch_depth,
    candidate_archs,
    choose_tiers,
)

__all__ = [
    "FAMILY_KINDS",
    "PARTITION_KINDS",
    "ROUNDS_LOG",
    "STATE_JSON",
    "TIER_RULES",
    "TIER_SAMPLING",
    "DeploymentError",
    "DeploymentReport",
    "FederatedSpec",
    "HeldUpdate",
    "LocalGrid",
    "LocalSettings",
    "Masks",
    "Resolve",
    "RoundFailed",
    "ServerState",
    "SubModelFamily",
    "SupernetFamily",
    "Tier",
    "TierBudget",
    "TierSpec",
    "WidthFamily",
    "aggregate_held",
    "arch_depth",
    "calibration_batches",
    "candidate_archs",
    "check_partitions",
    "choose_tiers",
    "client_indices",
    "client_partition",
    "client_sub_models",
    "evaluate_tier",
    "held_bytes",
    "load_server_state",
    "make_client_app",
    "make_server_app",
    "nested_tiers",
    "one_thread",
    "partition_indices",
    "partition_nodes",
    "put_held",
    "round_seed",
    "run_deployment",
    "run_in_process",
    "run_rounds",
    "save_server_state",
    "server_step",
    "step_tier",
    "supernet_masks",
    "take_held",
    "train_local",
    "width_masks",
    "width_scaled",
]
