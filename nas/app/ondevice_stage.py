"""The run's optional `ondevice` stage (issue 20): each winner's deployed model adapted to a
shifted target domain on a few shots under every configured update mode, written beside the
deployed model (never over it), and its section of the run report.

The model adapted is the one `nas ondevice adapt` adapts (`deployed_model`): the winner's
compression chain's last fp32 model (`prune`, else `distill`; the runtime's training program
trains fp32, so the int8 models are not it), else the winner with the supernet's weights, batch
norm recalibrated (no chain ran, or it made no fp32 model). Layout::

    ondevice/stage/results.json                  one row per winner and mode (the report's)
    ondevice/stage/<arch>/<mode>-<hash>/         adapted.safetensors and report.json
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import nas.app.builtin_stages  # noqa: F401  (registers "report", which this stage goes before)
from nas.app.ondevice_adapt import adapt_model, arch_folder, deployed_model
from nas.app.report import register_report_section
from nas.app.stages import STAGES, Stage, fingerprint, key_added, register_stage
from nas.core.files import json_digest, read_json, write_json_atomic

__all__ = ["RESULTS", "STAGE_DIR", "ondevice_section", "stage_ondevice"]

log = logging.getLogger(__name__)

STAGE_DIR = "ondevice/stage"
RESULTS = f"{STAGE_DIR}/results.json"
_PLOT = "ondevice_accuracy_memory.png"


def _previous(path: Path) -> dict[str, dict[str, Any]]:
    """The rows an earlier invocation finished, by their key (resumed, not redone)."""
    if not path.exists():
        return {}
    data = read_json(path, "the on-device stage's results (JSON object)", "delete it to redo")
    return {row["key"]: row for row in data.get("rows", []) if "key" in row}


def stage_ondevice(state: Any, progress: bool) -> None:
    """Adapt each winner under each mode of `ondevice.modes` (resuming finished rows)."""
    from nas.ondevice import BudgetTooSmallError

    cfg = state.config.ondevice
    out = state.run_dir / STAGE_DIR
    out.mkdir(parents=True, exist_ok=True)
    done = _previous(state.run_dir / RESULTS)
    inputs = fingerprint(STAGES["ondevice"], state.config.to_dict())
    rows: list[dict[str, Any]] = []
    winners = [] if state.winners is None else [str(k) for k in state.winners["arch_key"]]
    for arch_key in winners:
        arch = state.space.from_key(arch_key)
        deployed = None
        for mode in cfg.modes:
            key = json_digest({"inputs": inputs, "arch": arch_key, "mode": mode}, 16)
            if key in done:
                rows.append(done[key])
                continue
            if deployed is None:
                steps = list(state.config.compress.steps)
                deployed = deployed_model(
                    state.run_dir, state.space, arch, state.data, state.supernet, steps
                )
            row: dict[str, Any] = {"key": key, "arch": arch_key, "mode": mode}
            try:
                folder, report = adapt_model(
                    deployed.model,
                    state.space,
                    arch,
                    state.data,
                    out / arch_folder(state.space, arch),
                    mode=mode,
                    blocks_k=cfg.blocks,
                    budget_kb=cfg.budget_kb,
                    shift=cfg.shift,
                    shots=cfg.shots,
                    steps=cfg.steps,
                    lr=cfg.lr,
                    batch=cfg.batch,
                    engine=cfg.runtime,
                    seed=state.config.seed,
                    optimizer=cfg.optimizer,
                    fallback=cfg.fallback,
                    factory=deployed.factory,
                    extra={"source": deployed.source},
                    batch_norm=cfg.batch_norm,
                )
                report.pop("losses", None)  # they stay in the folder's report.json
                row.update(report, folder=str(folder.relative_to(state.run_dir)))
            except BudgetTooSmallError as err:  # the other modes still run; the report says
                row.update(source=deployed.source, skipped=str(err))
            log.info("ondevice %s %s: %s", arch_key, mode, row.get("skipped", "adapted"))
            rows.append(row)
            write_json_atomic(state.run_dir / RESULTS, {"rows": rows})  # resumable by row
    write_json_atomic(state.run_dir / RESULTS, {"rows": rows})


# -- the report section --------------------------------------------------------------------
def _pct(value: Any) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _kb(value: Any) -> str:
    return "" if value is None else f"{value / 1024:.1f}"


def _row_line(r: dict[str, Any], label: str) -> str:
    if "skipped" in r:
        return f"| {label} | {r['mode']} | skipped: {r['skipped']} |" + " |" * 8
    low, high = r["gain_ci95_pts"]
    gain = f"{r['gain_pts']:+.1f} [{low:+.1f}, {high:+.1f}]"
    gain += "" if r["gain_resolvable"] else " not resolvable"
    engine = r["engine"] + (" (fall-back)" if r.get("fallback_reason") else "")
    cells = [
        label,
        r["plan"],
        r["source"],
        engine,
        _pct(r["accuracy_before"]),
        _pct(r["accuracy_adabn"]),
        _pct(r["accuracy_after"]),
        gain,
        _kb(r["planned_bytes"]),
        _kb(r.get("program_bytes")),
        f"{r['step_ms']:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


def ondevice_section(state: Any) -> list[str]:
    """The report's section: accuracy before and after with the no-adaptation and AdaBN
    baselines, memory planned and in the runtime program's plan, step time, the plot."""
    from nas import viz

    cfg = getattr(state.config, "ondevice", None)
    path = state.run_dir / RESULTS
    if cfg is None or not cfg.enabled or not path.exists():
        return []
    rows = list(_previous(path).values())
    # an arch by its folder (its key holds the table's `|`); winners.csv maps it to the key
    labels = [arch_folder(state.space, state.space.from_key(r["arch"])) for r in rows]
    engine = "the ExecuTorch runtime" if cfg.runtime == "executorch" else "PyTorch"
    if cfg.runtime == "executorch" and cfg.fallback == "pytorch":
        engine += ", PyTorch where the runtime cannot"
    lines = [
        "## On-device learning",
        "",
        f"Each winner's deployed model adapted to the `{cfg.shift}` target domain on "
        f"{cfg.shots} labelled shots per class, {cfg.steps} steps of {cfg.optimizer} at batch "
        f"{cfg.batch}, in {engine} (batch norm frozen). Accuracy on the target test set (%); "
        "the gain over no adaptation with its paired 95 % interval over the test images' "
        "sources (test-set noise only, one seed). Training memory in KB: planned by the model, "
        "and in the runtime program's memory plan with trainable weights and optimizer state "
        "(where the runtime ran). An arch is named by its folder: `compress/<folder>/` holds "
        "its deployed models, `ondevice/stage/<folder>/` the adapted ones beside them.",
        "",
        "| arch (folder) | plan | model adapted | engine | no adaptation | AdaBN | after | gain (pts) "
        "| planned KB | program KB | step ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[_row_line(r, label) for r, label in zip(rows, labels, strict=True)],
        "",
    ]
    for r, label in zip(rows, labels, strict=True):
        if r.get("fallback_reason"):
            lines += [f"- {label} {r['mode']}: PyTorch ran: {r['fallback_reason']}"]
    adapted = [r for r in rows if "skipped" not in r]
    if adapted:
        points = [
            {
                "mode": r["mode"],
                "memory_bytes": r["planned_bytes"],
                "accuracy": 100 * r["accuracy_after"],
            }
            for r in adapted
        ]
        baselines = {
            f"{name} (mean)": 100 * sum(r[acc] for r in adapted) / len(adapted)
            for name, acc in (("no adaptation", "accuracy_before"), ("AdaBN", "accuracy_adabn"))
        }
        fig = viz.plot_accuracy_memory(points, baselines, path=state.run_dir / _PLOT)
        viz.close(fig)
        lines += ["", f"![accuracy against training memory]({_PLOT})", ""]
    return lines


register_stage(
    Stage(
        "ondevice",
        stage_ondevice,
        keys=("ondevice",),
        extends=("compress.top_k",),  # more winners: the new ones are adapted, the rest kept
        after=("winners", "compress"),
        reads=("winners.csv", "compress", "supernet"),
        writes=(STAGE_DIR,),
        switch="ondevice.enabled",
        doc="adapts each winner's deployed model to a target domain on the device (optional)",
    ),
    before="report",
)
register_report_section("ondevice", ondevice_section)
# frozen batch norm, as the stage adapted before the key: older folders keep their rows
key_added("ondevice.batch_norm", "eval")
