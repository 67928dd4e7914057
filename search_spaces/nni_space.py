"""Adapter: search an NNI 3 model space (`nni.choice`, `LayerChoice`, `Mutable*` layers) here.

Only NNI's model-space API is used: `simplify()` lists the dimensions and `freeze(sample)` builds
one network. NNI's experiment runner is never started (it opens a web server on all
interfaces). NNI is an optional extra: `pip install -e ".[nni]"` (NNI needs pytorch-lightning,
which it does not declare).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from torch import nn

from nas.core.space import Choice, SearchSpace

__all__ = [
    "NNIModelSpace",
]


def _require_nni() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NNI warns about torch types it predates
            import nni
            import nni.mutable
    except ImportError as err:
        raise ImportError(
            "the NNI adapter needs NNI 3 and pytorch-lightning: pip install -e '.[nni]'"
        ) from err
    return nni


class NNIModelSpace(SearchSpace):
    """An NNI `ModelSpace` instance seen as a `SearchSpace`: same archs, same networks.

    Every dimension must be a categorical choice of primitive values (`nni.choice`,
    `LayerChoice`, `InputChoice`, `Repeat` depth); continuous NNI mutables are refused with the
    label that is.
    """

    def __init__(
        self,
        model_space: nn.Module,
        input_shape: tuple[int, int, int] = (3, 32, 32),
        num_classes: int = 10,
        name: str | None = None,
    ) -> None:
        nni = _require_nni()
        from nni.nas.nn.pytorch import ModelSpace

        if not isinstance(model_space, ModelSpace):
            raise TypeError(
                f"NNIModelSpace needs an nni.nas.nn.pytorch.ModelSpace instance, got "
                f"{type(model_space).__name__}"
            )
        super().__init__()
        self.model_space = model_space
        self.default_input_shape = input_shape  # type: ignore[misc]
        self.num_classes = num_classes
        self.name = name or f"nni:{type(model_space).__name__}"  # type: ignore[misc]
        self._nni = nni

    def dimensions(self) -> dict[str, Choice]:
        dims: dict[str, Choice] = {}
        unsupported = []
        for label, mutable in self.model_space.simplify().items():
            if isinstance(mutable, self._nni.mutable.Categorical):
                dims[str(label)] = Choice(*mutable.values)
            else:
                unsupported.append(f"{label!r} ({type(mutable).__name__})")
        if unsupported:
            raise ValueError(
                "NNIModelSpace supports categorical choices only (nni.choice, LayerChoice, "
                "InputChoice, Repeat); unsupported: " + ", ".join(unsupported)
            )
        return dims

    def build(self, arch: Mapping[str, Any]) -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            model = self.model_space.freeze(self.validate(arch))
        if not isinstance(model, nn.Module):
            raise TypeError(f"NNI's freeze returned {type(model).__name__}, not an nn.Module")
        return model
