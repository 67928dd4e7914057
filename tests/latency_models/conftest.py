"""Fixtures of the latency-model tests: a private artifact cache for real runtimes, a fast
measurement protocol (tests check contracts, benchmarks take timings) and a "truth" phone
whose figures the predictors learn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import latency_models as lm
from latency_models.measure import Protocol

FAST = Protocol(
    warmup_runs=1,
    warmup_s=0.0,
    round_s=0.002,
    min_round_runs=3,
    min_rounds=2,
    max_runs=30,
    max_s=0.1,
)

# "measurements": a phone whose network overhead and 1x1 convs the plain profile gets wrong
TRUTH_PHONE = lm.EmulatedDevice(
    lm.PROFILES["pixel3"],
    lm.CostParams(compute_scale={"conv1x1": 1.5}, network_overhead_ms=0.3),
    name="truth",
)


@pytest.fixture(scope="session")
def artifact_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """EDGE_NAS_CACHE pointed at a session folder, so lowered programs are shared by the
    devices of one run (xnnpack-2t reuses what xnnpack-1t lowered) and never leak out."""
    root = tmp_path_factory.mktemp("edge-nas-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGE_NAS_CACHE", str(root))
    yield root
    mp.undo()


@pytest.fixture()
def fast_protocol() -> Protocol:
    return FAST
