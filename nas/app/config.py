"""Run configuration: one YAML or TOML file (or the CLI's flags) that says what a run does.

The file maps onto nested dataclasses; loading validates every key and type and reports all
problems at once, with close matches for misspelt keys. The resolved config is saved into the
run folder with the package version and the git commit, so a run can be reproduced and resumed
from its folder alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import subprocess
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml

from nas.app.errors import InputError

__all__ = [
    "AccuracyConfig",
    "CompressConfig",
    "ComputeConfig",
    "ConfigError",
    "DataConfig",
    "DeviceConfig",
    "FederatedConfig",
    "FederatedTierConfig",
    "HwtrainConfig",
    "OndeviceConfig",
    "RunConfig",
    "SearchConfig",
    "SpaceConfig",
    "SupernetConfig",
    "config_from_dict",
    "git_commit",
    "load_config",
    "save_config",
]

T = TypeVar("T")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None


class ConfigError(InputError, ValueError):
    """A config that does not fit the schema; the message lists every problem."""


@dataclass
class SpaceConfig:
    name: str = "tiny"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    #: "digits" (the embedded default) or a path to an image folder / CIFAR layout
    name: str = "digits"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class SupernetConfig:
    schedule: str = "sandwich"
    epochs: int = 6
    batch_size: int = 128
    lr: float = 0.05
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AccuracyConfig:
    #: archs evaluated with inherited weights to fit the accuracy predictor
    train_archs: int = 60
    predictor: str = "gp"
    bn_batches: int = 4


@dataclass
class DeviceConfig:
    name: str = "ort-cpu-1t"
    dtype: str = "fp32"
    #: archs sampled to collect the unique layers of the LUT
    lut_archs: int = 50
    #: whole networks measured (priced, on emulated and table devices) to fit the latency
    #: model's correction; as many again are held out to check it against the device's own
    #: figure (its error sets the budget's `auto` margin). Default: 50 where the figure is free
    #: (emulated, table devices), 10 on a real runtime (each is a measurement); 0: unchecked
    calibration_archs: int | None = None
    #: passes over every LUT layer, each layer keeping its fastest: more on a noisy shared
    #: host (real runtimes); emulated and table devices are deterministic, 1 is enough
    lut_passes: int = 1
    #: a registered latency model that sums a table (`latency_models.table_kinds()`): "lut"
    #: (a table of the space's layers; with calibration_archs, "lut+correction" is fitted) or
    #: "kernels" (a table of the kernels the runtime's optimiser makes of lut_archs whole
    #: networks: ONNX Runtime devices only)
    latency_model: str = "lut"


@dataclass
class SearchConfig:
    #: false: no search; the winners then come from another stage (hwtrain: its derived archs)
    enabled: bool = True
    #: a name of `nas.search.SAMPLERS` ("auto": ours, `frontier`, when accuracy is an objective)
    sampler: str = "auto"
    trials: int = 200
    #: Optuna storage URL; empty for SQLite in the run folder
    storage: str = ""
    #: e.g. {"latency_ms@pixel3-emulated": 15.0, "peak_activation_bytes": 262144}
    budgets: dict[str, float] = field(default_factory=dict)
    objectives: list[str] = field(default_factory=lambda: ["accuracy", "latency"])
    #: what a latency budget keeps from its bound: feasible when predicted x (1 + margin) <=
    #: budget. "auto": the conformal 95 % quantile of the latency model's held-out error on
    #: the device (devices[].calibration_archs); or a number (0.1 = 10 %)
    margin: str | float = "auto"


@dataclass
class CompressConfig:
    top_k: int = 2
    steps: list[str] = field(default_factory=lambda: ["distill", "prune", "qat", "export"])
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OndeviceConfig:
    """On-device learning (issue 20): the optional `ondevice` stage adapts each winner's
    deployed model (its compression chain's last fp32 model, else its inherited weights) to a
    shifted target domain on a few shots, under each update mode (`nas.ondevice.MODES`)."""

    enabled: bool = False
    modes: list[str] = field(default_factory=lambda: ["bias", "bn_bias", "full"])
    #: the k of mode "last"
    blocks: int = 1
    #: a training-memory budget (KB) every plan is checked against; mode "sparse" needs one
    budget_kb: float | None = None
    batch: int = 8
    #: labelled target images per class to adapt on
    shots: int = 10
    steps: int = 60
    lr: float = 0.05
    #: "sgd" (no momentum), "sgd_momentum" or "adam" (the runtime has SGD only)
    optimizer: str = "sgd"
    #: the target domain (`nas.ondevice.SHIFTS`; "none": the data set is the target domain)
    shift: str = "rotate"
    #: where the steps run: "pytorch", or "executorch" (the runtime's training program)
    runtime: str = "pytorch"
    #: where the runtime cannot train as asked: "none" (fail, naming what it lacks) or
    #: "pytorch" (train there instead; the report says so)
    fallback: str = "none"
    #: batch norm while adapting: "eval" (frozen statistics) or "train" (each batch's statistics,
    #: the running statistics re-estimated on the shots afterwards)
    batch_norm: str = "eval"


@dataclass
class ComputeConfig:
    """Where and how the run's training loops execute: supernet training, inherited-weight
    evaluation with its BN recalibration, and the compression chain's KD and QAT.

    A rerun that changes where a run executes keeps its finished stages: `device`,
    `channels_last`, `compile` and `workers` are in no stage's fingerprint (they are listed,
    with why, in `nas.app.stages.UNFINGERPRINTED`). `precision` and `grad_accum` change what is
    computed, so changing one redoes the supernet and every stage after it.
    """

    #: auto | cpu | cuda | cuda:N | mps (auto: the GPU when CUDA is there, else mps, else the
    #: CPU). Not fingerprinted: where a run computes is not what it computes (a GPU's kernels
    #: round differently from the CPU's, within float noise), so moving a run from the CPU to
    #: a GPU keeps its finished stages
    device: str = "auto"
    #: fp32 | bf16 | fp16: the autocast of the forward passes (fp16 with a gradient scaler,
    #: GPUs only; QAT always trains in fp32). Fingerprinted (the supernet and every stage after
    #: it): bf16 rounds activations to 8 bits of mantissa, so the weights and accuracies differ
    precision: str = "fp32"
    #: channels-last memory format for the supernet's weights and images (faster on tensor
    #: cores). Not fingerprinted: the same arithmetic in another memory layout
    channels_last: bool = False
    #: torch.compile the supernet's forward pass (pays off on long GPU runs: it recompiles for
    #: each new subnet shape). Not fingerprinted: the same arithmetic, fused
    compile: bool = False
    #: DataLoader worker processes decoding a streamed image folder (data held in memory
    #: ignores it). Not fingerprinted: each image's augmentation is seeded by (seed, epoch,
    #: image index), so the batches are the same whatever the number of workers
    workers: int = 2
    #: micro-batches of supernet.batch_size per optimizer step of the supernet, so a large
    #: effective batch fits (supernet.batch_size x grad_accum images a step). Fingerprinted: it
    #: changes the effective batch, the number of steps and the batch-norm statistics
    grad_accum: int = 1


@dataclass
class HwtrainConfig:
    """Hardware-aware training (`nas.hwtrain`, issue 19) in a run: the devices in the loss,
    priced by the run's own latency models; beside the search, or instead of it
    (`search.enabled: false`). Its derived archs go to the compression chain."""

    enabled: bool = False
    #: per latency metric, named as in search.budgets: {"latency_ms@pixel3-emulated": 0.3}
    targets: dict[str, float] = field(default_factory=dict)
    #: a device's share of the loss, by the same names (default 1 each)
    weights: dict[str, float] = field(default_factory=dict)
    #: "target" (reach each target), "multiplicative" (FBNet) or "additive"
    loss: str = "target"
    lam: float = 5.0
    #: aim at target / (1 + margin): "search" takes search.margin ("auto": each device's own
    #: held-out margin, as the budgets keep), or "auto", or a number (0.1 = 10 %)
    margin: str | float = "search"
    #: "gumbel" (FBNet) or "proxyless" (sampled paths; paths 1 or 2)
    relaxation: str = "gumbel"
    paths: int = 1
    #: a weight step trains "path" (the drawn path alone: the weights start from the run's
    #: sandwich-trained supernet) or "sandwich" (the largest subnet too, the path distilled
    #: from it: what `nas hwtrain` does from scratch)
    weight_rule: str = "path"
    #: weights start from the run's supernet, so the logits may move from the first epoch
    epochs: int = 10
    warmup_epochs: int = 0
    batch_size: int = 64
    lr: float = 0.05
    arch_lr: float = 0.05
    #: steps per epoch at most (none: the whole weight split)
    max_steps: int | None = None
    #: further cost terms: "params", "peak_memory"
    terms: list[str] = field(default_factory=list)
    #: input dims (a resolution): a value, or "sample"; default their largest
    freeze: dict[str, str] = field(default_factory=dict)
    #: derived archs handed to the compression chain (the derived one, then the most probable)
    top_k: int = 1
    #: a derived arch off a target by more than this share is repaired (`nas.hwtrain.derive`)
    tolerance: float = 0.05
    #: archs of each Monte-Carlo check of the expected latency
    mc: int = 1000


@dataclass
class FederatedTierConfig:
    """One device tier of a federated run: its clients train the subnet with the most MACs
    whose latency, priced by the run's latency model of `device`, meets `budget_ms`."""

    name: str = "tier"
    #: a device of the run's `devices` list, by name (or its label, `NAME-DTYPE`)
    device: str = "pixel3-emulated"
    budget_ms: float = 1.0
    clients: int = 2


@dataclass
class FederatedConfig:
    """The `federated` stage (off unless `enabled`): device tiers train a shared model in
    rounds on partitions of the run's data (`nas.federated`, issue 21)."""

    enabled: bool = False
    tiers: list[FederatedTierConfig] = field(default_factory=list)
    #: "supernet" (each tier trains its subnet), "fedavg" (every client the slowest tier's
    #: subnet) or "width" (HeteroFL's width slicing of the fastest tier's arch)
    kind: str = "supernet"
    rounds: int = 10
    #: "iid" or "dirichlet" (label skew, by source image, with `alpha`)
    partition: str = "iid"
    alpha: float | None = None
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    #: per local epoch: a cap for quick runs
    max_batches: int | None = None
    #: a round needs this many replies (default: every client)
    min_clients: int | None = None
    #: the first this many test images score each round (default: all)
    test_images: int | None = None
    #: archs priced per tier to pick its subnet
    candidates: int = 500
    #: each tier's subnet: "macs" (the most MACs under its budget) or "depth" (the most blocks)
    tier_rule: str = "macs"
    #: keep each tier's subnet at most 1/R of the MACs of the tier with the next larger budget
    min_macs_ratio: float | None = None
    #: what a supernet client trains per local step: "sandwich" (its tier and the smallest one
    #: nested in it), "own" (its tier only) or "nested" (one nested tier per step, FjORD)
    tier_sampling: str = "sandwich"
    #: "scratch" (seeded weights) or "supernet" (the run's trained supernet; supernet kind only)
    init: str = "scratch"
    #: "grid" (in-process, no sockets) or "deployment" (Flower's runtime, loopback only)
    runtime: str = "grid"
    #: client-side DP: {"clipping_norm": C, "epsilon": E, "delta": D}; empty for none
    dp: dict[str, float] = field(default_factory=dict)
    #: the server's step on the averaged update (FedAvgM): momentum in [0, 1), 0 is FedAvg
    server_momentum: float = 0.0
    server_lr: float = 1.0


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    space: SpaceConfig = field(default_factory=SpaceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
    devices: list[DeviceConfig] = field(default_factory=lambda: [DeviceConfig()])
    search: SearchConfig = field(default_factory=SearchConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    ondevice: OndeviceConfig = field(default_factory=OndeviceConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    hwtrain: HwtrainConfig = field(default_factory=HwtrainConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """`value` as type `tp`, or record a problem (and return the value unchanged)."""
    origin, args = get_origin(tp), get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
            return tp()
        return _build(tp, value, where, problems)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {type(value).__name__} {value!r}")
            return value
        return [_convert(v, args[0], f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
            return value
        return {str(k): _convert(v, args[1], f"{where}.{k}", problems) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for option in args:
            trial: list[str] = []
            out = _convert(value, option, where, trial)
            if not trial:
                return out
        problems.append(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (tp is int and isinstance(value, bool)) or not isinstance(value, tp):
        problems.append(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type[T], data: dict[str, Any], where: str, problems: list[str]) -> T:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(
                f"{where}.{key}: unknown key{hint}; valid keys: {', '.join(names)}".lstrip(".")
            )
            continue
        kwargs[key] = _convert(value, hints[key], f"{where}.{key}".lstrip("."), problems)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """A `RunConfig` from a mapping, checked whole: types and keys here, then names against the
    registries, ranges, devices, budgets and objectives (`nas.app.validate`); one
    `ConfigError` lists every problem."""
    from nas.app.run_checks import run_config_problems

    if not isinstance(data, dict):
        raise ConfigError(f"a run config is a mapping at the top level, got {type(data).__name__}")
    problems: list[str] = []
    config = _build(RunConfig, data, "", problems)
    problems += run_config_problems(config)
    if problems:
        raise ConfigError("invalid run config:\n  " + "\n  ".join(dict.fromkeys(problems)))
    return config


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML (.yaml/.yml) or TOML (.toml) run config, validated."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"could not read {p}: {err}") from err
    if not _content(text):
        raise ConfigError(
            f"{p} is empty: a run config names at least what it changes from the defaults "
            "(e.g. `name: myrun`); `nas demo` runs the built-in config"
        )
    try:
        if p.suffix == ".toml":
            if tomllib is None:  # pragma: no cover
                raise ConfigError("TOML configs need Python 3.11+; use YAML")
            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml", ".json"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"config must be .yaml, .yml, .json or .toml, got {p.name!r}")
    except (yaml.YAMLError, ValueError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"could not parse {p}: {err}") from err
    return config_from_dict(data)


def _content(text: str) -> str:
    """`text` without blank lines and comments (YAML and TOML both comment with #)."""
    return "\n".join(
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    )


def git_commit(cwd: str | Path | None = None, mark_dirty: bool = False) -> str:
    """HEAD of the checkout at `cwd` ("unknown" outside git); with `mark_dirty`, "-dirty"
    appended when tracked files differ from it."""
    try:
        head = subprocess.check_output(
            ["git", "rev-parse", "HEAD"], cwd=cwd, text=True, stderr=subprocess.DEVNULL
        ).strip()
        if not mark_dirty:
            return head
        status = subprocess.check_output(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            text=True,
            stderr=subprocess.DEVNULL,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if status.strip() else "")


def save_config(config: RunConfig, run_dir: str | Path) -> Path:
    """Write the resolved config with the package version and commit into the run folder."""
    from nas import __version__

    out = Path(run_dir) / "config.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"package_version": __version__, "git_commit": git_commit(Path(__file__).parent)}
    out.write_text(
        "# resolved run config; "
        + json.dumps(meta)
        + "\n"
        + yaml.safe_dump(config.to_dict(), sort_keys=False)
    )
    return out
