"""What compression buys on the real artifacts: fp32 -> pruned (-40 % MACs) -> int8 (QAT), PTQ beside.

One run of :func:`nas.compress.run_chain` on the embedded digits (test set 2,250 images) for the
best feasible arch of a `tiny` search: with ``--run RUN`` (a run folder made by ``nas demo``) the
run's first winner, taken from its supernet and distilled from the supernet's largest subnet, as
``nas compress`` does; without it the largest-MACs `tiny` arch, trained from scratch ("distill"
without a teacher). Then pruned by 40 % of its MACs with
KD fine-tuning from the unpruned model, then quantized to int8 both ways (PTQ with calibration,
QAT with KD from the pruned fp32 model), then exported: ExecuTorch ``.pte`` (XNNPACK) and ONNX
for every model, plus ONNX Runtime's own static int8 of each fp32 model. Every artifact runs on
the whole test set in its runtime (top-1 agreement and largest logit difference against the
model it came from) and is timed there with the project's measurement protocol
(``latency_models.measure``), 1 thread, batch 1.

Where the bytes go (:mod:`nas.compress.sizes`): every int8 artifact's tensor data against the
format's structure, and the int8/fp32 ratio of both formats over networks of growing size
(the chain's model, the largest `tiny` arch, a `mobilenetv3` subnet): PTQ with per-channel and
per-tensor weight scales; sizes do not depend on training, so these models keep their seeded
initialisation.

    python benchmarks/compress.py --out runs/bench/compress [--run runs/demo] [--quick]

Timings share a 2-core CPU with whatever else runs; the load average is recorded beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils.data import TensorDataset

from latency_models import get_device
from latency_models.measure import DEFAULT_PROTOCOL, Measurement, Protocol, RunInfo, measure
from nas.app.config import git_commit
from nas.backends import has_vnni
from nas.compress import (
    ArtifactTimer,
    ChainConfig,
    ExportConfig,
    FinetuneConfig,
    KDConfig,
    PruneConfig,
    QATConfig,
    largest_arch,
    run_chain,
)
from nas.data import ImageDataset, load_embedded_digits
from search_spaces.tiny import TinySpace

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("benchmarks.compress")

TARGETS = {
    "int8_size_ratio_max": 0.3,
    "qat_accuracy_drop_points_max": 1.0,
    "runtime_agreement_min": 0.99,
    "pruned_macs_ratio_max": 0.6,
}


@dataclasses.dataclass(frozen=True)
def _subset(data: ImageDataset, n_train: int, n_test: int | None) -> ImageDataset:
    def cut(ds: TensorDataset, n: int | None) -> TensorDataset:
        return ds if n is None else TensorDataset(*(t[:n] for t in ds.tensors))

    return dataclasses.replace(
        data, train=cut(data.train, n_train), val=cut(data.val, 512), test=cut(data.test, n_test)
    )


def _config(quick: bool, epochs: float, distill_lr: float, weight_bits: int) -> ChainConfig:
    kd = KDConfig(alpha=0.7, temperature=4.0)
    if quick:
        short = FinetuneConfig(epochs=0.25, lr=0.01)
        return ChainConfig(
            distill=FinetuneConfig(epochs=epochs, lr=distill_lr),
            kd=kd,
            prune=PruneConfig(macs_reduction=0.4, rounds=1, finetune=short, final_finetune=short),
            ptq_images=128,
            qat=QATConfig(
                train=FinetuneConfig(epochs=0.25, lr=5e-4, warmup_fraction=0.0),
                calibration_images=128,
                weight_bits=weight_bits,
            ),
            export=ExportConfig(formats=("pte", "onnx"), calibration_images=64),
        )
    return ChainConfig(
        distill=FinetuneConfig(epochs=epochs, lr=distill_lr),
        kd=kd,
        prune=PruneConfig(
            macs_reduction=0.4,
            rounds=4,
            finetune=FinetuneConfig(epochs=0.5, lr=0.01),
            final_finetune=FinetuneConfig(epochs=2.0, lr=0.01),
            kd=kd,
        ),
        ptq_images=512,
        qat=QATConfig(
            train=FinetuneConfig(epochs=2.0, lr=5e-4, warmup_fraction=0.0),
            kd=kd,
            freeze_observers_at=0.5,
            freeze_bn_at=0.0,  # the fp32 model's statistics: see QATConfig
            calibration_images=512,
            weight_bits=weight_bits,
        ),
        export=ExportConfig(formats=("pte", "onnx"), calibration_images=256),
    )


def _summary(rows: list[dict[str, Any]], timings: dict[str, Measurement]) -> dict[str, Any]:
    """One entry per model (fp32, pruned fp32, PTQ int8, QAT int8, ORT int8 of each fp32)."""
    models: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["format"] == "pytorch":
            key = {
                "distill": "fp32",
                "prune": "pruned fp32",
                "ptq": "pruned int8 PTQ (PT2E)",
                "qat": "pruned int8 QAT (PT2E)",
            }.get(r["step"], r["model"])
            models.setdefault(key, {}).update(
                {"accuracy_pytorch": r["accuracy"], "macs": r["macs"], "params": r["params"]}
            )
            continue
        if r["step"] != "export":
            continue
        src = {
            "distill": "fp32",
            "prune": "pruned fp32",
            "ptq": "pruned int8 PTQ (PT2E)",
            "qat": "pruned int8 QAT (PT2E)",
        }[r["source"]]
        key = src if "ORT" not in r["model"] else f"{src} -> int8 ORT static"
        entry = models.setdefault(key, {"macs": r["macs"], "params": r["params"]})
        fmt = r["format"]
        m = timings.get(r["file"])
        entry[fmt] = {
            "file": r["file"],
            "size_bytes": r["size_bytes"],
            "accuracy": r["accuracy"],
            "top1_agreement": r["top1_agreement"],
            "max_abs_logit_diff": r["max_abs_logit_diff"],
            "latency_ms": m.latency_ms if m else None,
            "latency_median_ms": m.median_ms if m else None,
            "latency_p10_ms": m.p10_ms if m else None,
            "latency_p90_ms": m.p90_ms if m else None,
            "converged": m.converged if m else None,
        }
    return models


def _targets(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    fp32, pruned = models["fp32"], models["pruned fp32"]
    qat = models["pruned int8 QAT (PT2E)"]
    out: dict[str, Any] = {}
    for fmt in ("pte", "onnx"):
        ratio = qat[fmt]["size_bytes"] / pruned[fmt]["size_bytes"]
        out[f"int8_size_ratio_{fmt}"] = {
            "value": ratio,
            "met": ratio <= TARGETS["int8_size_ratio_max"],
        }
    ort = models["pruned fp32 -> int8 ORT static"]["onnx"]["size_bytes"]
    ratio = ort / pruned["onnx"]["size_bytes"]
    out["int8_size_ratio_onnx_ort_static"] = {
        "value": ratio,
        "met": ratio <= TARGETS["int8_size_ratio_max"],
    }
    drop_vs_pruned = 100 * (pruned["accuracy_pytorch"] - qat["accuracy_pytorch"])
    drop_vs_fp32 = 100 * (fp32["accuracy_pytorch"] - qat["accuracy_pytorch"])
    out["qat_accuracy_drop_points_vs_pruned_fp32"] = {
        "value": drop_vs_pruned,
        "met": drop_vs_pruned <= TARGETS["qat_accuracy_drop_points_max"],
    }
    out["qat_accuracy_drop_points_vs_unpruned_fp32"] = {
        "value": drop_vs_fp32,
        "met": drop_vs_fp32 <= TARGETS["qat_accuracy_drop_points_max"],
    }
    agreements = {
        f"{k} {fmt}": v[fmt]["top1_agreement"]
        for k, v in models.items()
        for fmt in ("pte", "onnx")
        if fmt in v
    }
    worst = min(agreements, key=lambda k: agreements[k])
    out["runtime_agreement_min"] = {
        "value": agreements[worst],
        "artifact": worst,
        "met": agreements[worst] >= TARGETS["runtime_agreement_min"],
    }
    ratio = pruned["macs"] / fp32["macs"]
    out["pruned_macs_ratio"] = {"value": ratio, "met": ratio <= TARGETS["pruned_macs_ratio_max"]}
    return out


def _table(models: dict[str, dict[str, Any]]) -> str:
    head = [
        "model",
        "top-1 % (PyTorch)",
        "MACs",
        "params",
        ".pte bytes",
        ".onnx bytes",
        ".pte top-1 % / agree %",
        ".onnx top-1 % / agree %",
        "max dlogit pte / onnx",
        "XNNPACK 1t ms",
        "ORT 1t ms",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for name, m in models.items():
        pte, onnx = m.get("pte", {}), m.get("onnx", {})
        acc = m.get("accuracy_pytorch")
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    f(None if acc is None else 100 * acc, ".2f"),
                    f(m.get("macs"), ","),
                    f(m.get("params"), ","),
                    f(pte.get("size_bytes"), ","),
                    f(onnx.get("size_bytes"), ","),
                    f"{f(100 * pte['accuracy'], '.2f')} / {f(100 * pte['top1_agreement'], '.2f')}"
                    if pte
                    else "-",
                    f"{f(100 * onnx['accuracy'], '.2f')} / {f(100 * onnx['top1_agreement'], '.2f')}"
                    if onnx
                    else "-",
                    f"{f(pte.get('max_abs_logit_diff'), '.3g')} / {f(onnx.get('max_abs_logit_diff'), '.3g')}",
                    f(pte.get("latency_ms"), ".3f"),
                    f(onnx.get("latency_ms"), ".3f"),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def _winner(run: Path) -> tuple[Any, dict[str, Any], Any, Any, str]:
    """(space, arch, data, supernet, why) of a run folder's first winner (``winners.csv``: the
    best feasible archs by accuracy, best first)."""
    import csv

    from nas.app.pipeline import open_finished_run

    winners = run / "winners.csv"
    if not winners.exists():
        raise SystemExit(f"{winners} not found: --run needs a run folder whose search finished")
    with winners.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{winners} lists no winner (no feasible arch?)")
    finished = open_finished_run(run)
    arch = dict(finished.space.from_key(rows[0]["arch_key"]))
    why = f"first winner of {run} (best feasible by accuracy)"
    return finished.space, arch, finished.data, finished.supernet, why


def _size_models(chain_model: torch.nn.Module | None, quick: bool) -> list[tuple[str, Any, Any]]:
    """(label, fp32 module, input shape C x H x W) of growing size, seeded initialisation."""
    import search_spaces

    out: list[tuple[str, Any, Any]] = []
    if chain_model is not None:
        out.append(("chain's pruned fp32 model", chain_model, (3, 32, 32)))
    tiny = TinySpace()
    big = largest_arch(tiny)
    torch.manual_seed(0)
    out.append(("largest tiny arch", tiny.build(big), tuple(tiny.input_shape(big))))
    if not quick:
        mbv3 = search_spaces.get_space("mobilenetv3")
        arch = mbv3.sample(0)
        torch.manual_seed(0)
        shape = tuple(mbv3.input_shape(arch))
        out.append((f"mobilenetv3 sample 0 ({shape[-1]} px)", mbv3.build(arch), shape))
    return out


def size_scaling(out: Path, chain_model: torch.nn.Module | None, quick: bool) -> list[dict]:
    """int8/fp32 file and tensor ratios per format over models of growing size."""
    from nas.compress import artifact_contents, convert, export_onnx, export_pte, ptq

    rows = []
    d = out / "sizes"
    d.mkdir(parents=True, exist_ok=True)
    for i, (label, model, shape) in enumerate(_size_models(chain_model, quick)):
        model = model.eval()
        example = torch.zeros(1, *shape)
        calibration = torch.randn(32, *shape, generator=torch.Generator().manual_seed(0))
        fp32 = {
            "pte": artifact_contents(export_pte(model, example, d / f"{i}-fp32.pte")),
            "onnx": artifact_contents(export_onnx(model, example, d / f"{i}-fp32.onnx")),
        }
        params = sum(p.numel() for p in model.parameters())
        for per_channel in (True, False):
            q = convert(ptq(model, calibration, shape, n_images=32, per_channel=per_channel))
            tag = "per-channel" if per_channel else "per-tensor"
            for fmt, export in (("pte", export_pte), ("onnx", export_onnx)):
                c = artifact_contents(export(q, example, d / f"{i}-int8-{tag}.{fmt}"))
                rows.append(
                    {
                        "model": label,
                        "params": params,
                        "weights": tag,
                        "format": fmt,
                        "fp32": fp32[fmt].to_dict(),
                        "int8": c.to_dict(),
                        "ratio_file": c.file_bytes / fp32[fmt].file_bytes,
                        "ratio_tensors": c.tensor_bytes / fp32[fmt].tensor_bytes,
                    }
                )
    return rows


def _size_table(rows: list[dict]) -> str:
    head = (
        "| model | params | weight scales | format | fp32 bytes | int8 bytes | int8 / fp32 file | "
        "int8 / fp32 tensor data | int8 scales bytes | int8 structure bytes | fp32 structure "
        "bytes |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['weights']} | {r['format']} | "
            f"{r['fp32']['file_bytes']:,} | {r['int8']['file_bytes']:,} | {r['ratio_file']:.3f} | "
            f"{r['ratio_tensors']:.3f} | {r['int8']['scale_bytes']:,} | "
            f"{r['int8']['structure_bytes']:,} | {r['fp32']['structure_bytes']:,} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 epochs on 2,048 images, short fine-tuning, 500 test images",
    )
    parser.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="training epochs (default 8 from scratch, 3 with --run or --quick)",
    )
    parser.add_argument(
        "--weight-bits",
        type=int,
        choices=(7, 8),
        help="int8 weight range (default 8, or 7 on an x86 CPU without VNNI, where ONNX "
        "Runtime's int8 kernels saturate with full-range weights)",
    )
    parser.add_argument("--no-sizes", action="store_true", help="skip the size-scaling table")
    parser.add_argument(
        "--run", type=Path, help="a run folder made by `nas demo`: compress its first winner"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "torchao"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    epochs = args.epochs
    if epochs is None:
        epochs = 3.0 if args.quick or args.run is not None else 8.0
    weight_bits = args.weight_bits or (8 if has_vnni() else 7)

    student: Any = None
    teacher: Any = None
    space: Any
    if args.run is not None:
        space, arch, data, supernet, arch_choice = _winner(args.run)
        student, teacher = supernet.export, "largest"
    else:
        space = TinySpace()
        arch = largest_arch(space)
        data = load_embedded_digits()
        arch_choice = "largest arch of `tiny` (every dimension at its largest value = largest MACs)"
    if args.quick:
        data = _subset(data, 2048, 500)
    protocol = Protocol(max_s=0.5, min_rounds=2) if args.quick else DEFAULT_PROTOCOL
    timings: dict[str, Measurement] = {}

    def timer(runner: Any) -> float:
        info = RunInfo(
            device=f"{runner.runtime}-1t",
            runtime=runner.runtime,
            threads=1,
            dtype="int8" if "int8" in runner.path.name else "fp32",
        )
        m = measure(runner, protocol, info=info)
        timings[runner.path.name] = m
        return m.latency_ms

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    result = run_chain(
        args.out / "run",
        arch,
        space=space,
        data=data,
        steps=("distill", "prune", "ptq", "qat", "export"),
        config=_config(args.quick, epochs, 0.02 if student else 0.1, weight_bits),
        devices=[
            get_device("torch-cpu"),
            ArtifactTimer("xnnpack-1t", "executorch-xnnpack"),
            ArtifactTimer("ort-cpu-1t", "onnxruntime"),
        ],
        timer=timer,
        seed=args.seed,
        student=student,
        teacher=teacher,
    )
    seconds = time.perf_counter() - t0
    rows = [r.to_dict() for r in result.rows]
    if result.resumed and "export" in result.resumed:
        log.warning("every step was resumed: artifact timings come from the earlier run")
    models = _summary(rows, timings)
    targets = _targets(models)
    sizes = [] if args.no_sizes else size_scaling(args.out, result.models.get("prune"), args.quick)
    results = {
        "benchmark": "compress",
        "commit": git_commit(ROOT, mark_dirty=True),
        "quick": args.quick,
        "space": space.name,
        "arch_key": space.key(arch),
        "arch_choice": arch_choice,
        "train_epochs": epochs,
        "from_supernet": student is not None,
        "weight_bits": weight_bits,
        "host_has_vnni": has_vnni(),
        "test_images": len(data.test),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "seconds": seconds,
        "resumed_steps": result.resumed,
        "targets": targets,
        "models": models,
        "chain_rows": rows,
        "chain_dir": str(result.directory),
        "sizes": sizes,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    met = "\n".join(
        f"- {k}: {v['value']:.4g} ({'met' if v['met'] else 'NOT met'})" for k, v in targets.items()
    )
    table = (
        f"# Compression benchmark ({'quick' if args.quick else 'full'})\n\n"
        f"commit {results['commit']}; {arch_choice}: `{space.key(arch)}`; {len(data.test)} "
        f"test images; {epochs:g} epochs {'of KD from the supernet' if student else 'from scratch'}"
        f"; {weight_bits}-bit int8 weights (host VNNI: {has_vnni()}); load average "
        f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after; {seconds:.0f} s.\n\n"
        f"{_table(models)}\nTargets:\n{met}\n\n"
        f"Chain report: {result.report_path}\n"
    )
    if sizes:
        table += (
            "\n## Where the int8 bytes go, over model size (PTQ, seeded initialisation)\n\n"
            + _size_table(sizes)
        )
    (args.out / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
