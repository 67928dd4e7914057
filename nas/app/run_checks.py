"""A run config checked beyond its types: names against the registries, numbers against their
ranges, budgets and objectives against its devices (`run_config_problems`), all problems at
once; the checks of single names live in `nas.app.validate`."""

from __future__ import annotations

import re
from typing import Any

from nas.app.validate import (
    Problems,
    check_data,
    check_device,
    check_metrics,
    check_sampler,
    check_space,
    check_storage,
    choices_text,
    int_at_least,
    run_metric,
)

__all__ = ["run_config_problems"]


def run_config_problems(config: Any, *, space: Any = None, data_given: bool = False) -> list[str]:
    """Every problem of a `RunConfig` beyond its types: names against the registries, numbers
    against their ranges, budgets and objectives against its devices. `space` (an object) and
    `data_given` stand in for the config's names (a space defined in a notebook)."""
    p = Problems()
    int_at_least(p, "seed", config.seed, 0)
    if isinstance(config.name, str) and (
        not config.name.strip() or "/" in config.name or config.name in (".", "..")
    ):
        p.add(
            "name",
            f"{config.name!r} cannot name a study and a folder: use letters, digits, - and _",
        )
    if space is None:
        space = check_space(p, "space.name", config.space.name, config.space.args, "space.args")
    if not data_given:
        check_data(p, "data.name", config.data.name, config.data.args, "data.args")
    _check_supernet(p, config)
    _check_accuracy(p, config.accuracy)
    devices = _check_run_devices(p, config.devices)
    _check_search(p, config.search, space, devices)
    _check_margin(p, config.search, config.devices)
    _check_compress(p, config.compress)
    _check_federated(p, config, data_given)
    return p.items


def _check_supernet(p: Problems, config: Any) -> None:
    from nas.supernet import make_config

    cfg = config.supernet
    fields = ("schedule", "epochs", "batch_size", "lr", "options")
    values = {f: getattr(cfg, f) for f in fields}
    try:
        make_config(None, **values, seed=config.seed if isinstance(config.seed, int) else 0)
    except (ValueError, TypeError) as err:
        text = str(err).removeprefix("invalid training config: ")
        for part in re.split(r"; (?=\w+ must |unknown |option )", text):
            if part.startswith("seed "):
                continue  # the run's seed: reported as `seed`
            words = part.replace("(", " ").split()
            field = next((f for f in fields if f in words or f"{f}:" in words), None)
            if "schedule" in part and field is None:
                field = "schedule"
            p.add(f"supernet.{field or 'options'}", part)


def _check_accuracy(p: Problems, cfg: Any) -> None:
    from nas.predictors import PREDICTORS

    int_at_least(
        p,
        "accuracy.train_archs",
        cfg.train_archs,
        4,
        " (two thirds fit the predictor, the rest, at least 2, score its ranking)",
    )
    int_at_least(p, "accuracy.bn_batches", cfg.bn_batches, 1)
    if isinstance(cfg.predictor, str) and cfg.predictor not in PREDICTORS:
        p.add("accuracy.predictor", choices_text(cfg.predictor, PREDICTORS))


def _check_run_devices(p: Problems, devices: Any) -> list[tuple[str, str]]:
    """The (name, dtype) of the config's valid devices; problems of the others recorded."""
    import latency_models as lm

    kinds = lm.table_kinds()
    out: list[tuple[str, str]] = []
    for i, dev in enumerate(devices if isinstance(devices, list) else []):
        if not hasattr(dev, "name"):
            continue
        key = f"devices[{i}]"
        device = check_device(p, f"{key}.name", dev.name, dtype=dev.dtype, dtype_key=f"{key}.dtype")
        if isinstance(dev.latency_model, str) and dev.latency_model not in kinds:
            p.add(
                f"{key}.latency_model",
                choices_text(dev.latency_model, kinds)
                + " (the registered latency models that sum a table; calibration_archs fit "
                "their learned form)",
            )
        elif (
            dev.latency_model == "kernels"
            and device is not None
            and not lm.supports_kernels(device)
        ):
            p.add(
                f"{key}.latency_model",
                f"'kernels' needs a runtime that names its kernels "
                f"(ort-cpu-1t, ort-cpu-2t); {dev.name!r} does not: use 'lut'",
            )
        int_at_least(p, f"{key}.lut_archs", dev.lut_archs, 1)
        if dev.calibration_archs is not None:
            int_at_least(p, f"{key}.calibration_archs", dev.calibration_archs, 0)
        int_at_least(p, f"{key}.lut_passes", dev.lut_passes, 1)
        label = (dev.name, dev.dtype)
        if label in out:
            p.add(key, f"{dev.name} in {dev.dtype} is listed twice")
        elif device is not None:
            out.append(label)
    return out


def _check_search(p: Problems, cfg: Any, space: Any, devices: list[tuple[str, str]]) -> None:
    int_at_least(p, "search.trials", cfg.trials, 1)
    check_sampler(p, "search.sampler", cfg.sampler)
    check_storage(p, "search.storage", cfg.storage)
    objectives = cfg.objectives if isinstance(cfg.objectives, list) else []
    budgets = cfg.budgets if isinstance(cfg.budgets, dict) else {}
    check_metrics(
        p,
        space,
        devices,
        ("search.objectives", objectives),
        [(f"search.budgets.{m}", run_metric(m, devices), b) for m, b in budgets.items()],
    )


def _check_margin(p: Problems, cfg: Any, devices: Any) -> None:
    """`search.margin` is "auto" or a number in [0, 1); `auto` on a budgeted device needs
    held-out networks to measure the latency model's error on."""
    margin = cfg.margin
    if isinstance(margin, str):
        if margin != "auto":
            p.add("search.margin", f"'auto' or a number such as 0.1 (10 %), got {margin!r}")
            return
    elif not (isinstance(margin, (int, float)) and 0 <= margin < 1):
        p.add(
            "search.margin", f"a relative margin in [0, 1) (0.1 = 10 %) or 'auto', got {margin!r}"
        )
        return
    budgets = cfg.budgets if isinstance(cfg.budgets, dict) else {}
    if margin != "auto" or not budgets or not isinstance(devices, list):
        return
    for i, dev in enumerate(devices):
        if getattr(dev, "calibration_archs", None) != 0:
            continue
        budgeted = [m for m in budgets if m.split(":")[0] == f"latency_ms@{dev.name}"]
        if budgeted:
            p.add(
                f"devices[{i}].calibration_archs",
                f"the budget {budgeted[0]} with search.margin 'auto' needs whole networks "
                f"measured on {dev.name} to check its latency model against: set "
                f"calibration_archs >= 1 (30 or more for a conformal margin), or give "
                "search.margin a number",
            )


def _check_compress(p: Problems, compress: Any) -> None:
    """The compression steps and options now, not after the hours of work before them."""
    from nas.compress import ChainConfig, check_steps

    if isinstance(compress.steps, list) and compress.steps:
        p.check("compress.steps", lambda: check_steps(compress.steps))
    if isinstance(compress.options, dict):
        p.check("compress.options", lambda: ChainConfig.from_dict(compress.options))
    if isinstance(compress.top_k, int) and compress.top_k < 0:
        p.add("compress.top_k", f"expected >= 0, got {compress.top_k}")


def _check_federated(p: Problems, config: Any, data_given: bool) -> None:
    """The `federated` section, when enabled (issue 21; `nas.app.federated_stage`)."""
    from nas.app.federated_checks import federated_problems

    cfg = getattr(config, "federated", None)
    if cfg is not None and cfg.enabled is True:
        for key, message in federated_problems(config, data_given):
            p.add(key, message)
