"""The federated benchmark's figures: paired comparisons, the results contract, verdicts,
the per-tier plots and the table (benchmarks/federated.py runs; this module reads its scores)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from nas.supernet import difference_interval, resolvable_difference

METHODS = ("supernet", "width", "fedavg", "central")
PARTITIONS = (("dirichlet", 0.5), ("iid", None))
DP_PREFIX = "supernet-dp@"  # a supernet row with local DP at the epsilon that follows


def compare(
    scores: dict[str, list[dict[str, Any]]],
    a: str,
    b: str,
    tier_a: str,
    tier_b: str,
    groups: np.ndarray,
) -> dict[str, Any]:
    """Accuracy of a (tier_a) minus b (tier_b) over seeds, in points, with its resolvable width."""
    n = min(len(scores[a]), len(scores[b]))  # the seeds both ran (central may run fewer)
    per_seed_a = np.array([s[tier_a] for s in scores[a][:n]], dtype=np.float64)  # seeds x images
    per_seed_b = np.array([s[tier_b] for s in scores[b][:n]], dtype=np.float64)
    diffs = per_seed_a.mean(1) - per_seed_b.mean(1)
    paired = difference_interval(per_seed_a.mean(0), per_seed_b.mean(0), groups)
    sd = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0
    need = resolvable_difference(paired.half_width, sd / np.sqrt(len(diffs)))
    mean = float(diffs.mean())
    return {
        "diff_pts": 100 * mean,
        "resolvable_half_width_pts": 100 * need,
        "resolvable": abs(mean) > need,
        "per_seed_pts": (100 * diffs).tolist(),
        "seeds": n,
    }


def targets(
    scores: dict[str, dict[str, list[dict[str, Any]]]], tiers: Any, groups: np.ndarray
) -> dict[str, Any]:
    """The results contract's figures (means over seeds), each comparison with its resolvable
    width; a comparison whose rows were not run is left out (its target is None, `why` says)."""
    names = [t.name for t in tiers]
    slow, faster = names[-1], names[:-1]
    out: dict[str, Any] = {"comparisons": {}, "why_null": {}}
    pairs = (
        ("supernet-vs-fedavg", "supernet", "fedavg", lambda t: slow),
        ("supernet-vs-width", "supernet", "width", lambda t: t),
        ("central-vs-supernet", "central", "supernet", lambda t: t),
    )
    for part, s in scores.items():
        comp = out["comparisons"][part] = {}
        for label, a, b, other in pairs:
            if not s.get(a) or not s.get(b):
                continue
            for t in names:
                comp[f"{label}/{t}"] = compare(s, a, b, t, other(t), groups)
    d, i = out["comparisons"].get("dirichlet", {}), out["comparisons"].get("iid", {})

    def pick(key: str, comp: dict[str, Any], label: str, tiers_: list[str], how: Any) -> None:
        rows = [comp.get(f"{label}/{t}") for t in tiers_]
        if any(r is None for r in rows):
            out[key] = None
            out["why_null"][key] = f"{label} was not run on this partition"
            return
        out[key] = how(r["diff_pts"] for r in rows)  # type: ignore[index]

    pick("faster_tiers_gain_pts", d, "supernet-vs-fedavg", faster, min)
    pick("slowest_tier_gain_pts", d, "supernet-vs-fedavg", [slow], min)
    pick("vs_width_only_pts", d, "supernet-vs-width", names, min)
    pick("vs_central_dirichlet_pts", d, "central-vs-supernet", names, max)
    pick("vs_central_iid_pts", i, "central-vs-supernet", names, max)
    out["dp_cost_pts"] = _privacy_costs(scores.get("dirichlet", {}), names, groups, out)
    return out


def _privacy_costs(
    s: dict[str, list[dict[str, Any]]], names: list[str], groups: np.ndarray, out: dict[str, Any]
) -> dict[str, Any] | None:
    """Per epsilon, what local DP costs the supernet: accuracy without DP minus with it, per
    tier (paired like every comparison), and the worst tier's cost. None when no DP row ran."""
    levels = sorted((m for m in s if m.startswith(DP_PREFIX) and s[m]), key=_epsilon)
    if not levels or not s.get("supernet"):
        out["why_null"]["dp_cost_pts"] = "no local-DP row was run (--dp-epsilons)"
        return None
    costs: dict[str, Any] = {}
    for m in levels:
        per_tier = {t: compare(s, "supernet", m, t, t, groups) for t in names}
        comp = out["comparisons"].setdefault("dirichlet", {})
        comp.update({f"dp-cost@{_epsilon(m):g}/{t}": c for t, c in per_tier.items()})
        costs[f"{_epsilon(m):g}"] = max(c["diff_pts"] for c in per_tier.values())
    return costs


def _epsilon(method: str) -> float:
    return float(method.removeprefix(DP_PREFIX))


#: each target: (comparison label, partition, tiers "faster"/"slowest"/"all", bound, sense)
TARGETS = {
    "faster_tiers_gain_pts": ("supernet-vs-fedavg", "dirichlet", "faster", 2.0, ">="),
    "slowest_tier_gain_pts": ("supernet-vs-fedavg", "dirichlet", "slowest", -1.0, ">="),
    "vs_width_only_pts": ("supernet-vs-width", "dirichlet", "all", 0.0, ">="),
    "vs_central_dirichlet_pts": ("central-vs-supernet", "dirichlet", "all", 5.0, "<="),
    "vs_central_iid_pts": ("central-vs-supernet", "iid", "all", 2.0, "<="),
}
NOISE = Path(__file__).resolve().parent / "results" / "accuracy_noise" / "results.json"


def verdicts(targets: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Per target: met, missed or not resolvable. The noise width is the widest resolvable
    difference of the comparisons behind it (paired bootstrap over test source images plus the
    seed-to-seed spread, `nas.supernet.resolvable_difference`); with one seed the spread is
    unmeasured, so the width is at least accuracy_noise's two-run width (`diff_ci95_pts`)."""
    floor = float(json.loads(NOISE.read_text())["targets"]["diff_ci95_pts"])
    out = {}
    for key, (label, part, which, bound, sense) in TARGETS.items():
        value = targets.get(key)
        if value is None:
            out[key] = {"verdict": "not measured", "why": targets["why_null"].get(key)}
            continue
        tiers = {"faster": names[:-1], "slowest": names[-1:], "all": names}[which]
        rows = [targets["comparisons"][part][f"{label}/{t}"] for t in tiers]
        width = max(r["resolvable_half_width_pts"] for r in rows)
        if min(r["seeds"] for r in rows) < 2:
            width = max(width, floor)
        meets = value >= bound if sense == ">=" else value <= bound
        verdict = (
            "not resolvable" if abs(value - bound) <= width else ("met" if meets else "missed")
        )
        out[key] = {"value": value, "target": f"{sense} {bound:+g}", "noise_pts": width,
                    "verdict": verdict}  # fmt: skip
    return out


def plots(out: Path, histories: dict[str, Any], tiers: Any) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for t in tiers:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for (part, method), runs in sorted(histories.items()):
            acc = np.mean([[r["tiers"][t.name]["accuracy"] for r in h] for h in runs], axis=0)
            ax.plot(
                np.arange(1, len(acc) + 1),
                100 * acc,
                label=f"{method} ({part})",
                linestyle="-" if part == "dirichlet" else "--",
            )
        ax.set(
            xlabel="round", ylabel="test accuracy (%)", title=f"tier {t.name} ({t.mmacs:.2f} MMACs)"
        )
        ax.legend(fontsize=6)
        fig.tight_layout()
        name = f"tier-{t.name}.png"
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        files.append(name)
    return files


def table(results: dict[str, Any]) -> str:
    lines = [
        "| partition | tier | MMACs | " + " | ".join(METHODS) + " |",
        "|---" * (3 + len(METHODS)) + "|",
    ]
    for row in results["rows"]:
        accs = " | ".join("not run" if row[m] is None else f"{row[m]:.1f}" for m in METHODS)
        lines.append(f"| {row['partition']} | {row['tier']} | {row['mmacs']:.2f} | {accs} |")
    t = results["targets"]
    lines += [
        "",
        "| target | value (points) | target | noise +- (points) | verdict |",
        "|---|---|---|---|---|",
    ]
    lines.insert(0, f"Seeds per row: {results['seeds_run']}\n")
    budget = results["settings"].get("central_budget", "samples")
    lines.insert(1, f"Centralized rows' budget: {_BUDGETS[budget]}.\n")
    for key in (
        "faster_tiers_gain_pts",
        "slowest_tier_gain_pts",
        "vs_width_only_pts",
        "vs_central_dirichlet_pts",
        "vs_central_iid_pts",
    ):
        value = "null: " + t["why_null"][key] if t[key] is None else f"{t[key]:+.2f}"
        v = results["verdicts"][key]
        noise = f"{v['noise_pts']:.2f}" if "noise_pts" in v else "-"
        lines.append(f"| {key} | {value} | {v.get('target', '-')} | {noise} | {v['verdict']} |")
    lines += [
        _resume_row(t["resume_max_abs_diff"]),
        f"| non_loopback_sockets | {t['non_loopback_sockets']} | 0 | - | "
        f"{'met' if t['non_loopback_sockets'] == 0 else 'missed'} |",
    ]
    return "\n".join(lines + _privacy_table(results)) + "\n"


_BUDGETS = {
    "samples": "the federated runs' sample-gradient steps, in one sequence",
    "sequential": "the sequential steps of one average client (the federated runs' wall-clock "
    "steps)",
}


def _resume_row(diff: float | None) -> str:
    if diff is None:
        return "| resume_max_abs_diff | not run (--no-resume-check) | <= 1e-06 | - | not measured |"
    verdict = "met" if diff <= 1e-6 else "missed"
    return f"| resume_max_abs_diff | {diff:.3g} | <= 1e-06 | - | {verdict} |"


def _privacy_table(results: dict[str, Any]) -> list[str]:
    """The accuracy cost of local DP per epsilon and tier (supernet rows, Dirichlet)."""
    costs = results["targets"].get("dp_cost_pts")
    if not costs:
        return []
    s = results["settings"]
    comp = results["targets"]["comparisons"]["dirichlet"]
    names = [t["name"] for t in results["tiers"]]
    lines = [
        "",
        f"Local DP (Flower's LocalDpMod: clip {s['dp_clip']:g}, delta {s['dp_delta']:g}, each "
        "reply (epsilon, delta)-DP; no epsilon claimed for the model): accuracy without DP "
        "minus with it, points (+- resolvable width; with one seed the seed-to-seed spread is "
        "not in it), Dirichlet, supernet rows.",
        "",
        "| epsilon | " + " | ".join(names) + " | worst | seeds |",
        "|---" * (len(names) + 3) + "|",
    ]
    for eps, worst in costs.items():
        cells = [comp[f"dp-cost@{eps}/{t}"] for t in names]
        row = " | ".join(
            f"{c['diff_pts']:+.1f} (+-{c['resolvable_half_width_pts']:.1f})" for c in cells
        )
        lines.append(f"| {eps} | {row} | {worst:+.1f} | {cells[0]['seeds']} |")
    return lines
