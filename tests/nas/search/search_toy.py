"""A toy space, a fake latency model and a synthetic accuracy for the search tests (shared with
the worker processes those tests start: `python -m tests.nas.search.search_toy ...`)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn

from nas.core.space import Arch, Choice, SearchSpace


class ToySpace(SearchSpace):
    """4 x 4 x 3 x 3 = 144 genotypes; `act` values "relu" and "relu6" build the same network,
    so they share a canonical key (an isomorphism for the dedup tests)."""

    name = "toy"
    dims: ClassVar[Mapping[str, Choice]] = {
        "width": Choice(8, 16, 24, 32),
        "depth": Choice(1, 2, 3, 4),
        "kernel": Choice(3, 5, 7),
        "act": Choice("relu", "relu6", "swish"),
    }

    default_input_shape = (3, 8, 8)

    def build(self, arch: Mapping[str, Any]) -> nn.Module:
        a = self.validate(arch)
        w, k = int(a["width"]), int(a["kernel"])
        act: type[nn.Module] = nn.SiLU if a["act"] == "swish" else nn.ReLU
        layers: list[nn.Module] = []
        c = 3
        for _ in range(int(a["depth"])):
            layers += [nn.Conv2d(c, w, k, padding=k // 2), act()]
            c = w
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))

    def canonical_key(self, arch: Mapping[str, Any]) -> str:
        a = self.validate(arch)
        if a["act"] == "relu6":
            a["act"] = "relu"
        return self.key(a)


class FakeLatency:
    """Latency grows with width, depth and kernel; `scale` makes a second device."""

    def __init__(self, device: str = "fake", scale: float = 1.0, dtype: str = "fp32") -> None:
        self.device, self.dtype, self.scale = device, dtype, scale

    def predict_arch(self, space: SearchSpace, arch: Arch) -> float:
        a = space.validate(arch)
        k = {3: 1.0, 5: 1.6, 7: 2.5}[int(a["kernel"])]
        return self.scale * (0.5 + 0.02 * int(a["width"]) * int(a["depth"]) * k)

    def predict_many(self, space: SearchSpace, archs: Sequence[Arch]) -> np.ndarray:
        return np.array([self.predict_arch(space, a) for a in archs])


def toy_accuracy(arch: Arch) -> float:
    """Bigger is better with diminishing returns; swish helps a little."""
    w, d, k = int(arch["width"]), int(arch["depth"]), int(arch["kernel"])
    base = 60.0 + 25.0 * (1.0 - np.exp(-w * d / 40.0)) + 1.5 * (k - 3) / 4
    return float(base + (1.0 if arch["act"] == "swish" else 0.0))


# -- worker process entry point ------------------------------------------------------------
def _main(argv: Sequence[str] | None = None) -> int:
    """`worker`: join a study and log the trials this process completed; `search`: run (and
    optionally SIGKILL itself during the (kill_after+1)-th paid evaluation)."""
    from nas import search

    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["worker", "search"])
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study", default="search")
    parser.add_argument("--log", required=True)
    parser.add_argument("--sampler", default="random")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--kill-after", type=int, default=-1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heartbeat", type=int, default=None)
    parser.add_argument(
        "--ready", help="folder where workers meet: each waits until --expect of them are there"
    )
    parser.add_argument("--expect", type=int, default=1)
    parser.add_argument("--eval-s", type=float, default=0.0, help="seconds an evaluation takes")
    args = parser.parse_args(argv)
    log = Path(args.log)
    space, lat = ToySpace(), FakeLatency()
    paid = {"n": 0}

    def accuracy(arch: Arch) -> float:
        if paid["n"] == args.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # a crash mid-evaluation
        paid["n"] += 1
        time.sleep(args.eval_s)
        with log.open("a") as f:
            f.write(json.dumps({"paid": space.key(arch), "pid": os.getpid()}) + "\n")
        return toy_accuracy(arch)

    def record(study: Any, trial: Any) -> None:
        with log.open("a") as f:
            f.write(json.dumps({"trial": trial.number, "state": trial.state.name}) + "\n")

    common: dict[str, Any] = {
        "accuracy": accuracy,
        "sampler": args.sampler,
        "seed": args.seed,
        "callbacks": [record],
        "heartbeat_interval_s": args.heartbeat,
        "grace_period_s": 2 * args.heartbeat if args.heartbeat else None,
    }
    if args.ready:
        # Start together: interpreter and torch start-up differ by seconds between processes,
        # long enough for one worker to finish a toy study before the other joins it.
        ready = Path(args.ready)
        ready.mkdir(parents=True, exist_ok=True)
        (ready / str(os.getpid())).touch()
        deadline = time.monotonic() + 120
        while len(list(ready.iterdir())) < args.expect and time.monotonic() < deadline:
            time.sleep(0.05)
    if args.mode == "worker":
        search.join_worker(space, args.storage, args.study, ["accuracy", lat], **common)
    else:
        search.run_search(
            space,
            ["accuracy", lat],
            n_evaluations=args.n,
            storage=args.storage,
            study_name=args.study,
            **common,
        )
    return 0


if __name__ == "__main__":
    sys.exit(_main())
