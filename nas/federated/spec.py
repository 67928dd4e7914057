"""A federated run's settings: tiers of clients, rounds, local training, partition, seeds.

One JSON-able object that the server and every client read from Flower's run config (key
``spec``), so both ends agree on the sub-model of each tier and the partition of each client.
Clients are numbered by tier in order: the first tier's `clients` take partitions 0.., and so on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from nas.core.files import json_digest
from nas.federated.local import LocalSettings
from nas.federated.partitions import PARTITION_KINDS
from nas.federated.sampling import TIER_SAMPLING

__all__ = ["FAMILY_KINDS", "FederatedSpec", "TierSpec"]

FAMILY_KINDS = ("supernet", "width")


@dataclass(frozen=True)
class TierSpec:
    """One device tier: its clients and the sub-model they train (an arch of the space, or a
    HeteroFL width ratio of the run's `base_arch`); `device`, `budget_ms`, `predicted_ms` and
    `mmacs` record where the arch came from (`nas.federated.choose_tiers`)."""

    name: str
    clients: int
    arch: Mapping[str, Any] | None = None
    width: float | None = None
    device: str | None = None
    budget_ms: float | None = None
    predicted_ms: float | None = None  # the arch's predicted latency on `device`
    mmacs: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.clients, int) or self.clients < 1:
            raise ValueError(
                f"tier {self.name!r}: clients must be an int >= 1; got {self.clients!r}"
            )
        if (self.arch is None) == (self.width is None):
            raise ValueError(f"tier {self.name!r}: give exactly one of arch and width")
        if self.width is not None and not 0.0 < float(self.width) <= 1.0:
            raise ValueError(f"tier {self.name!r}: width must be in (0, 1]; got {self.width!r}")

    @property
    def sub_model(self) -> dict[str, Any]:
        """What a family's `masks` / `activated` take."""
        return {"arch": dict(self.arch)} if self.arch is not None else {"width": self.width}


@dataclass(frozen=True)
class FederatedSpec:
    """Everything both ends of a run must agree on."""

    tiers: tuple[TierSpec, ...]
    space: str = "tiny"
    kind: str = "supernet"
    base_arch: Mapping[str, Any] | None = None  # the network HeteroFL widths slice
    dataset: str = "digits"
    dataset_options: Mapping[str, Any] = field(default_factory=dict)
    rounds: int = 2
    local: LocalSettings = field(default_factory=LocalSettings)
    partition: str = "iid"
    alpha: float | None = None
    seed: int = 0
    min_clients: int | None = None  # a round needs this many replies (default: every client)
    calibration_images: int = 512  # server-side validation images that re-estimate batch norm
    test_images: int | None = None  # the first this many test images (None: all)
    round_timeout_s: float | None = None
    # client-side DP through Flower's LocalDpMod: {"clipping_norm", "epsilon", "delta"}
    dp: Mapping[str, float] | None = None
    # the server's step on the averaged update (FedAvgM, Hsu et al. 2019): weights move by
    # server_lr times a momentum buffer of the pseudo-gradients; 1.0 and 0.0 are plain FedAvg
    server_lr: float = 1.0
    server_momentum: float = 0.0
    # a safetensors file of the full model's weights the rounds start from (a run's trained
    # supernet), with its checksum; None: seeded initial weights
    init: str | None = None
    init_sha256: str | None = None
    # what a client trains per local step (`nas.federated.client_sub_models`): "own" (its
    # tier's sub-model only), "nested" (FjORD: one of the tiers nested in its own, uniformly;
    # in session 14, 20 rounds: the fast tier 24 points lower, the others within noise, so
    # not the default) or "sandwich" (its own and the smallest nested tier, summed)
    tier_sampling: str = "own"

    def __post_init__(self) -> None:
        if not self.tiers:
            raise ValueError("a federated run needs at least one tier")
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must differ; got {names}")
        if self.kind not in FAMILY_KINDS:
            raise ValueError(f"kind must be one of {FAMILY_KINDS}; got {self.kind!r}")
        if self.kind == "width" and (
            self.base_arch is None or any(t.width is None for t in self.tiers)
        ):
            raise ValueError("a width (HeteroFL) run needs base_arch and a width for every tier")
        if self.kind == "supernet" and any(t.arch is None for t in self.tiers):
            raise ValueError("a supernet run needs an arch for every tier")
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"rounds must be an int >= 1; got {self.rounds!r}")
        if self.partition not in PARTITION_KINDS:
            raise ValueError(f"partition must be one of {PARTITION_KINDS}; got {self.partition!r}")
        if self.partition == "dirichlet" and (self.alpha is None or not self.alpha > 0):
            raise ValueError(f"a Dirichlet partition needs alpha > 0; got {self.alpha!r}")
        if self.dp is not None:
            missing = {"clipping_norm", "epsilon", "delta"} - set(self.dp)
            if missing or not all(
                float(self.dp[k]) > 0 for k in ("clipping_norm", "epsilon", "delta")
            ):
                raise ValueError(
                    f"dp needs clipping_norm, epsilon and delta, each > 0; got {dict(self.dp)}"
                )
        if not self.server_lr > 0 or not 0.0 <= self.server_momentum < 1.0:
            raise ValueError(
                "server_lr must be > 0 and server_momentum in [0, 1); got "
                f"{self.server_lr!r}, {self.server_momentum!r}"
            )
        if self.tier_sampling not in TIER_SAMPLING:
            raise ValueError(
                f"tier_sampling must be one of {TIER_SAMPLING}; got {self.tier_sampling!r}"
            )
        if (self.init is None) != (self.init_sha256 is None):
            raise ValueError("init and init_sha256 go together (the weights and their checksum)")
        if self.min_clients is not None and not 1 <= self.min_clients <= self.num_clients:
            raise ValueError(
                f"min_clients must be in [1, {self.num_clients}] (the clients); "
                f"got {self.min_clients!r}"
            )

    @property
    def server_step(self) -> bool:
        """Whether the server steps on the average (FedAvgM) rather than taking it."""
        return self.server_lr != 1.0 or self.server_momentum != 0.0

    @property
    def num_clients(self) -> int:
        return sum(t.clients for t in self.tiers)

    @property
    def needed_replies(self) -> int:
        return self.num_clients if self.min_clients is None else self.min_clients

    def tier_of(self, partition: int) -> int:
        """The index of the tier that client `partition` belongs to."""
        if not 0 <= partition < self.num_clients:
            raise ValueError(f"partition must be in [0, {self.num_clients}); got {partition}")
        start = 0
        for i, t in enumerate(self.tiers):
            if partition < start + t.clients:
                return i
            start += t.clients
        raise AssertionError("unreachable: partitions are counted above")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @property
    def digest(self) -> str:
        """Identifies the settings a saved state belongs to (rounds aside: a run may extend)."""
        data = asdict(self)
        data.pop("rounds")
        data.pop("round_timeout_s")
        data.pop("init")  # the weights' checksum identifies them, not where they lie
        if data["init_sha256"] is None:
            data.pop("init_sha256")  # digests of runs from seeded weights stay as they were
        for key, plain in (("server_lr", 1.0), ("server_momentum", 0.0)):
            if data[key] == plain:
                data.pop(key)  # plain FedAvg: runs made before the server step keep their digest
        if data["tier_sampling"] == "own":
            data.pop("tier_sampling")  # runs made before tier sampling keep their digest
        return json_digest(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FederatedSpec:
        d = dict(data)
        tiers: Sequence[Mapping[str, Any]] = d.pop("tiers", ())
        local = LocalSettings(**d.pop("local", {}))
        return cls(tiers=tuple(TierSpec(**t) for t in tiers), local=local, **d)

    @classmethod
    def from_json(cls, text: str) -> FederatedSpec:
        return cls.from_dict(json.loads(text))
