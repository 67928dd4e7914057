"""The hwtrain benchmark's search route: a supernet on the rows' settings, the run's search
stage on the same latency model, and each derived arch against the front at equal or lower
device latency (benchmarks/hwtrain.py runs it beside the hardware-aware rows)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def _route_config(case: dict[str, Any], seed: int, trials: int) -> Any:
    """The demo's run config on the rows' settings, with no latency budget (the front is the
    whole trade-off; a demo budget would cut it)."""
    from nas.app.demo import demo_config

    t = case["train"]
    config = demo_config(
        seed=seed,
        name=f"route-{case['space']}-{case['device']}-s{seed}",
        space={"name": case["space"]},
        supernet={"epochs": t["epochs"], "batch_size": t["batch_size"]},
        search={"trials": trials},
    )
    config.search.budgets = {}  # merged over, {} would keep the demo's budget
    return config


def _train_route_supernet(case: dict[str, Any], seed: int, data: Any, out: Path) -> tuple:
    """The demo's supernet stage on the hwtrain rows' settings (epochs, batch size, at most as
    many steps per epoch), timed; a finished one is read back with its time."""
    import torch

    from nas.supernet import train_supernet
    from search_spaces import get_space

    space = get_space(case["space"])
    cfg = _route_config(case, seed, 1).supernet
    t = case["train"]
    done = out / "supernet.json"
    started = time.perf_counter()
    result = train_supernet(
        space, data, out / "supernet", schedule=cfg.schedule, epochs=cfg.epochs,
        batch_size=cfg.batch_size, lr=cfg.lr, options=dict(cfg.options), seed=seed,
        max_steps=t["epochs"] * t["max_steps"] if t["max_steps"] else None, progress=False,
    )  # fmt: skip
    if not done.is_file():
        done.write_text(json.dumps({"supernet_s": time.perf_counter() - started}))
    torch.manual_seed(seed)
    return result.supernet.eval(), json.loads(done.read_text())["supernet_s"]


def _search_front(case: dict[str, Any], seed: int, net: Any, model: Any, data: Any, out: Path):
    """The run's search stage (`stage_search`: the demo's sampler over inherited validation
    accuracy, BN recalibrated, priced by `model`), timed; returns its front's archs, time and
    the search's own metric."""
    from nas.app.builtin_stages import RunState, metric_of, stage_search
    from nas.search import pareto_frame
    from nas.supernet import SubnetEvaluator
    from search_spaces import get_space

    space = get_space(case["space"])
    config = _route_config(case, seed, case.get("trials", 200))
    state = RunState(config, out, space, data)
    state.supernet = net
    state.evaluator = SubnetEvaluator(  # as the accuracy stage makes it, with no warm cache
        net, data.train, data.val, calib_images=config.accuracy.bn_batches * 128, seed=seed
    )
    state.latency_models = {case["device"]: model}
    started = time.perf_counter()
    stage_search(state, progress=False)
    search_s = time.perf_counter() - started
    metric = metric_of(state)[case["device"]]
    front = pareto_frame(state.study, ["accuracy", metric])
    return [space.from_key(str(k)) for k in front["arch_key"]], search_s, metric


def _correct(net: Any, space: Any, arch: Any, data: Any, seed: int, bn_batches: int = 4):
    """Per test image, whether the arch with `net`'s weights (BN recalibrated on the evaluator's
    seeded images) is right: both routes' archs scored by one recipe, paired on one test set."""
    from nas.supernet import SubnetEvaluator, correct_mask, recalibrate_bn

    calib = SubnetEvaluator(
        net, data.train, data.test, calib_images=bn_batches * 128, seed=seed
    ).calib_batches
    size = space.input_shape(arch)[1:]
    model = net.export(arch)
    recalibrate_bn(model, calib, input_size=size)
    x, y = data.test.tensors
    return correct_mask(model, x, y, input_size=size)


def _route(case: dict[str, Any], seed: int, model: Any, device: Any, data: Any, out: Path):
    """The search route of (space, device, seed): supernet, search, and its front of test
    accuracy against the device's own figure (whole-network priced, measured or the table's)."""
    from nas.app.budgets import device_figures
    from search_spaces import get_space

    space = get_space(case["space"])
    out.mkdir(parents=True, exist_ok=True)
    net, supernet_s = _train_route_supernet(case, seed, data, out)
    search = out / case["device"]  # one supernet per (space, seed), a search per device
    search.mkdir(parents=True, exist_ok=True)
    done = search / "route.json"
    if done.is_file():
        info = json.loads(done.read_text())
    else:
        archs, search_s, metric = _search_front(case, seed, net, model, data, search)
        figures = device_figures(space, device, model.dtype, archs, search / "front-networks.json")
        info = {"supernet_s": supernet_s, "search_s": search_s, "metric": metric,
                "front": [{"key": space.key(a), "device_ms": figures[space.key(a)]}
                          for a in archs]}  # fmt: skip
        done.write_text(json.dumps(info, indent=1))
    info["net"] = net
    return info


def _hw_net(space: Any, row_dir: Path) -> Any:
    """The supernet weights `nas hwtrain` trained (its checkpoint; tensors only)."""
    import torch

    from nas.hwtrain.train import CHECKPOINT

    net = space.supernet()
    state = torch.load(row_dir / CHECKPOINT, map_location="cpu", weights_only=True)
    net.load_state_dict(state["net"])
    return net.eval()


def _versus_front(row: dict[str, Any], route: dict[str, Any], data: Any, row_dir: Path,
                  noise: dict[str, float]) -> dict[str, Any]:  # fmt: skip
    """The derived arch's test accuracy (its own weights, BN recalibrated) against the best
    front arch at equal or lower device latency, with the paired interval of the difference
    and the seed noise of `accuracy_noise` (`nas.supernet.intervals`)."""
    from nas.supernet import difference_interval, resolvable_difference
    from search_spaces import get_space

    space = get_space(row["space"])
    derived = space.from_key(row["derived_key"])
    mine = _correct(_hw_net(space, row_dir), space, derived, data, row["seed"])
    same = _correct(route["net"], space, derived, data, row["seed"])
    within = [f for f in route["front"] if f["device_ms"] <= row["priced_ms"] * (1 + 1e-9)]
    out: dict[str, Any] = {
        "derived_test_pts": 100 * float(mine.mean()),
        "derived_test_pts_search_weights": 100 * float(same.mean()),
        "front_size": len(route["front"]),
    }
    if not within:
        return {**out, "front_key": None, "front_test_pts": None, "vs_front_pts": None,
                "resolvable_pts": None, "verdict": "no front arch at or below this latency"}  # fmt: skip
    scored = [(_correct(route["net"], space, space.from_key(f["key"]), data, row["seed"]), f)
              for f in within]  # fmt: skip
    best, f = max(scored, key=lambda s: float(s[0].mean()))
    diff = difference_interval(mine, best, data.groups("test"), seed=row["seed"])
    bound = 100 * resolvable_difference(diff.half_width, np.sqrt(2) * noise["seed_sd_pts"] / 100)
    pts = 100 * diff.estimate
    verdict = "not resolvable" if abs(pts) <= bound else ("met" if pts >= -1 else "missed")
    return {**out, "front_key": f["key"], "front_device_ms": f["device_ms"],
            "front_test_pts": 100 * float(best.mean()), "vs_front_pts": pts,
            "resolvable_pts": bound, "verdict": verdict}  # fmt: skip
