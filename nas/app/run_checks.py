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
    _check_ondevice(p, config.ondevice)
    _check_compute(p, config.compute)
    _check_hwtrain(p, config, space, devices)
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


def _check_ondevice(p: Problems, cfg: Any) -> None:
    """The `ondevice` section: modes, numbers, names, and what the runtime cannot do."""
    from nas.app.ondevice_adapt import ENGINES, FALLBACKS, runtime_problem
    from nas.ondevice import BATCH_NORM_MODES, MODES, OPTIMIZERS, OPTIONAL_MODES, SHIFTS

    known = {**MODES, **OPTIONAL_MODES}

    modes = cfg.modes if isinstance(cfg.modes, list) else []
    if isinstance(cfg.modes, list) and not modes:
        p.add("ondevice.modes", f"name at least one update mode: {', '.join(MODES)}")
    for mode in modes:
        if isinstance(mode, str) and mode not in known:
            p.add("ondevice.modes", choices_text(mode, known))
    if "sparse" in modes and cfg.budget_kb is None:
        p.add("ondevice.budget_kb", "mode 'sparse' picks its layers under a budget: set one")
    if isinstance(cfg.budget_kb, (int, float)) and cfg.budget_kb <= 0:
        p.add("ondevice.budget_kb", f"a budget in KB, > 0, got {cfg.budget_kb}")
    for key in ("blocks", "batch", "shots", "steps"):
        int_at_least(p, f"ondevice.{key}", getattr(cfg, key), 1)
    if isinstance(cfg.lr, (int, float)) and cfg.lr <= 0:
        p.add("ondevice.lr", f"a learning rate > 0, got {cfg.lr}")
    names = (
        ("optimizer", OPTIMIZERS),
        ("shift", ["none", *SHIFTS]),
        ("runtime", ENGINES),
        ("fallback", FALLBACKS),
        ("batch_norm", BATCH_NORM_MODES),
    )
    for key, valid in names:
        value = getattr(cfg, key)
        if isinstance(value, str) and value not in valid:
            p.add(f"ondevice.{key}", choices_text(value, valid))
    key, problem = runtime_problem(cfg.runtime, cfg.optimizer, cfg.fallback)
    if problem:
        p.add("ondevice.runtime" if key == "engine" else f"ondevice.{key}", problem)


def _check_compute(p: Problems, compute: Any) -> None:
    """The device is there (the error lists those that are) and runs the precision; the
    numbers in their ranges."""
    from nas.supernet import PRECISIONS, Precision, resolve_device

    int_at_least(p, "compute.workers", compute.workers, 0)
    int_at_least(p, "compute.grad_accum", compute.grad_accum, 1)
    if not isinstance(compute.device, str):
        return  # the schema's to report
    device = p.check("compute.device", lambda: resolve_device(compute.device))
    if isinstance(compute.precision, str) and compute.precision not in PRECISIONS:
        p.add("compute.precision", choices_text(compute.precision, PRECISIONS))
    elif device is not None and isinstance(compute.precision, str):
        p.check("compute.precision", lambda: Precision(compute.precision, device))


def _check_hwtrain(p: Problems, config: Any, space: Any, devices: list[tuple[str, str]]) -> None:
    """The `hwtrain` section when it is on (and `search.enabled: false` only with it): its
    settings, each target's device among the run's, a space that can be relaxed, and each
    target on an emulated device inside the space's latency range there, before any work."""
    from nas.app.hwtrain_stage import device_metrics, loss_metrics, train_config

    cfg, before = config.hwtrain, len(p.items)
    if config.search.enabled is False and cfg.enabled is not True:
        p.add(
            "search.enabled",
            "false needs another stage to choose the archs: set hwtrain.enabled: true "
            "(hardware-aware training instead of the search)",
        )
    if cfg.enabled is not True:
        return
    _hwtrain_numbers(p, cfg)
    if len(p.items) == before:  # the engine's own check, where the keys did not say it already
        p.check("hwtrain", lambda: train_config(cfg, 0))
    metrics = device_metrics(devices)
    for key, named in (("targets", cfg.targets), ("weights", cfg.weights)):
        for metric, value in (named if isinstance(named, dict) else {}).items():
            resolved = run_metric(metric, devices)
            if resolved not in metrics:
                p.add(f"hwtrain.{key}.{metric}", choices_text(metric, list(metrics)))
            elif not (isinstance(value, (int, float)) and value > 0):
                p.add(f"hwtrain.{key}.{metric}", f"a number > 0 (ms for a target), got {value!r}")
    if cfg.loss == "target" and not cfg.targets:
        p.add("hwtrain.targets", "the target loss needs a target, e.g. {latency_ms@DEVICE: 0.3}")
    if len(p.items) > before or space is None:
        return
    _hwtrain_space(p, config, space, metrics, loss_metrics(cfg.targets, cfg.weights, metrics))


def _hwtrain_numbers(p: Problems, cfg: Any) -> None:
    from nas.hwtrain import RELAXATIONS, WEIGHT_RULES

    if isinstance(cfg.relaxation, str) and cfg.relaxation not in RELAXATIONS:
        p.add("hwtrain.relaxation", choices_text(cfg.relaxation, RELAXATIONS))
    if not isinstance(cfg.weight_rule, str) or cfg.weight_rule not in WEIGHT_RULES:
        p.add("hwtrain.weight_rule", choices_text(str(cfg.weight_rule), WEIGHT_RULES))
    if cfg.paths not in (1, 2) or (cfg.paths == 2 and cfg.relaxation != "proxyless"):
        p.add("hwtrain.paths", "1, or 2 with relaxation proxyless (Gumbel runs every path)")
    margin = cfg.margin
    if not (margin in ("search", "auto") or (_number(margin) and 0 <= margin < 1)):
        p.add("hwtrain.margin", f"'search', 'auto' or a number in [0, 1), got {margin!r}")
    for term in cfg.terms if isinstance(cfg.terms, list) else []:
        if term not in ("params", "peak_memory"):
            p.add("hwtrain.terms", choices_text(str(term), ["params", "peak_memory"]))
    for name in ("top_k", "mc", "batch_size"):
        int_at_least(p, f"hwtrain.{name}", getattr(cfg, name), 1)
    if cfg.max_steps is not None:
        int_at_least(p, "hwtrain.max_steps", cfg.max_steps, 1)
    for name in ("lam", "lr", "arch_lr", "tolerance"):
        value = getattr(cfg, name)
        if _number(value) and not value > 0:
            p.add(f"hwtrain.{name}", f"must be > 0, got {value!r}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _hwtrain_space(
    p: Problems, config: Any, space: Any, metrics: dict[str, tuple[str, str]], loss: list[str]
) -> None:
    """A space that can be relaxed, devices whose latency model prices layers, targets on
    emulated devices inside the space's range (by the device's cost model)."""
    import latency_models as lm
    from nas.app.hwtrain_stage import latency_range
    from nas.hwtrain import NotRelaxableError, probe_dims

    try:
        probe_dims(space.supernet())
    except NotRelaxableError as err:
        p.add("space.name", f"hardware-aware training cannot relax it: {err}")
        return
    models = {(d.name, d.dtype): d.latency_model for d in config.devices}
    for metric in loss:
        name, dtype = metrics[run_metric(metric, list(metrics.values()))]
        if models.get((name, dtype)) == "kernels":
            p.add(
                f"hwtrain.targets.{metric}",
                f"{name} is priced by a kernel table, which cannot price layers: give it "
                "latency_model: lut to train against it",
            )
        target = config.hwtrain.targets.get(metric)
        if target is None or lm.DEVICES.factory(name).kind != "emulated":  # type: ignore[attr-defined]
            continue  # a real runtime's range needs its LUT: checked before training
        low, high = latency_range(space, name, dtype)
        if not low <= target <= high:
            p.add(
                f"hwtrain.targets.{metric}",
                f"{target} ms is outside the space's latency range on {name}: "
                f"{low:.4g} to {high:.4g} ms",
            )


def _check_federated(p: Problems, config: Any, data_given: bool) -> None:
    """The `federated` section, when enabled (issue 21; `nas.app.federated_stage`)."""
    from nas.app.federated_checks import federated_problems

    cfg = getattr(config, "federated", None)
    if cfg is not None and cfg.enabled is True:
        for key, message in federated_problems(config, data_given):
            p.add(key, message)
