"""Architecture parameters: one vector of logits per relaxed `Choice` dim of a space, and the
frozen dims (an input resolution: fixed or sampled uniformly, never relaxed)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from nas.core.space import Arch, Choice, Primitive, SearchSpace

__all__ = ["SAMPLE", "ArchLogits"]

SAMPLE = "sample"  # a frozen dim drawn uniformly per step instead of held at one value


class ArchLogits(nn.Module):
    """Logits of the relaxed dims (zeros: uniform at the start) and the policy of frozen dims.

    Every dim of the space has a distribution: a relaxed dim the softmax of its logits, a frozen
    dim a point mass at its value or (`SAMPLE`) the uniform distribution; expectations and
    samples run over all of them, only the relaxed ones learn.
    """

    def __init__(
        self,
        space: SearchSpace,
        relaxed: list[str],
        frozen: Mapping[str, Primitive | str] | None = None,
    ) -> None:
        super().__init__()
        dims = space.dimensions()
        self.space = space
        self.relaxed = list(relaxed)
        self.frozen: dict[str, Primitive | str] = dict(frozen or {})
        unknown = [k for k in [*self.relaxed, *self.frozen] if k not in dims]
        if unknown:
            raise ValueError(f"dims {unknown} are not dims of space {space.name!r}")
        left = [k for k in dims if k not in self.relaxed and k not in self.frozen]
        if left:
            raise ValueError(f"dims {left} are neither relaxed nor frozen")
        for k, v in self.frozen.items():
            if v != SAMPLE and dims[k].coerce(v) is None:
                raise ValueError(
                    f"frozen dim {k!r}={v!r} is not one of {list(dims[k].values)} (or {SAMPLE!r})"
                )
        self.choices: dict[str, Choice] = dict(dims)
        self.offsets: dict[str, int] = {}
        n = 0
        for k in self.relaxed:
            self.offsets[k] = n
            n += len(dims[k])
        self.alpha = nn.Parameter(torch.zeros(n))

    def logits(self, dim: str) -> Tensor:
        start = self.offsets[dim]
        return self.alpha[start : start + len(self.choices[dim])]

    def log_probs(self) -> dict[str, Tensor]:
        """Per dim of the space (in its order), the log-probability of each value (float64:
        expectations over thousands of archs keep their digits)."""
        out: dict[str, Tensor] = {}
        for k, c in self.choices.items():
            if k in self.offsets:
                out[k] = torch.log_softmax(self.logits(k).double(), dim=0)
            elif self.frozen[k] == SAMPLE:
                out[k] = torch.full((len(c),), -float(np.log(len(c))), dtype=torch.float64)
            else:
                row = torch.full((len(c),), -float("inf"), dtype=torch.float64)
                row[c.index(self.frozen[k])] = 0.0
                out[k] = row
        return out

    def probs(self) -> dict[str, np.ndarray]:
        with torch.no_grad():
            return {k: v.exp().numpy().astype(np.float64) for k, v in self.log_probs().items()}

    def support(self, dim: str) -> list[int]:
        """Indices of the values `dim` can take (all but a fixed dim's other values)."""
        if dim in self.frozen and self.frozen[dim] != SAMPLE:
            return [self.choices[dim].index(self.frozen[dim])]
        return list(range(len(self.choices[dim])))

    def argmax_arch(self) -> Arch:
        """The most likely arch: per dim its most probable value (a sampled frozen dim: its
        largest value, as a deployment would pick)."""
        arch: Arch = {}
        for k, p in self.probs().items():
            c = self.choices[k]
            if k in self.frozen and self.frozen[k] == SAMPLE:
                arch[k] = max(c.values)
            else:
                arch[k] = c.values[int(np.argmax(p))]
        return arch

    def sample_arch(self, rng: np.random.Generator) -> Arch:
        """One arch drawn from the distributions (numpy: the Monte-Carlo checks use it)."""
        arch: Arch = {}
        for k, p in self.probs().items():
            arch[k] = self.choices[k].values[int(rng.choice(len(p), p=p / p.sum()))]
        return arch

    def table(self) -> dict[str, dict[str, float]]:
        """Probability per value per relaxed dim (JSON-ready: the trajectory's rows)."""
        probs = self.probs()
        return {
            k: {str(v): round(float(p), 6) for v, p in zip(self.choices[k], probs[k], strict=True)}
            for k in self.relaxed
        }

    def extra_repr(self) -> str:
        return f"relaxed={len(self.relaxed)}, frozen={self.frozen}"
