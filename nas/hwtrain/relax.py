"""Relaxing a supernet's choices: which modules each `Choice` dim drives (found by probing the
supernet, so any registered space works), and the two relaxations of a training step.

- Gumbel-softmax (FBNet, Wu et al., CVPR 2019): a mixed op's candidates are summed with the
  Gumbel-softmax weights at temperature tau; an elastic dim (kernel, expand, width, depth) runs
  its hard sample and its modules' outputs are scaled by the straight-through weight (GDAS,
  Dong & Yang, CVPR 2019: forward value 1, gradient through the soft weight).
- Sampled paths (ProxylessNAS, Cai et al., ICLR 2019): binary gates with straight-through
  gradients; `paths=2` runs two candidates of a mixed op, re-normalised over the pair, so the
  memory stays that of about one subnet. Elastic dims always run one path (their candidates
  share one weight).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from nas.core.elastic import MixedOp, Supernet
from nas.core.space import Arch, Primitive
from nas.hwtrain.logits import SAMPLE, ArchLogits

__all__ = ["RELAXATIONS", "DimRole", "NotRelaxableError", "Relaxation", "probe_dims"]

RELAXATIONS = ("gumbel", "proxyless")


class NotRelaxableError(ValueError):
    """Dims of a space that its supernet cannot relax; the message names them."""


@dataclass(frozen=True)
class DimRole:
    """How one dim enters the supernet: `mixed` (the `MixedOp`s it chooses in), `gate` (the
    elastic modules it reconfigures; none: the whole network, as a depth does) or `input`
    (it changes the input shape: frozen, not relaxed)."""

    kind: str
    modules: tuple[str, ...] = ()


def _signatures(net: nn.Module) -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    for name, m in net.named_modules():
        sig = tuple(
            (k, v)
            for k, v in sorted(vars(m).items())
            if k.startswith("active") and isinstance(v, int | str | tuple)
        )
        if name and sig:
            out[name] = sig
    return out


def _ran(net: Supernet, arch: Arch) -> set[str]:
    ran: set[str] = set()
    hooks = [
        m.register_forward_hook(lambda *_, n=name: ran.add(n))
        for name, m in net.named_modules()
        if name
    ]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad(), net.using(arch):
            net(torch.zeros(2, *net.space.input_shape(arch)))
    finally:
        net.train(was_training)
        for h in hooks:
            h.remove()
    return ran


def probe_dims(net: Supernet) -> dict[str, DimRole]:
    """The role of every dim, found by changing it alone from the largest arch and looking at
    what changes in the supernet; raises `NotRelaxableError` naming the dims that change
    nothing it can see."""
    space = net.space
    base = space.validate(net.largest_arch())
    with net.using(base):
        before = _signatures(net)
    ran_before: set[str] | None = None
    roles: dict[str, DimRole] = {}
    dead: list[str] = []
    for dim, choice in space.dimensions().items():
        other = dict(base, **{dim: next(v for v in choice.values if v != base[dim])})
        if space.input_shape(other) != space.input_shape(base):
            roles[dim] = DimRole("input")
            continue
        with net.using(other):
            after = _signatures(net)
        changed = sorted(n for n in before if after.get(n) != before[n])
        outer = tuple(n for n in changed if not any(n.startswith(o + ".") for o in changed))
        if outer:
            mixed = all(isinstance(net.get_submodule(n), MixedOp) for n in outer) and all(
                str(v) in net.get_submodule(n).candidates  # type: ignore[operator]
                for n in outer
                for v in choice.values
            )
            roles[dim] = DimRole("mixed" if mixed else "gate", outer)
            continue
        ran_before = _ran(net, base) if ran_before is None else ran_before
        if _ran(net, other) != ran_before:
            roles[dim] = DimRole("gate")  # a depth: no module changes, others run
        else:
            dead.append(dim)
    if dead:
        raise NotRelaxableError(
            f"space {space.name!r}: its supernet cannot relax dims {dead} (changing them "
            "changes no module of the supernet); relax another space or freeze them"
        )
    return roles


class Relaxation:
    """The per-step relaxation of `logits` over `net`, applied by forward hooks.

    `step(tau, generator)` draws this step's arch, makes it the supernet's active one and
    arms the hooks with its weights; `uniform(generator)` draws uniformly with the hooks idle
    (weight warm-up). Use as a context manager (`with relax.attached(): ...`).
    """

    def __init__(
        self,
        net: Supernet,
        logits: ArchLogits,
        roles: Mapping[str, DimRole],
        method: str = "gumbel",
        paths: int = 1,
    ) -> None:
        if method not in RELAXATIONS:
            raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {method!r}")
        if paths not in (1, 2):
            raise ValueError(f"paths must be 1 or 2 (ProxylessNAS), got {paths!r}")
        if method == "gumbel" and paths != 1:
            raise ValueError("paths=2 is the ProxylessNAS relaxation's; Gumbel runs all paths")
        self.net, self.logits, self.roles = net, logits, dict(roles)
        self.method, self.paths = method, paths
        self._gates: dict[str, Tensor] = {}
        self._mix: dict[str, Tensor] = {}

    @contextmanager
    def attached(self) -> Iterator[Relaxation]:
        hooks = []
        gated: dict[str, list[str]] = {}
        for dim in self.logits.relaxed:
            role = self.roles[dim]
            for name in role.modules or ("",):
                if role.kind == "mixed":
                    m = self.net.get_submodule(name)
                    hooks.append(m.register_forward_hook(self._mixer(dim)))
                else:
                    gated.setdefault(name, []).append(dim)
        for name, dims in gated.items():
            hooks.append(self.net.get_submodule(name).register_forward_hook(self._gater(dims)))
        try:
            yield self
        finally:
            for h in hooks:
                h.remove()
            self.idle()

    def idle(self) -> None:
        self._gates.clear()
        self._mix.clear()

    def _gater(self, dims: list[str]) -> Any:
        def hook(_m: nn.Module, _inputs: Any, output: Tensor) -> Tensor | None:
            gates = [self._gates[d] for d in dims if d in self._gates]
            for g in gates:
                output = output * g
            return output if gates else None

        return hook

    def _mixer(self, dim: str) -> Any:
        values = [str(v) for v in self.logits.choices[dim].values]

        def hook(m: nn.Module, inputs: Any, output: Tensor) -> Tensor | None:
            w = self._mix.get(dim)
            if w is None:
                return None
            assert isinstance(m, MixedOp)
            out = torch.zeros_like(output)
            for i in torch.nonzero(w.detach() != 0).flatten().tolist():
                name = values[i]
                y = output if name == m.active else m.candidates[name](inputs[0])
                out = out + w[i] * y
            return out

        return hook

    def uniform(self, generator: torch.Generator) -> Arch:
        """A uniformly drawn arch (frozen dims by their policy), hooks idle."""
        self.idle()
        arch = self._draw(lambda k: torch.zeros(len(self.logits.choices[k])), generator)
        self.net.set_arch(arch)
        return arch

    def step(self, tau: float, generator: torch.Generator) -> Arch:
        """This step's arch from the logits, with the hooks armed for its gradients."""
        self.idle()
        picks: dict[str, int] = {}
        for dim in self.logits.relaxed:
            picks[dim] = self._relax_dim(dim, tau, generator)
        arch = self._draw(lambda k: torch.zeros(len(self.logits.choices[k])), generator)
        for dim, i in picks.items():
            arch[dim] = self.logits.choices[dim].values[i]
        self.net.set_arch(arch)
        return arch

    def _relax_dim(self, dim: str, tau: float, generator: torch.Generator) -> int:
        alpha = self.logits.logits(dim)
        mixed = self.roles[dim].kind == "mixed"
        if self.method == "gumbel":
            u = torch.rand(alpha.shape, generator=generator).clamp_(1e-10, 1 - 1e-10)
            y = torch.softmax((alpha - torch.log(-torch.log(u))) / tau, dim=0)
            i = int(torch.argmax(y))
            if mixed:
                self._mix[dim] = y
            else:
                self._gates[dim] = 1.0 - y[i].detach() + y[i]
            return i
        p = torch.softmax(alpha, dim=0)
        if self.paths == 2 and mixed and len(p) > 1:
            pair = torch.multinomial(p.detach(), 2, replacement=False, generator=generator)
            q = torch.softmax(alpha[pair], dim=0)
            j = int(torch.multinomial(q.detach(), 1, generator=generator))
            hard = torch.zeros(2).index_fill_(0, torch.tensor([j]), 1.0)
            w = torch.zeros_like(p).index_add(0, pair, hard + q - q.detach())
            self._mix[dim] = w
            return int(pair[j])
        i = int(torch.multinomial(p.detach(), 1, generator=generator))
        gate = 1.0 - p[i].detach() + p[i]
        if mixed:  # one candidate runs, weighted by its straight-through gate
            self._mix[dim] = torch.zeros_like(p).index_put((torch.tensor([i]),), gate)
        else:
            self._gates[dim] = gate
        return i

    def _draw(self, zeros: Any, generator: torch.Generator) -> Arch:
        arch: Arch = {}
        for k, c in self.logits.choices.items():
            policy: Primitive | str | None = self.logits.frozen.get(k)
            if policy is not None and policy != SAMPLE:
                arch[k] = c.coerce(policy)  # type: ignore[assignment]
                continue
            i = int(torch.multinomial(torch.softmax(zeros(k), 0), 1, generator=generator))
            arch[k] = c.values[i]
        return arch
