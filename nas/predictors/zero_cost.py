"""Zero-cost proxies of an untrained network's accuracy, cached per arch: synflow (data-free;
Tanaka et al. 2020, as a NAS proxy in Abdelfattah et al. 2021) and jacov (a minibatch of images;
Mellor et al. 2021)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nas.core.files import FileProblem, read_json, write_json_atomic
from nas.core.space import Arch, SearchSpace

__all__ = ["PROXIES", "ZeroCostProxy", "jacov", "synflow"]

PROXIES = ("synflow", "jacov")


@torch.no_grad()
def _linearize(net: nn.Module) -> None:
    for p in net.state_dict().values():
        p.abs_()


def synflow(net: nn.Module, input_shape: tuple[int, ...]) -> float:
    """log10(1 + synaptic flow): the sum over weights of |w * dR/dw|, R the summed output of the
    network with |weights| on an all-ones input, in float64 with BatchNorm in eval mode (its
    running statistics at initialisation: the identity), so no data is needed."""
    net = net.double().eval()
    _linearize(net)
    net.zero_grad()
    out = net(torch.ones((1, *input_shape), dtype=torch.float64))
    torch.sum(out).backward()
    total = 0.0
    for p in net.parameters():
        if p.grad is not None:
            total += float((p.detach() * p.grad).abs().sum())
    return math.log10(1.0 + total) if math.isfinite(total) else 0.0


def jacov(net: nn.Module, images: torch.Tensor) -> float:
    """Jacobian covariance: how differently the untrained network responds to each image of a
    minibatch (the correlations of the input gradients of its summed output); higher is
    better. Needs images, not labels."""
    net = net.float().train()
    x = images.detach().clone().float().requires_grad_(True)
    net.zero_grad()
    out = net(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    jac = grad.reshape(len(x), -1).double().numpy()
    jac = jac - jac.mean(1, keepdims=True)
    norm = np.linalg.norm(jac, axis=1, keepdims=True)
    if not np.all(norm > 0):
        return -1e3  # a network whose output ignores its input: the worst score
    corr = (jac / norm) @ (jac / norm).T
    v = np.linalg.eigvalsh(corr)
    k = 1e-5
    return float(-np.sum(np.log(v + k) + 1.0 / (v + k)) / len(x))


class ZeroCostProxy:
    """A proxy as a free score of archs (`many(archs)`, higher is better), computed on each
    arch's freshly built network (`build(arch)`, default `space.build`; pass a narrower
    space's build for speed) and cached by canonical key: isomorphic archs share a score.
    `images` (a minibatch, N x C x H x W) are needed by "jacov" only; `input_shape` defaults to
    the space's. `seed` fixes each network's initial weights. `save`/`load` keep the cache in a
    JSON file, so a benchmark computes each arch once across seeds and runs."""

    def __init__(
        self,
        space: SearchSpace,
        kind: str = "synflow",
        images: torch.Tensor | None = None,
        build: Callable[[Arch], nn.Module] | None = None,
        input_shape: tuple[int, ...] | None = None,
        seed: int = 0,
    ) -> None:
        if kind not in PROXIES:
            raise ValueError(f"unknown zero-cost proxy {kind!r}; valid: {', '.join(PROXIES)}")
        if kind == "jacov" and images is None:
            raise ValueError("the 'jacov' proxy needs a minibatch of images (images=...)")
        self.space, self.kind, self.images, self.seed = space, kind, images, seed
        self.build = build or space.build
        self.input_shape = input_shape or (
            tuple(images.shape[1:]) if images is not None else space.default_input_shape
        )
        self.cache: dict[str, float] = {}
        self.compute_s = 0.0  # time spent computing (not looking up) scores
        self.n_computed = 0

    def score(self, arch: Arch) -> float:
        key = self.space.canonical_key(arch)
        if key not in self.cache:
            t0 = time.perf_counter()
            torch.manual_seed(self.seed)
            with torch.random.fork_rng(devices=[]):
                net = self.build(arch)
            if self.kind == "synflow":
                value = synflow(net, tuple(self.input_shape))
            else:
                assert self.images is not None
                value = jacov(net, self.images)
            self.cache[key] = value
            self.compute_s += time.perf_counter() - t0
            self.n_computed += 1
        return self.cache[key]

    def many(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.array([self.score(a) for a in archs], dtype=np.float64)

    __call__ = many

    def save(self, path: str | Path) -> None:
        payload = {"kind": self.kind, "seed": self.seed, "scores": self.cache}
        write_json_atomic(path, payload, indent=None)

    def load(self, path: str | Path) -> ZeroCostProxy:
        """Merge a saved cache of the same proxy and seed (a missing file is an empty cache)."""
        p = Path(path)
        if not p.exists():
            return self
        remedy = "delete it; it is rebuilt"
        payload = read_json(p, "a zero-cost proxy cache", remedy)
        try:
            ok = payload["kind"] == self.kind and payload["seed"] == self.seed
            scores = {str(k): float(v) for k, v in payload["scores"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise FileProblem(p, f"is not a zero-cost proxy cache ({err})", remedy) from None
        if not ok:
            raise FileProblem(
                p,
                f"holds {payload['kind']!r} scores of seed {payload['seed']}, not {self.kind!r} "
                f"of seed {self.seed}",
                "use another cache file",
            )
        self.cache.update(scores)
        return self
