"""benchmarks/federated.py: its results contract from per-image scores (the local-DP cost per
epsilon included), its verdicts, its table, and its command line."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report() -> ModuleType:
    return _load("federated_report_bench", ROOT / "benchmarks" / "_federated_report.py")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load("federated_bench", ROOT / "benchmarks" / "federated.py")


TIERS = [SimpleNamespace(name=n) for n in ("fast", "mid", "slow")]
IMAGES = 400
GROUPS = np.repeat(np.arange(IMAGES // 4), 4)  # 4 augmented copies per source image


def _run(accuracy: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Per tier, a per-image correctness vector with the given accuracy (a seeded draw)."""
    rng = np.random.default_rng(seed)
    return {t: rng.random(IMAGES) < a for t, a in accuracy.items()}


def _scores(dp_drop: float) -> dict[str, dict[str, list[dict[str, np.ndarray]]]]:
    base = {"fast": 0.8, "mid": 0.7, "slow": 0.5}
    dirichlet = {
        "supernet": [_run(base, s) for s in range(3)],
        "width": [_run({k: v - 0.1 for k, v in base.items()}, 10 + s) for s in range(3)],
        "fedavg": [_run({k: 0.5 for k in base}, 20 + s) for s in range(3)],
        "central": [_run({k: v + 0.05 for k, v in base.items()}, 30 + s) for s in range(3)],
        "supernet-dp@1000": [
            _run({k: v - dp_drop for k, v in base.items()}, 40 + s) for s in range(3)
        ],
    }
    iid = {
        "supernet": [_run(base, 50 + s) for s in range(3)],
        "width": [],
        "fedavg": [],
        "central": [_run(base, 60 + s) for s in range(3)],
    }
    return {"dirichlet": dirichlet, "iid": iid}


def test_targets_measure_the_differences_they_name(report: ModuleType) -> None:
    t = report.targets(_scores(dp_drop=0.3), TIERS, GROUPS)
    assert t["faster_tiers_gain_pts"] == pytest.approx(20, abs=6)  # mid 0.7 vs fedavg 0.5
    assert t["vs_width_only_pts"] == pytest.approx(10, abs=6)
    assert t["vs_central_iid_pts"] is not None  # iid central vs supernet was run
    assert "vs_width_only_pts" not in t["why_null"]
    # local DP's cost: the supernet without DP minus with it, worst tier, per epsilon
    assert set(t["dp_cost_pts"]) == {"1000"}
    assert t["dp_cost_pts"]["1000"] == pytest.approx(30, abs=8)
    assert t["comparisons"]["dirichlet"]["dp-cost@1000/slow"]["resolvable"]


def test_no_dp_rows_leave_the_cost_null_and_say_why(report: ModuleType) -> None:
    scores = _scores(dp_drop=0.0)
    del scores["dirichlet"]["supernet-dp@1000"]
    t = report.targets(scores, TIERS, GROUPS)
    assert t["dp_cost_pts"] is None
    assert "--dp-epsilons" in t["why_null"]["dp_cost_pts"]


def test_table_shows_targets_verdicts_and_the_privacy_cost(report: ModuleType) -> None:
    t = report.targets(_scores(dp_drop=0.3), TIERS, GROUPS)
    t |= {"resume_max_abs_diff": 0.0, "non_loopback_sockets": 0, "commit": "abc"}
    results = {
        "rows": [],
        "targets": t,
        "verdicts": report.verdicts(t, [x.name for x in TIERS]),
        "seeds_run": {},
        "settings": {"dp_clip": 1.0, "dp_delta": 1e-5},
        "tiers": [{"name": x.name} for x in TIERS],
    }
    assert results["verdicts"]["faster_tiers_gain_pts"]["verdict"] == "met"
    text = report.table(results)
    assert "| faster_tiers_gain_pts | +" in text
    assert "Local DP" in text and "| 1000 |" in text
    results["targets"]["resume_max_abs_diff"] = None  # --no-resume-check
    assert "| resume_max_abs_diff | not run" in report.table(results)
    assert "budget: the federated runs' sample-gradient steps" in text  # the default
    results["settings"]["central_budget"] = "sequential"
    assert "budget: the sequential steps of one average client" in report.table(results)


def test_command_line_reads_the_dp_levels(bench: ModuleType, tmp_path: Path) -> None:
    args = bench._parse(["--out", str(tmp_path), "--dp-epsilons", "8,1000"])
    assert args.dp_methods == ["supernet-dp@8", "supernet-dp@1000"]
    assert bench._parse(["--out", str(tmp_path), "--quick"]).dp_methods == []
    spec = bench._spec("supernet-dp@8", _fake_tiers(), args, "dirichlet", 0.5, 0)
    assert spec.dp == {"clipping_norm": 1.0, "epsilon": 8.0, "delta": 1e-5}
    for flag, bad in (
        ("--dp-epsilons", "0"),
        ("--dp-epsilons", "x"),
        ("--dirichlet-methods", "fedprox"),
    ):
        with pytest.raises(SystemExit):
            bench._parse(["--out", str(tmp_path), flag, bad])
    only = bench._parse(
        ["--out", str(tmp_path), "--dirichlet-methods", "supernet", "--no-resume-check"]
    )
    assert only.dirichlet_methods == ["supernet"] and only.resume_check is False


def test_only_seeds_splits_a_run_by_seed(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--only-seeds` runs those seeds' federated and centralized rows and no other; a seed
    outside `--seeds` is refused."""
    ran: list[tuple[str, str, int]] = []
    fake_history = [{"clients": [], "wall_s": 1.0}]

    def federated(method: str, tiers: object, args: object, part: str, alpha: object, seed: int):
        ran.append((part, method, seed))
        return {"only": np.ones(4, dtype=bool)}, fake_history

    monkeypatch.setattr(bench, "_federated", federated)
    monkeypatch.setattr(
        bench, "_central", lambda t, a, seed: ran.append(("central", "", seed)) or {}
    )
    base = [
        "--out",
        str(tmp_path),
        "--seeds",
        "4",
        "--dp-epsilons",
        "",
        "--iid-methods",
        "supernet",
    ]
    bench._run_all(_fake_tiers(), bench._parse([*base, "--only-seeds", "1", "3"]))
    assert {seed for _, _, seed in ran} == {1, 3}
    assert ("iid", "supernet", 3) in ran and ("central", "", 1) in ran
    assert ("dirichlet", "fedavg", 1) in ran
    with pytest.raises(SystemExit):
        bench._parse([*base, "--only-seeds", "4"])


def test_central_budget_is_the_samples_or_one_clients_steps(
    bench: ModuleType, tmp_path: Path
) -> None:
    base = ["--out", str(tmp_path), "--rounds", "12", "--local-epochs", "3", "--batch-size", "8"]
    samples = bench._central_settings(bench._parse(base), 1078, 12)
    assert (samples.epochs, samples.max_batches) == (36, None)  # 36 passes over 1,078 images
    seq = bench._central_settings(bench._parse([*base, "--central-budget", "sequential"]), 1078, 12)
    assert (seq.epochs, seq.max_batches) == (36, 12)  # a 90-image client's 12 batches a pass
    with pytest.raises(SystemExit):
        bench._parse([*base, "--central-budget", "wallclock"])


def test_a_cached_central_row_of_other_rounds_is_retrained(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resuming federated runs to more rounds must not read the fewer rounds' central row."""
    import torch

    trained: list[int] = []
    pair = (torch.zeros(16, 3, 8, 8), torch.zeros(16, dtype=torch.long))
    data = SimpleNamespace(train=SimpleNamespace(tensors=pair), val=SimpleNamespace(tensors=pair))
    data.test = data.train
    family = SimpleNamespace(full_model=lambda seed: None)
    monkeypatch.setattr(bench, "resolve", lambda spec: (family, data))
    monkeypatch.setattr(bench, "train_local", lambda *a: trained.append(a[-2].epochs))
    monkeypatch.setattr(bench, "evaluate_tier", lambda *a: np.ones(4, dtype=bool))
    for rounds in ("2", "2", "3"):
        args = bench._parse(["--out", str(tmp_path), "--rounds", rounds, "--local-epochs", "1"])
        assert bench._central(_fake_tiers(), args, 0)["only"].all()
    assert trained == [2, 3]  # the second call read the cache; the third retrained


def _fake_tiers() -> tuple[object, ...]:
    from nas.federated import TierSpec

    return (TierSpec("only", clients=2, arch={"any": 1}),)  # the spec does not read the arch


def test_a_run_resumed_to_more_rounds_is_scored_again(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    pair = (torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    data = SimpleNamespace(val=SimpleNamespace(tensors=pair), test=SimpleNamespace(tensors=pair))
    model = SimpleNamespace(load_state_dict=lambda w: None)
    family = SimpleNamespace(
        full_model=lambda seed: SimpleNamespace(state_dict=dict, **vars(model))
    )
    saved = {"round": 2}
    monkeypatch.setattr(bench, "resolve", lambda spec: (family, data))
    monkeypatch.setattr(
        bench, "load_server_state", lambda *a: SimpleNamespace(round=saved["round"], weights={})
    )
    monkeypatch.setattr(bench, "evaluate_tier", lambda *a: np.full(4, saved["round"] == 3))
    from dataclasses import replace

    from nas.federated import FederatedSpec

    spec = FederatedSpec(tiers=_fake_tiers(), rounds=2)
    assert not bench._scores(spec, tmp_path)["only"].any()
    saved["round"] = 3
    assert bench._scores(replace(spec, rounds=3), tmp_path)["only"].all()  # not the cached 2


def test_width_models_are_priced_like_subnets_and_can_set_the_budgets() -> None:
    budgets = _load("federated_budgets_bench", ROOT / "benchmarks" / "_federated_budgets.py")
    import latency_models
    import search_spaces
    from nas.federated import candidate_archs

    space = search_spaces.get_space("tiny")
    device = latency_models.CostModelPredictor(latency_models.get_device("pixel3-emulated"))
    archs = candidate_archs(space, 40, seed=0)
    largest = space.supernet().largest_arch()
    full, half, quarter = budgets.width_model_ms(space, device.emulated, largest)
    assert full == pytest.approx(float(device.predict_many(space, [largest])[0]), rel=1e-9)
    assert full > half > quarter
    fast, mid, slow = budgets.tier_budgets("width", space, device, archs)
    assert (fast, mid, slow) == pytest.approx((full, half, quarter), rel=2e-4)
    lat = device.predict_many(space, archs)
    assert budgets.tier_budgets("space", space, device, archs)[2] == pytest.approx(min(lat), 2e-4)
    assert quarter > min(lat)  # HeteroFL's quarter width misses the smallest subnet's budget


def test_tier_sampling_applies_to_the_supernet_rows_only(bench: ModuleType, tmp_path: Path) -> None:
    from nas.federated import TierSpec

    tiers = tuple(TierSpec(n, clients=2, arch={"any": i}) for i, n in enumerate(("a", "b", "c")))
    args = bench._parse(["--out", str(tmp_path), "--tier-sampling", "sandwich"])
    assert bench._spec("supernet", tiers, args, "iid", None, 0).tier_sampling == "sandwich"
    width = bench._spec("width", tiers, args, "iid", None, 0)
    assert width.kind == "width" and width.tier_sampling == "own"  # HeteroFL's row as it was
    assert bench._parse(["--out", str(tmp_path)]).tier_sampling == "sandwich"
