"""The run's compress stage: the compression chain (`nas.compress`) of each arch the run chose,
and the devices a chain times its artifacts on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["chain_devices", "stage_compress"]


def stage_compress(state: Any, progress: bool) -> None:
    """The compression chain of each winner: the search's, then other stages' (hwtrain's
    derived archs); an arch chosen twice is chained once."""
    from latency_models import RealDevice
    from nas.app.compute import run_precision
    from nas.compress import ChainConfig, render_report, run_chain

    cfg = state.config.compress
    frames = [f for f in (state.winners, *state.more_winners.values()) if f is not None]
    keys = list(dict.fromkeys(str(k) for f in frames if not f.empty for k in f["arch_key"]))
    if not cfg.steps or not keys:
        return
    chain_config = ChainConfig.from_dict(dict(cfg.options))
    # the run's real devices themselves (emulated and table devices time no module)
    real = chain_devices([d for d in state.devices.values() if isinstance(d, RealDevice)])
    model = next(iter(state.latency_models.values()), None)
    for key in keys:  # the search's winners, then other stages' (an arch chained once)
        arch = state.space.from_key(key)
        result = run_chain(
            state.run_dir,
            arch,
            space=state.space,
            data=state.data,
            steps=list(cfg.steps),
            config=chain_config,
            student=state.supernet.export,
            teacher="largest",
            devices=real,
            latency_predictor=model,
            seed=state.config.seed,
            precision=run_precision(state.config.compute),  # KD on the device; QAT in fp32
        )
        state.compress_tables[key] = render_report(result.rows)
        state.compress_rows[key] = list(result.rows)


def chain_devices(real: Sequence[Any]) -> list[Any]:
    """The devices a compression chain times on: the given real devices (models and the
    artifacts of their runtime), and for each artifact runtime none of them runs, an
    artifact-only timer named by the registry's 1-thread device of that runtime
    (`xnnpack-1t`, `ort-cpu-1t`), so every exported file is timed where it runs."""
    import latency_models as lm
    from nas.compress import ArtifactTimer

    devices = list(real)
    covered = {d.runtime for d in devices}
    for name in lm.DEVICES:
        if lm.DEVICES.factory(name).kind != "real":  # type: ignore[attr-defined]
            continue
        device = lm.get_device(name)
        if device.runtime not in covered | {"torch"} and device.threads == 1:
            devices.append(ArtifactTimer(device.name, device.runtime, device.threads))
            covered.add(device.runtime)
    return devices
