"""The search metric `train_memory_bytes@MODE[:bBATCH]`: the training memory an arch needs on
the device under a fixed update plan (`nas.ondevice`'s memory model), as a free objective or
budget of `nas search` and run configs ("archs that can learn on the device within 256 KB").

The name says everything the metric needs, so a study stores it and a worker rebuilds it:
`train_memory_bytes@bias` (biases only, batch 8), `train_memory_bytes@last2:b1` (the last two
blocks, batch 1), `train_memory_bytes@full`, `train_memory_bytes@bn_bias`,
`train_memory_bytes@lite_residual` (TinyTL: biases and a lite residual branch per block).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "TRAIN_MEMORY_PREFIX",
    "TrainMemorySpec",
    "parse_train_memory",
    "train_memory_metric",
    "train_memory_metrics",
]

TRAIN_MEMORY_PREFIX = "train_memory_bytes@"
DEFAULT_BATCH = 8
_NAME_RE = re.compile(r"^(?P<mode>[a-z_]+?)(?P<k>\d*)(?::b(?P<batch>\d+))?$")


@dataclass(frozen=True)
class TrainMemorySpec:
    """What a `train_memory_bytes@...` name prices: a fixed update mode, its k, the batch."""

    mode: str
    blocks_k: int = 1
    batch: int = DEFAULT_BATCH

    @property
    def name(self) -> str:
        mode = f"last{self.blocks_k}" if self.mode == "last" else self.mode
        batch = "" if self.batch == DEFAULT_BATCH else f":b{self.batch}"
        return f"{TRAIN_MEMORY_PREFIX}{mode}{batch}"


def _modes() -> list[str]:
    from nas.ondevice import MODES, OPTIONAL_MODES

    return [m for m in (*MODES, *OPTIONAL_MODES) if m != "sparse"]


def _spellings() -> str:
    return ", ".join(f"{TRAIN_MEMORY_PREFIX}{'lastK' if m == 'last' else m}" for m in _modes())


def parse_train_memory(name: str) -> TrainMemorySpec:
    """The spec of a `train_memory_bytes@MODE[:bBATCH]` name, or a ValueError that lists the
    valid modes."""
    if not name.startswith(TRAIN_MEMORY_PREFIX):
        raise ValueError(f"{name!r} is not a training-memory metric ({TRAIN_MEMORY_PREFIX}MODE)")
    rest = name[len(TRAIN_MEMORY_PREFIX) :]
    m = _NAME_RE.match(rest)
    modes = _modes()
    valid = (
        f"valid: {_spellings()} (K blocks nearest the output; batch {DEFAULT_BATCH}, or "
        f"':bN' for batch N, e.g. {TRAIN_MEMORY_PREFIX}bias:b1); 'sparse' is chosen per arch "
        "by a probe on data, so it is not a search metric"
    )
    if m is None or m["mode"] not in modes:
        raise ValueError(f"unknown training-memory metric {name!r}: {valid}")
    mode, k, batch = m["mode"], m["k"], m["batch"]
    if (mode == "last") != bool(k):
        raise ValueError(
            f"{name!r}: only 'last' takes a number of blocks (last1, last2, ...); {valid}"
        )
    if (mode == "last" and int(k) < 1) or (batch is not None and int(batch) < 1):
        raise ValueError(f"{name!r}: blocks and batch are >= 1; {valid}")
    return TrainMemorySpec(mode, int(k or 1), int(batch or DEFAULT_BATCH))


def train_memory_metric(space: Any, name: str) -> Any:
    """The `nas.search.Metric` a `train_memory_bytes@...` name stands for, on `space` (priced
    per arch on the meta device from layer specs, cached by arch key)."""
    from nas.ondevice import training_memory_metric
    from nas.search import Metric

    spec = parse_train_memory(name)
    price = training_memory_metric(space, spec.mode, batch=spec.batch, blocks_k=spec.blocks_k)
    return Metric(
        name,
        "minimize",
        True,
        lambda archs: np.asarray(price(archs), dtype=np.float64),
        "bytes",
    )


def train_memory_metrics(
    space: Any,
    objectives: Iterable[object] = (),
    constraints: Sequence[object] | Mapping[str, float] | None = None,
) -> list[Any]:
    """One Metric per distinct `train_memory_bytes@...` name among `objectives` (names or
    latency-model objects) and `constraints` (budget texts, `Constraint`s or a mapping metric
    -> bound), for `nas.search.run_search(..., metrics=...)`."""
    from nas.search import Constraint, parse_constraint

    names: list[str] = [o for o in objectives if isinstance(o, str)]
    if isinstance(constraints, Mapping):
        names += list(constraints)
    else:
        for c in constraints or ():
            if isinstance(c, Constraint):
                names.append(c.metric)
            elif isinstance(c, str):
                names.append(parse_constraint(c)[0])
    wanted = dict.fromkeys(n for n in names if n.startswith(TRAIN_MEMORY_PREFIX))
    return [train_memory_metric(space, n) for n in wanted]
