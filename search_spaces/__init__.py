"""Built-in search spaces and the registry users pick them from by name."""

from __future__ import annotations

from nas.core.registry import Registry
from nas.core.space import SearchSpace
from search_spaces.fbnet import FBNetSpace
from search_spaces.mobilenetv3 import MobileNetV3Space
from search_spaces.nb201 import NB201Space
from search_spaces.tiny import TinySpace

SPACES: Registry[SearchSpace] = Registry("search space")
SPACES.register("tiny", TinySpace, "small MBConv space for 32x32 inputs; trains in seconds")
SPACES.register("mobilenetv3", MobileNetV3Space, "Once-for-All MobileNetV3 (k, e, d, resolution)")
SPACES.register("nb201", NB201Space, "NAS-Bench-201 cell space, 15,625 cells")
SPACES.register("fbnet", FBNetSpace, "FBNet space, 22 layers x 9 blocks, HW-NAS-Bench CIFAR layout")


def get_space(name: str, **kwargs: object) -> SearchSpace:
    """The registered space `name`, built with `kwargs` (e.g. width_mult=1.2)."""
    return SPACES.get(name, **kwargs)


__all__ = [
    "SPACES",
    "FBNetSpace",
    "MobileNetV3Space",
    "NB201Space",
    "TinySpace",
    "get_space",
]
