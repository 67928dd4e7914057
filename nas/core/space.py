"""Search spaces: choice dimensions, archs, and what every space gets for free.

A space lists its dimensions as `Choice`s and builds a plain `nn.Module` from an arch. Genotypes
are fixed-length (every arch has every key) because Optuna's NSGA-II only samples parameters
present in every trial; slots a given arch does not use (blocks beyond a stage's depth) are
*inactive* and masked in the arch's key, so two archs that build the same network share a key.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from torch import nn

from nas.core.layers import ArchCost, LayerSpec, cost_from_specs, trace_layer_specs

if TYPE_CHECKING:
    import optuna

__all__ = [
    "INACTIVE",
    "Arch",
    "Choice",
    "InvalidArchError",
    "Primitive",
    "RngLike",
    "SearchSpace",
    "as_rng",
]

Primitive = int | float | str | bool
Arch = dict[str, Primitive]
RngLike = np.random.Generator | int | None

INACTIVE = "-"  # how an unused slot reads in an arch key


def as_rng(rng: RngLike) -> np.random.Generator:
    """A `numpy.random.Generator` from a seed, a generator, or None (fresh entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


class InvalidArchError(ValueError):
    """An arch does not fit its space; the message lists every problem at once."""


class Choice:
    """One dimension: a fixed, ordered tuple of primitive values of one type."""

    def __init__(self, *values: Primitive) -> None:
        if len(values) == 1 and isinstance(values[0], (list, tuple)):
            values = tuple(values[0])
        if not values:
            raise ValueError("Choice needs at least one value, got none")
        kinds = {_kind(v) for v in values}
        if len(kinds) != 1:
            raise ValueError(
                f"Choice values must share one type (int, float, str or bool), got {values!r}"
            )
        if len(set(values)) != len(values):
            raise ValueError(f"Choice values must be distinct, got {values!r}")
        self.values: tuple[Primitive, ...] = tuple(values)
        self.kind: str = kinds.pop()

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[Primitive]:
        return iter(self.values)

    def __contains__(self, value: object) -> bool:
        return self.coerce(value) is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Choice) and self.values == other.values

    def __hash__(self) -> int:
        return hash(self.values)

    def __repr__(self) -> str:
        return f"Choice{self.values!r}"

    @property
    def is_ordinal(self) -> bool:
        """Numeric choices have an order that encodings may use."""
        return self.kind in ("int", "float")

    def coerce(self, value: object) -> Primitive | None:
        """The matching choice value for `value` (numpy scalars accepted), or None."""
        if isinstance(value, np.generic):
            value = value.item()
        if _kind(value) != self.kind and not (self.kind == "float" and _kind(value) == "int"):
            return None
        for v in self.values:
            if v == value:
                return v
        return None

    def index(self, value: Primitive) -> int:
        v = self.coerce(value)
        if v is None:
            raise ValueError(f"{value!r} is not one of {self.values!r}")
        return self.values.index(v)


def _kind(value: object) -> str:
    # bool before int: bool is a subclass of int
    for kind, t in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(value, t):
            return kind
    return type(value).__name__


class SearchSpace:
    """Base class of every space: subclass, set `dims` (or override `dimensions`), write `build`.

    Everything else (sampling, mutation, crossover, validation, encodings, enumeration, Optuna
    suggestion, layer specs, MACs, params, peak memory) comes from here. Override
    `inactive_keys` where some slots go unused, `input_shape` where the input varies with the
    arch, `block_specs` where a block is priced as one unit, and `canonical_key` where distinct
    genotypes build the same network.
    """

    name: ClassVar[str] = ""
    dims: ClassVar[Mapping[str, Choice]] = {}
    #: (C, H, W) of one input image, unless `input_shape` says otherwise per arch
    default_input_shape: ClassVar[tuple[int, int, int]] = (3, 32, 32)
    num_classes: int = 10
    #: above this many genotypes, `enumerate` refuses (pass `limit` to take the first ones)
    max_enumerate: ClassVar[int] = 1_000_000

    def __init__(self) -> None:
        self._spec_cache: dict[str, list[LayerSpec]] = {}
        self._block_cache: dict[tuple[Hashable, tuple[int, ...]], list[LayerSpec]] = {}

    # -- what a space says about itself ------------------------------------------------------
    def dimensions(self) -> dict[str, Choice]:
        """The ordered dimensions of the space. Instances may depend on constructor args."""
        return dict(self.dims)

    @cached_property
    def _dims(self) -> dict[str, Choice]:
        dims = self.dimensions()
        if not dims:
            raise TypeError(f"{type(self).__name__} defines no dimensions (set `dims`)")
        for k, c in dims.items():
            if not isinstance(c, Choice):
                raise TypeError(f"dimension {k!r} of {type(self).__name__} is not a Choice: {c!r}")
        return dims

    @property
    def keys(self) -> list[str]:
        return list(self._dims)

    def build(self, arch: Mapping[str, Primitive]) -> nn.Module:
        """A plain, standalone `nn.Module` for one arch."""
        raise NotImplementedError(f"{type(self).__name__} does not implement build(arch)")

    def proxy_build(self, arch: Mapping[str, Primitive]) -> nn.Module:
        """The network a zero-cost proxy scores untrained: `build(arch)` unless a space
        returns a narrower, shallower copy that ranks its archs alike at a fraction of the cost."""
        return self.build(arch)

    def input_shape(self, arch: Mapping[str, Primitive]) -> tuple[int, int, int]:
        """(C, H, W) of the input this arch takes (batch excluded)."""
        return self.default_input_shape

    def inactive_keys(self, arch: Mapping[str, Primitive]) -> set[str]:
        """Keys whose value does not change the network built for `arch`."""
        return set()

    def block_specs(self, arch: Mapping[str, Primitive]) -> list[LayerSpec] | None:
        """Block-level specs where the space prices blocks as units; None to trace `build`."""
        return None

    def supernet(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} has no weight-sharing supernet yet")

    # -- genotype counting -------------------------------------------------------------------
    @property
    def n_genotypes(self) -> int:
        """Number of fixed-length genotypes (product of the choice sizes)."""
        return math.prod(len(c) for c in self._dims.values())

    def size(self) -> int:
        """Number of distinct archs: genotypes whose masked keys differ.

        Counted exactly by enumeration for small spaces; spaces with inactive slots too large
        to enumerate override this with a closed form.
        """
        if not self.has_inactive_slots():
            return self.n_genotypes
        if self.n_genotypes > self.max_enumerate:
            raise NotImplementedError(
                f"{type(self).__name__} has {self.n_genotypes:,} genotypes with inactive slots: "
                "override size() with a closed form"
            )
        return len({self.key(a) for a in self.enumerate()})

    def has_inactive_slots(self) -> bool:
        return type(self).inactive_keys is not SearchSpace.inactive_keys

    # -- validation and keys -----------------------------------------------------------------
    def validate(self, arch: Mapping[str, Any]) -> Arch:
        """A clean copy of `arch` in dimension order, or one error naming every problem."""
        if not isinstance(arch, Mapping):
            raise InvalidArchError(
                f"an arch of space {self.name!r} is a mapping of dimension -> value, "
                f"got {type(arch).__name__}: {arch!r}"
            )
        problems: list[str] = []
        clean: Arch = {}
        for key, choice in self._dims.items():
            if key not in arch:
                problems.append(f"missing key {key!r} (valid values: {list(choice.values)})")
                continue
            v = choice.coerce(arch[key])
            if v is None:
                problems.append(
                    f"{key!r}={arch[key]!r} is not a valid value (valid values: "
                    f"{list(choice.values)})"
                )
            else:
                clean[key] = v
        extra = [k for k in arch if k not in self._dims]
        if extra:
            close = {k: _close(str(k), self.keys) for k in extra}
            hints = ", ".join(
                f"{k!r}" + (f" (did you mean {close[k]!r}?)" if close[k] else "") for k in extra
            )
            problems.append(f"unknown key(s) {hints}")
        if problems:
            raise InvalidArchError(f"invalid arch for space {self.name!r}: " + "; ".join(problems))
        return clean

    def key(self, arch: Mapping[str, Any]) -> str:
        """Stable, readable key; inactive slots read as `-`."""
        a = self.validate(arch)
        inactive = self.inactive_keys(a)
        return "|".join(f"{k}={INACTIVE if k in inactive else a[k]}" for k in a)

    def from_key(self, key: str) -> Arch:
        """The arch of a key written by `key` (inactive slots come back as their first choice)."""
        if not isinstance(key, str) or "=" not in key:
            raise InvalidArchError(
                f"not an arch key of space {self.name!r}: {key!r}; keys read "
                f"'{self.keys[0]}=...|{self.keys[1] if len(self.keys) > 1 else '...'}=...'"
            )
        raw: dict[str, Any] = {}
        for part in key.split("|"):
            name, _, text = part.partition("=")
            choice = self._dims.get(name)
            if choice is None or text == INACTIVE:
                raw[name] = choice.values[0] if choice is not None and text == INACTIVE else text
                continue
            raw[name] = next((v for v in choice.values if str(v) == text), text)
        arch = self.validate(raw)
        if self.key(arch) != key:
            raise InvalidArchError(f"{key!r} is not the key of any arch of space {self.name!r}")
        return arch

    def canonical_key(self, arch: Mapping[str, Any]) -> str:
        """Key shared by every arch that builds an equivalent network (default: `key`)."""
        return self.key(arch)

    def normalize(self, arch: Mapping[str, Any]) -> Arch:
        """The representative genotype of `arch`: inactive slots set to their first choice."""
        a = self.validate(arch)
        for k in self.inactive_keys(a):
            a[k] = self._dims[k].values[0]
        return a

    # -- sampling and variation --------------------------------------------------------------
    def sample(self, rng: RngLike = None) -> Arch:
        g = as_rng(rng)
        return {k: c.values[int(g.integers(len(c)))] for k, c in self._dims.items()}

    def mutate(self, arch: Mapping[str, Any], rng: RngLike = None, prob: float = 0.1) -> Arch:
        """Resample each dimension with probability `prob`, always changing at least one
        active dimension (a mutation that changes nothing wastes an evaluation)."""
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"mutation prob must be in [0, 1], got {prob}")
        g = as_rng(rng)
        child = self.validate(arch)
        before = self.key(child)
        for k, c in self._dims.items():
            if len(c) > 1 and g.random() < prob:
                child[k] = _other(c, child[k], g)
        for _ in range(100):
            if self.key(child) != before:
                break
            active = [
                k
                for k in self._dims
                if len(self._dims[k]) > 1 and k not in self.inactive_keys(child)
            ]
            if not active:
                break
            k = active[int(g.integers(len(active)))]
            child[k] = _other(self._dims[k], child[k], g)
        return child

    def crossover(self, a: Mapping[str, Any], b: Mapping[str, Any], rng: RngLike = None) -> Arch:
        """Uniform crossover: each dimension from either parent with equal odds."""
        g = as_rng(rng)
        pa, pb = self.validate(a), self.validate(b)
        return {k: (pa[k] if g.random() < 0.5 else pb[k]) for k in self._dims}

    def enumerate(self, limit: int | None = None) -> Iterator[Arch]:
        """Every genotype in a fixed order (itertools.product over dimensions)."""
        if limit is None and self.n_genotypes > self.max_enumerate:
            raise ValueError(
                f"space {self.name!r} has {self.n_genotypes:,} genotypes, more than "
                f"max_enumerate={self.max_enumerate:,}; pass limit=N to take the first N"
            )
        keys = self.keys
        combos = itertools.product(*(self._dims[k].values for k in keys))
        for combo in itertools.islice(combos, limit):
            yield dict(zip(keys, combo, strict=True))

    def suggest(self, trial: optuna.trial.BaseTrial) -> Arch:
        """Ask an Optuna trial for every dimension (fixed-length, so NSGA-II sees them all)."""
        arch: Arch = {}
        for k, c in self._dims.items():
            value = trial.suggest_categorical(k, list(c.values))
            assert value is not None  # choices are never None
            arch[k] = value
        return arch

    # -- encodings ---------------------------------------------------------------------------
    def feature_names(self, kind: str = "onehot") -> list[str]:
        _check_kind(kind)
        if kind == "ordinal":
            return self.keys
        return [f"{k}={v}" for k, c in self._dims.items() for v in c.values]

    def encode(self, arch: Mapping[str, Any], kind: str = "onehot") -> np.ndarray:
        """One-hot (one column per value, inactive slots all zero) or ordinal (the choice index
        scaled to [0, 1]; -1 for inactive slots)."""
        _check_kind(kind)
        a = self.validate(arch)
        inactive = self.inactive_keys(a)
        if kind == "ordinal":
            out = np.empty(len(self._dims), dtype=np.float32)
            for i, (k, c) in enumerate(self._dims.items()):
                out[i] = -1.0 if k in inactive else c.index(a[k]) / max(len(c) - 1, 1)
            return out
        vec = np.zeros(sum(len(c) for c in self._dims.values()), dtype=np.float32)
        offset = 0
        for k, c in self._dims.items():
            if k not in inactive:
                vec[offset + c.index(a[k])] = 1.0
            offset += len(c)
        return vec

    def encode_many(self, archs: Sequence[Mapping[str, Any]], kind: str = "onehot") -> np.ndarray:
        return (
            np.stack([self.encode(a, kind) for a in archs])
            if archs
            else np.zeros((0, len(self.feature_names(kind))), dtype=np.float32)
        )

    def decode(self, vec: Sequence[float] | np.ndarray, kind: str = "onehot") -> Arch:
        """Inverse of `encode`; inactive slots come back as their first choice."""
        _check_kind(kind)
        v = np.asarray(vec, dtype=np.float64).ravel()
        expected = len(self.feature_names(kind))
        if v.size != expected:
            raise ValueError(
                f"a {kind} vector of space {self.name!r} has {expected} entries, got {v.size}"
            )
        arch: Arch = {}
        if kind == "ordinal":
            for x, (k, c) in zip(v, self._dims.items(), strict=True):
                i = 0 if x < 0 else int(np.rint(x * max(len(c) - 1, 1)))
                arch[k] = c.values[min(max(i, 0), len(c) - 1)]
            return arch
        offset = 0
        for k, c in self._dims.items():
            block = v[offset : offset + len(c)]
            arch[k] = c.values[int(np.argmax(block))] if block.any() else c.values[0]
            offset += len(c)
        return arch

    # -- what an arch costs ------------------------------------------------------------------
    def layer_specs(self, arch: Mapping[str, Any], dtype: str = "fp32") -> list[LayerSpec]:
        """The layer specs a latency model prices, cached per arch key and dtype."""
        a = self.validate(arch)
        cache_key = f"{self.key(a)}#{dtype}"
        specs = self._spec_cache.get(cache_key)
        if specs is None:
            blocks = self.block_specs(a)
            if blocks is not None:
                specs = [s.with_dtype(dtype) for s in blocks] if dtype != "fp32" else blocks
            else:
                specs = trace_layer_specs(lambda: self.build(a), self.input_shape(a), dtype=dtype)
            self._spec_cache[cache_key] = specs
        return specs

    def traced_block(
        self,
        block_key: Hashable,
        factory: Callable[[], nn.Module],
        input_shape: Sequence[int],
    ) -> list[LayerSpec]:
        """Specs of one block, traced once per (block_key, input shape) and then reused.

        Spaces that chain blocks compose their `block_specs` from this: after warm-up an arch
        costs a few dictionary look-ups. `block_key` must determine the block's structure.
        """
        key = (block_key, tuple(int(s) for s in input_shape))
        specs = self._block_cache.get(key)
        if specs is None:
            specs = trace_layer_specs(factory, input_shape)
            self._block_cache[key] = specs
        return specs

    def cost(self, arch: Mapping[str, Any]) -> ArchCost:
        """MACs, parameters and peak activation memory (batch 1, fp32) of an arch."""
        return cost_from_specs(self.layer_specs(arch))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dims={len(self._dims)})"


def _other(choice: Choice, current: Primitive, g: np.random.Generator) -> Primitive:
    options = [v for v in choice.values if v != current]
    return options[int(g.integers(len(options)))]


def _check_kind(kind: str) -> None:
    if kind not in ("onehot", "ordinal"):
        raise ValueError(f"encoding kind must be 'onehot' or 'ordinal', got {kind!r}")


def _close(word: str, candidates: Sequence[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(word, list(candidates), n=1)
    return match[0] if match else None
