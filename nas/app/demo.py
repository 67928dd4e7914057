"""The built-in demo: its run config, and the short `--quick` variant of it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nas.app.config import RunConfig, config_from_dict

__all__ = ["demo_config", "quick_overrides"]


def demo_config(**overrides: Any) -> RunConfig:
    """The built-in demo: `tiny` on the embedded digits, a real runtime and an emulated phone,
    a latency budget on the phone, a 200-trial search, the two best feasible archs compressed."""
    base: dict[str, Any] = {
        "name": "demo",
        "seed": 0,
        "space": {"name": "tiny"},
        "data": {"name": "digits"},
        "supernet": {"schedule": "sandwich", "epochs": 4, "batch_size": 128, "lr": 0.05},
        "accuracy": {"train_archs": 40, "predictor": "gp", "bn_batches": 4},
        "devices": [
            {"name": "ort-cpu-1t", "dtype": "fp32", "lut_archs": 30, "calibration_archs": 10},
            {"name": "pixel3-emulated", "dtype": "fp32", "lut_archs": 200},
        ],
        "search": {
            "sampler": "frontier",
            "trials": 200,
            "objectives": ["accuracy", "latency"],
            "budgets": {"latency_ms@pixel3-emulated": 0.35},
        },
        "compress": {
            "top_k": 2,
            "steps": ["distill", "prune", "qat", "export"],
            "options": {
                "distill": {"epochs": 1.0},
                "qat": {"train": {"epochs": 1.0}},
                "export": {"formats": ["onnx", "pte"], "models": "final"},
            },
        },
    }
    _merge(base, overrides)
    return config_from_dict(base)


def quick_overrides(trials: int | None = None) -> dict[str, Any]:
    """What `nas demo --quick` changes: one supernet epoch, a 20-trial search, small tables,
    one winner distilled and exported to ONNX (a smoke run of every stage)."""
    return {
        "supernet": {"epochs": 1},
        "accuracy": {"train_archs": 12},
        "search": {"trials": trials or 20},
        "compress": {
            "top_k": 1,
            "steps": ["distill", "export"],
            "options": {
                "distill": {"epochs": 0.25},
                "export": {"formats": ["onnx"], "models": "final"},
            },
        },
        "devices": [
            {"name": "ort-cpu-1t", "dtype": "fp32", "lut_archs": 5},
            {"name": "pixel3-emulated", "dtype": "fp32", "lut_archs": 50},
        ],
    }


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for k, v in overrides.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
