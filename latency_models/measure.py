"""The latency measurement protocol shared by every real device: warm-up, rounds to a stable minimum.

Protocol (one timed thing, or several timed together by :func:`measure_rounds`):

1. **Warm-up.** Run and discard until at least ``warmup_runs`` runs *and* at least ``warmup_s``
   seconds have passed (both are minimums; either may be 0). This pays one-off costs: lazy
   allocation, weight packing, cache and branch-predictor warm-up, CPU frequency ramp.
2. **Rounds.** Time runs in rounds. A round holds enough runs for their timed samples to sum to
   about ``round_s`` seconds (estimated from the previous round, the first from the warm-up),
   never fewer than ``min_round_runs`` and never more than a tenth of ``max_runs``. After each
   round the headline figure (the minimum, below) of *all* samples so far is compared with the
   one after the previous round.
3. **Stop** when, after at least ``min_rounds`` rounds and ``min_s`` seconds of timing, the
   relative change of the minimum is at most ``rel_tol`` (for every timed item) ->
   ``converged=True``; or when a cap is hit: ``max_runs`` timed runs or ``max_s`` seconds of
   timing (warm-up not counted) -> ``converged=False``. A capped measurement is still returned:
   its statistics are valid, only less certain; the flag lets a caller re-measure or flag it.
4. **Report** median, p10, p90 (linear interpolation), mean, standard deviation (population),
   minimum, the number of timed runs, the number of warm-up runs, the number of rounds, and the
   metadata the caller supplies: device name, runtime, runtime version, thread count, dtype.

**The headline figure is the minimum** (:attr:`Measurement.latency_ms`), not the median. On the
shared virtual machines this project is developed on, a network's speed changes for stretches
of a second or more while other tenants load the host: in one 8-second trace of one `tiny`
network on ONNX Runtime the median of each quarter second jumped between 103 and 181 us, while
the minimum was 98-104 us in 19 of 32 windows (the longest slow stretches raised even the
minimum to 129-150 us, hence the interleaved passes below). ``benchmarks/measurement_noise.py`` (16 archs, six
interleaved passes of 0.3 s, even passes against odd) gave Kendall tau / share within +-10 %
for the pooled minimum against the pooled median: 0.979 / 100 % against 0.650 / 44 % (ORT,
tiny), 0.800 / 81 % against 0.783 / 62 % (ORT, nb201), 0.917 / 88 % against 0.583 / 38 %
(XNNPACK, tiny); an earlier run of the same design on a quieter host: 0.986 / 100, 0.928 / 100,
0.978 / 100 (minimum) against 0.797 / 83, 0.928 / 92, 0.783 / 54 (median). The minimum is the
network's uncontended cost: timing cannot undercut the work, so it is a property of the network
and the runtime rather than of the neighbours. ``min_s`` makes a measurement last long enough
to meet a quiet stretch; callers that need more (validation, benchmarks) take the minimum over
measurements interleaved in time (:class:`latency_models.measurements.ArchMeasurements`).
The median and the other statistics stay in every record; ``Measurement.spread`` (p90 / p10)
flags contended measurements. Thread counts are *recorded* here, not set: each device sets
its own before it calls :func:`measure`.

Each sample of :func:`measure` is one call of the callable, timed with ``time.perf_counter_ns``
around the call, so Python's call overhead (well under a microsecond) is included.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_PROTOCOL",
    "Measurement",
    "Protocol",
    "RunInfo",
    "measure",
    "measure_rounds",
    "summarize",
]

Clock = Callable[[], int]
"""A monotonic clock in nanoseconds (``time.perf_counter_ns`` unless a test fakes it)."""


@dataclass(frozen=True)
class Protocol:
    """The knobs of the protocol in the module docstring; all durations in seconds."""

    warmup_runs: int = 3
    warmup_s: float = 0.02
    round_s: float = 0.05
    min_round_runs: int = 5
    min_rounds: int = 3
    rel_tol: float = 0.02
    max_runs: int = 2000
    max_s: float = 3.0
    min_s: float = 0.0

    def __post_init__(self) -> None:
        ints = {
            "warmup_runs": (self.warmup_runs, 0),
            "min_round_runs": (self.min_round_runs, 1),
            "min_rounds": (self.min_rounds, 2),
            "max_runs": (self.max_runs, 1),
        }
        for name, (value, lowest) in ints.items():
            if not isinstance(value, int) or value < lowest:
                raise ValueError(
                    f"Protocol.{name} must be an int >= {lowest} "
                    f"(min_rounds >= 2 because convergence compares two rounds); got {value!r}"
                )
        floats = {
            "warmup_s": (self.warmup_s, False),
            "round_s": (self.round_s, False),
            "rel_tol": (self.rel_tol, True),
            "max_s": (self.max_s, True),
            "min_s": (self.min_s, False),
        }
        for fname, (fvalue, positive) in floats.items():
            if not math.isfinite(fvalue) or fvalue < 0 or (positive and fvalue == 0):
                need = "> 0" if positive else ">= 0"
                raise ValueError(f"Protocol.{fname} must be a finite number {need}; got {fvalue!r}")
        if self.min_round_runs * self.min_rounds > self.max_runs:
            raise ValueError(
                "Protocol needs min_round_runs * min_rounds <= max_runs so that convergence can "
                f"be reached before the cap; got {self.min_round_runs} * {self.min_rounds} > "
                f"{self.max_runs}"
            )
        if self.min_s > self.max_s:
            raise ValueError(
                f"Protocol needs min_s <= max_s (a measurement cannot last at least {self.min_s} s "
                f"and at most {self.max_s} s)"
            )


DEFAULT_PROTOCOL = Protocol(min_s=0.25)
"""What real devices measure with: at least a quarter second of timing per measured thing, so
the minimum meets a quiet stretch of a shared machine (module docstring)."""


@dataclass(frozen=True)
class RunInfo:
    """What was measured on what: copied into every :class:`Measurement`."""

    device: str = ""
    runtime: str = "python"
    runtime_version: str = ""
    threads: int = 1
    dtype: str = "fp32"


@dataclass(frozen=True)
class Measurement:
    """Statistics of one measured thing (milliseconds) and how they were obtained."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    count: int
    warmup: int
    rounds: int
    converged: bool
    device: str
    runtime: str
    runtime_version: str
    threads: int
    dtype: str

    @property
    def latency_ms(self) -> float:
        """The headline figure: the minimum over the timed runs (module docstring says why)."""
        return self.min_ms

    @property
    def spread(self) -> float:
        """p90 / p10: near 1 on a quiet machine; ~2 when another process shares the core for
        part of the runs (the median then depends on which mode dominated)."""
        return self.p90_ms / self.p10_ms if self.p10_ms > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready mapping (for LUT files)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        """Inverse of :meth:`to_dict`; unknown keys are an error so that typos do not pass."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        missing = sorted(names - set(data))
        if unknown or missing:
            raise ValueError(
                f"Measurement.from_dict needs exactly the keys {sorted(names)}; "
                f"unknown: {unknown}, missing: {missing}"
            )
        return cls(**dict(data))


def summarize(
    samples_ms: Sequence[float] | np.ndarray,
    *,
    warmup: int,
    rounds: int,
    converged: bool,
    info: RunInfo,
) -> Measurement:
    """Statistics of timed samples (ms) as a :class:`Measurement`."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"summarize needs a non-empty 1-D sequence of samples; got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError("summarize needs finite, non-negative samples (milliseconds)")
    p10, median, p90 = np.percentile(arr, [10.0, 50.0, 90.0])
    return Measurement(
        median_ms=float(median),
        p10_ms=float(p10),
        p90_ms=float(p90),
        mean_ms=float(arr.mean()),
        std_ms=float(arr.std()),
        min_ms=float(arr.min()),
        count=int(arr.size),
        warmup=warmup,
        rounds=rounds,
        converged=converged,
        device=info.device,
        runtime=info.runtime,
        runtime_version=info.runtime_version,
        threads=info.threads,
        dtype=info.dtype,
    )


def measure(
    fn: Callable[[], object],
    protocol: Protocol = DEFAULT_PROTOCOL,
    *,
    info: RunInfo | None = None,
    clock: Clock = time.perf_counter_ns,
) -> Measurement:
    """Time ``fn()`` with the protocol of this module; each call is one sample."""
    if not callable(fn):
        raise TypeError(f"measure needs a zero-argument callable; got {type(fn).__name__}")

    def run_round(n: int) -> np.ndarray:
        out = np.empty((n, 1), dtype=np.float64)
        for i in range(n):
            t0 = clock()
            fn()
            out[i, 0] = (clock() - t0) / 1e6
        return out

    return measure_rounds(run_round, 1, protocol, info=info, clock=clock)[0]


def measure_rounds(
    run: Callable[[int], np.ndarray],
    n_items: int,
    protocol: Protocol = DEFAULT_PROTOCOL,
    *,
    info: RunInfo | None = None,
    clock: Clock = time.perf_counter_ns,
) -> list[Measurement]:
    """The protocol over ``run(n)``, which executes ``n`` runs and returns their samples.

    ``run(n)`` must return an array of shape ``(n, n_items)`` in milliseconds: one row per run,
    one column per timed item (for example the layers of one batched program, timed by the
    runtime's own profiler). Convergence requires every item's minimum to be stable.
    """
    if n_items < 1:
        raise ValueError(f"measure_rounds needs n_items >= 1; got {n_items}")
    info = info or RunInfo()

    def checked(n: int) -> np.ndarray:
        samples = np.asarray(run(n), dtype=np.float64)
        if samples.shape != (n, n_items):
            raise ValueError(
                f"run({n}) must return an array of shape ({n}, {n_items}) in ms; "
                f"got shape {samples.shape}"
            )
        return samples

    # Warm-up: both minimums must hold; one run at a time so a slow item does not overshoot.
    # Round sizes come from the timed work itself (the sum of a run's samples), so overheads
    # outside the samples (a profiler dump, say) do not shrink the rounds.
    warmup = 0
    warm_ms = 0.0
    t_start = clock()
    while warmup < protocol.warmup_runs or (clock() - t_start) / 1e9 < protocol.warmup_s:
        warm_ms += float(checked(1).sum())
        warmup += 1
    # Without a warm-up there is no estimate yet: the first round is the smallest allowed.
    per_run_s: float | None = warm_ms / 1e3 / warmup if warmup else None

    chunks: list[np.ndarray] = []
    count = 0
    rounds = 0
    converged = False
    previous: np.ndarray | None = None
    t_timing = clock()
    while True:
        if per_run_s is None:
            target = protocol.min_round_runs
        else:
            target = math.ceil(protocol.round_s / max(per_run_s, 1e-9))
        # A round never takes more than a tenth of the run cap, so fast items still get rounds
        # to compare before the cap.
        n = min(max(target, protocol.min_round_runs), protocol.max_runs - count)
        n = min(n, max(protocol.min_round_runs, protocol.max_runs // 10))
        chunks.append(checked(n))
        per_run_s = float(chunks[-1].sum()) / 1e3 / n
        count += n
        rounds += 1
        headline = np.concatenate(chunks, axis=0).min(axis=0)
        timed_s = (clock() - t_timing) / 1e9
        if previous is not None and rounds >= protocol.min_rounds and timed_s >= protocol.min_s:
            change = np.abs(headline - previous) / np.maximum(previous, 1e-12)
            if bool(np.all(change <= protocol.rel_tol)):
                converged = True
                break
        previous = headline
        if count >= protocol.max_runs or timed_s >= protocol.max_s:
            break

    samples = np.concatenate(chunks, axis=0)
    return [
        summarize(samples[:, j], warmup=warmup, rounds=rounds, converged=converged, info=info)
        for j in range(n_items)
    ]
