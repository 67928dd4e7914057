"""Hardware-aware neural architecture search for mobile and edge devices: the front door.

    import nas
    space = nas.get_space("tiny")
    study = nas.run_search(space, ["macs", "params"], n_evaluations=50)
    nas.pareto_frame(study)

The names below are the ones a user needs; each lives in a subpackage (`nas.core`, `nas.data`,
`nas.supernet`, `nas.predictors`, `nas.search`, `nas.compress`, `nas.app`) and is imported when
first used, so `import nas` stays cheap and a wing that imports `nas.core` does not pull in the
whole engine. Devices, lookup tables and latency models live in `latency_models`; built-in
search spaces in `search_spaces`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module it comes from
_EXPORTS: dict[str, str] = {
    # search spaces and what they are made of
    "Arch": "nas.core.space",
    "Choice": "nas.core.space",
    "InvalidArchError": "nas.core.space",
    "SearchSpace": "nas.core.space",
    "LayerSpec": "nas.core.layers",
    "Supernet": "nas.core.elastic",
    "Registry": "nas.core.registry",
    "UnknownNameError": "nas.core.registry",
    "LatencyModel": "nas.core.protocols",
    "get_space": "search_spaces",
    "SPACES": "search_spaces",
    # data
    "ImageDataset": "nas.data",
    "load_dataset": "nas.data",
    # supernets
    "SupernetConfig": "nas.supernet",
    "SubnetEvaluator": "nas.supernet",
    "load_supernet": "nas.supernet",
    "recalibrate_bn": "nas.supernet",
    "train_supernet": "nas.supernet",
    # accuracy predictors
    "load_predictor": "nas.predictors",
    "make_predictor": "nas.predictors",
    "ranking_metrics": "nas.predictors",
    # search
    "create_search": "nas.search",
    "export_pareto_csv": "nas.search",
    "join_worker": "nas.search",
    "pareto_frame": "nas.search",
    "run_search": "nas.search",
    "sqlite_url": "nas.search",
    "trials_frame": "nas.search",
    # compression
    "ChainConfig": "nas.compress",
    "run_chain": "nas.compress",
    # runs
    "demo_config": "nas.app.demo",
    "load_config": "nas.app.config",
    "plan": "nas.app.pipeline",
    "run_pipeline": "nas.app.pipeline",
    "train_memory_metrics": "nas.app.train_memory",
}

__all__ = [
    "SPACES",
    "Arch",
    "ChainConfig",
    "Choice",
    "ImageDataset",
    "InvalidArchError",
    "LatencyModel",
    "LayerSpec",
    "Registry",
    "SearchSpace",
    "SubnetEvaluator",
    "Supernet",
    "SupernetConfig",
    "UnknownNameError",
    "__version__",
    "create_search",
    "demo_config",
    "export_pareto_csv",
    "get_space",
    "join_worker",
    "load_config",
    "load_dataset",
    "load_predictor",
    "load_supernet",
    "make_predictor",
    "pareto_frame",
    "plan",
    "ranking_metrics",
    "recalibrate_bn",
    "run_chain",
    "run_pipeline",
    "run_search",
    "sqlite_url",
    "train_memory_metrics",
    "train_supernet",
    "trials_frame",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nas' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from nas.app.config import load_config
    from nas.app.demo import demo_config
    from nas.app.pipeline import plan, run_pipeline
    from nas.app.train_memory import train_memory_metrics
    from nas.compress import ChainConfig, run_chain
    from nas.core.elastic import Supernet
    from nas.core.layers import LayerSpec
    from nas.core.protocols import LatencyModel
    from nas.core.registry import Registry, UnknownNameError
    from nas.core.space import Arch, Choice, InvalidArchError, SearchSpace
    from nas.data import ImageDataset, load_dataset
    from nas.predictors import load_predictor, make_predictor, ranking_metrics
    from nas.search import (
        create_search,
        export_pareto_csv,
        join_worker,
        pareto_frame,
        run_search,
        sqlite_url,
        trials_frame,
    )
    from nas.supernet import (
        SubnetEvaluator,
        SupernetConfig,
        load_supernet,
        recalibrate_bn,
        train_supernet,
    )
    from search_spaces import SPACES, get_space
