"""Training at scale: memory and speed of streamed image folders, elastic overhead, data waits.

Each measurement trains the supernet (sandwich: largest, smallest, two random subnets per step)
in a fresh subprocess while this process samples the summed PSS (proportional set size) of that
process and its DataLoader workers every 0.1 s (psutil):

- memory: `tiny` on 64 px images, batch 128, 2 workers, one full epoch on a generated folder of
  10,000 and of 50,000 images, streamed; the in-memory loader (`load_image_folder`, every image
  decoded into one array) on the same folders beside it;
- speed: images/s of the streamed and the in-memory run on the same settings and the same work
  per image (the streamed runs do not augment, as the in-memory path does not), the in-memory
  run between two streamed ones; and the CPU seconds per image of each (process and workers);
  the speed target itself from both trained in one process, in short interleaved blocks
  (`benchmarks/_train_scale_speed.py`: separate runs minutes apart differ by more than the
  10 % the target resolves, even on a quiet host);
- throughput rows: `tiny` at 32 px and `mobilenetv3` at 224 px, on synthetic tensors and on a
  generated folder (streamed), fp32 and bf16, on the CPU and, with ``--device cuda``, the GPU;
- elastic overhead: a supernet step (its first, a warm-up, left out) against the summed step
  times of the static subnets of sandwiches like it, built alone and trained on the same batch,
  timed in the same process right after; on the CPU in CPU seconds (one thread; other work on
  a shared machine changes them little, unlike wall-clock seconds), the wall-clock ratio beside;
- data waits: the share of step time spent waiting for the next batch (2 workers, tiny, 32 px);
- on a GPU: bf16 `mobilenetv3` killed mid-run and resumed (the step it resumed at).

    python benchmarks/train_scale.py --out benchmarks/results/train_scale [--preset quick|medium|full] [--device cuda]

The image folders are written to a temporary folder and deleted afterwards. Timings share the
CPU with whatever else runs; the load average and the number of CPUs are recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from benchmarks._train_scale_speed import interleaved, interleaved_ratio  # noqa: E402, F401
from benchmarks.train_scale_tables import fmt_row, table, targets  # noqa: E402


# -- data ------------------------------------------------------------------------------------
def make_folder(root: Path, n: int, size: int, classes: int = 10, seed: int = 0) -> Path:
    """`n` JPEG images of `size` px in root/<class>/: smooth random colour fields (they compress
    and decode like photographs, unlike noise), a little larger than `size` and not square."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    coarse = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    for i in range(n):
        w, h = size + 8 + i % 7, size + 4 + i % 5
        im = Image.fromarray(coarse[i]).resize((w, h), Image.Resampling.BILINEAR)
        im.save(root / f"c{i % classes}" / f"{i:06d}.jpg", quality=90)
    return root


def synthetic(n: int, resolution: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, resolution, resolution, generator=g), torch.arange(n) % 10


def space_of(name: str, resolution: int) -> Any:
    from search_spaces import MobileNetV3Space, TinySpace

    if name == "tiny":
        return TinySpace()
    return MobileNetV3Space(resolutions=(resolution,), num_classes=10)


# -- one run, in a subprocess ----------------------------------------------------------------
def _data(spec: dict[str, Any], kind: str) -> Any:
    from nas.data import load_image_folder, load_streamed_folder

    res = spec["resolution"]
    if kind == "synthetic":
        return synthetic(spec["n"], res)
    if kind == "memory":
        return load_image_folder(
            spec["folder"], resolution=res, val_fraction=0.0, test_fraction=0.0
        )
    return load_streamed_folder(
        spec["folder"],
        resolution=res,
        val_fraction=0.0,
        test_fraction=0.0,
        augment=spec.get("augment", "auto"),
    )


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Train as `spec` says; what happened (images/s, data wait, steps, load time)."""
    import torch

    from nas.supernet import train_supernet

    torch.set_num_threads(spec.get("threads", 1))
    if spec["data"] == "interleaved":
        return interleaved(spec, _data, space_of)
    t0 = time.perf_counter()
    res, kind = spec["resolution"], spec["data"]
    data = _data(spec, kind)
    load_s = time.perf_counter() - t0
    cpu0 = _cpu_seconds()
    result = train_supernet(
        space_of(spec["space"], res),
        data,
        spec["out"],
        schedule="sandwich",
        epochs=1,
        batch_size=spec["batch"],
        num_workers=spec["workers"] if kind == "folder" else 0,
        precision=spec["precision"],
        device=spec["device"],
        checkpoint_every=spec.get("checkpoint_every", 0),
        max_steps=spec.get("steps"),
        progress=False,
    )
    row = {
        "load_s": load_s,
        "steps": result.step,
        "images_per_s": result.images_per_s,
        "train_s": result.train_s,
        "data_wait_s": result.data_wait_s,
        "data_wait_share": result.data_wait_s / result.train_s if result.train_s else None,
        "step_s": result.train_s / max(1, result.step),
        # CPU seconds of the training (not the loading): this process and its DataLoader
        # workers (counted once they exit, which they do when the run ends)
        "cpu_s": _cpu_seconds() - cpu0,
        "images_trained": result.step * spec["batch"],
        "main_cpu_s": sum(result.step_cpu_s),  # of the steps, in this process only
        "device": result.device,
    }
    if spec.get("static_steps"):
        row.update(elastic_overhead(spec, result.step_s, result.step_cpu_s))
    return row


def _cpu_seconds() -> float:
    import resource

    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def elastic_overhead(
    spec: dict[str, Any], step_s: list[float], step_cpu_s: list[float]
) -> dict[str, float]:
    """The supernet's steps (the first, a warm-up, left out) against the static subnets' steps
    timed right after them in the same process. On the CPU the ratio is of CPU seconds (the
    process's, one thread each), which the other work of a shared machine changes little, and
    the wall-clock ratio is kept beside it; on a GPU it is the wall-clock ratio."""
    static_wall, static_cpu = static_step_times(
        spec["space"],
        spec["resolution"],
        spec["batch"],
        spec["static_steps"],
        spec["precision"],
        spec["device"],
    )
    wall = float(np.mean(step_s[1:] or step_s))
    cpu = float(np.mean(step_cpu_s[1:] or step_cpu_s))
    on_cpu = spec["device"] == "cpu"
    return {
        "supernet_step_s": wall,
        "supernet_step_cpu_s": cpu,
        "static_step_s": static_wall,
        "static_step_cpu_s": static_cpu,
        "elastic_overhead_wall": wall / static_wall,
        "elastic_overhead": cpu / static_cpu if on_cpu else wall / static_wall,
    }


def _pss(proc: Any) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except Exception:  # a worker that just exited
            continue
    return total


def run_child(spec: dict[str, Any], timeout: float = 7200) -> dict[str, Any]:
    """`child(spec)` in a fresh interpreter; the peak summed PSS of it and its workers."""
    import psutil

    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak, stop = [0], threading.Event()
    if spec.get("what") == "speed":
        stop.set()  # no PSS sampling beside a speed measurement: it would take a core's share

    def sample() -> None:
        ps = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], _pss(ps))
            except psutil.Error:
                return
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate(timeout=timeout)
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"run {spec} failed:\n{err[-3000:]}")
    row = json.loads(out.strip().splitlines()[-1])
    return {**spec, **row, "peak_pss_gb": peak[0] / 2**30}


# -- the static subnets of the same sandwiches -----------------------------------------------
def static_step_s(
    space_name: str, resolution: int, batch: int, steps: int, precision: str, device: str
) -> float:
    """The wall seconds of `static_step_times`."""
    return static_step_times(space_name, resolution, batch, steps, precision, device)[0]


def static_step_times(
    space_name: str, resolution: int, batch: int, steps: int, precision: str, device: str
) -> tuple[float, float]:
    """Mean over `steps` sandwiches (largest, smallest, two random, seeded) of the summed time
    of one training step of each subnet built alone (`space.build`), SGD, cross-entropy: wall
    seconds and CPU seconds of this process."""
    import torch

    from nas.supernet import Precision, resolve_device

    torch.set_num_threads(1)
    dev = resolve_device(device)
    space = space_of(space_name, resolution)
    net = space.supernet()
    rng = np.random.default_rng(0)
    x, y = synthetic(batch, resolution)
    x, y = x.to(dev), y.to(dev)
    prec = Precision(precision, dev)
    total, total_cpu = 0.0, 0.0
    for s in range(steps + 1):  # the first sandwich warms up and is not counted
        archs = [net.largest_arch(), net.smallest_arch(), space.sample(rng), space.sample(rng)]
        for arch in archs:
            model = space.build(arch).to(dev).train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            _sync(dev)
            t0, c0 = time.perf_counter(), time.process_time()
            with prec.autocast():
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            prec.backward(loss)
            prec.step(opt)
            _sync(dev)
            if s:
                total += time.perf_counter() - t0
                total_cpu += time.process_time() - c0
    return total / steps, total_cpu / steps


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the benchmark ---------------------------------------------------------------------------
#: quick: minutes, checks the script (the figures mean little); medium: the memory runs on
#: 10,000 and 50,000 images for 15 steps, not a full epoch, the interleaved speed blocks on
#: 10,000, and a few steps per throughput row (fits a shared 2-core machine in about 25
#: minutes); full: the settings of issue 22
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"memory_sizes": [600, 1200], "memory_batch": 64, "memory_steps": None,
              "speed_steps": 2, "mbv3_batch": 4, "mbv3_images": 16, "static_steps": 1,
              "tiny_images": 256, "speed_sizes": [600], "speed_block_steps": 3,
              "speed_rounds": 1},
    "medium": {"memory_sizes": [10_000, 50_000], "memory_batch": 128, "memory_steps": 15,
               "speed_steps": 4, "mbv3_batch": 8, "mbv3_images": 48, "static_steps": 2,
               "tiny_images": 640, "speed_sizes": [10_000], "speed_block_steps": 8,
               "speed_rounds": 2},
    "full": {"memory_sizes": [10_000, 50_000], "memory_batch": 128, "memory_steps": None,
             "speed_steps": 20, "mbv3_batch": 16, "mbv3_images": 160, "static_steps": 5,
             "tiny_images": 2560, "speed_sizes": [10_000, 50_000], "speed_block_steps": 20,
             "speed_rounds": 2},
}  # fmt: skip


def memory_rows(tmp: Path, cfg: dict[str, Any], workers: int) -> list[dict[str, Any]]:
    """Per folder size: streamed, in memory, streamed again (the in-memory run bracketed in
    time, so a change of the machine's load between runs weighs on both sides). The streamed
    runs do the in-memory path's work per image (decode, shorter side resized, centre crop:
    augment "none"), since `load_image_folder` does not augment."""
    rows = []
    for n in cfg["memory_sizes"]:
        folder = make_folder(tmp / f"img{n}", n, 64)
        for i, kind in enumerate(("folder", "memory", "folder")):
            spec = {
                "space": "tiny",
                "resolution": 64,
                "data": kind,
                "augment": "none",
                "folder": str(folder),
                "batch": cfg["memory_batch"],
                "workers": workers,
                "precision": "fp32",
                "device": "cpu",
                "out": str(tmp / f"run-mem-{n}-{kind}-{i}"),
                "n": n,
                "what": "memory",
                "steps": cfg["memory_steps"],  # None: one full epoch
            }
            rows.append(run_child(spec))
            print(fmt_row(rows[-1]), flush=True)
        if n in cfg["speed_sizes"]:
            rows.append(speed_row(tmp, cfg, workers, folder, n))
            print(fmt_row(rows[-1]), flush=True)
        shutil.rmtree(folder)
    return rows


def speed_row(tmp: Path, cfg: dict[str, Any], workers: int, folder: Path, n: int) -> dict[str, Any]:
    """Streamed against in memory on the memory rows' settings, interleaved in one process
    (`benchmarks._train_scale_speed`): the speed target."""
    spec = {
        "space": "tiny",
        "resolution": 64,
        "data": "interleaved",
        "augment": "none",
        "folder": str(folder),
        "batch": cfg["memory_batch"],
        "workers": workers,
        "precision": "fp32",
        "device": "cpu",
        "out": str(tmp / f"run-speed-{n}"),
        "n": n,
        "what": "speed",
        "steps": cfg["speed_block_steps"],
        "rounds": cfg["speed_rounds"],
    }
    return run_child(spec)


def throughput_rows(
    tmp: Path, cfg: dict[str, Any], device: str, workers: int
) -> list[dict[str, Any]]:
    rows = []
    plans = [
        ("tiny", 32, 64, cfg["tiny_images"]),
        ("mobilenetv3", 224, cfg["mbv3_batch"], cfg["mbv3_images"]),
    ]
    for space, res, batch, n in plans:
        folder = make_folder(tmp / f"{space}-folder", n, res)
        for kind in ("synthetic", "folder"):
            for precision in ("fp32", "bf16"):
                spec = {
                    "space": space,
                    "resolution": res,
                    "data": kind,
                    "folder": str(folder),
                    "batch": batch,
                    "workers": workers,
                    "precision": precision,
                    "device": device,
                    "steps": min(cfg["speed_steps"], n // batch),
                    "out": str(tmp / f"run-{space}-{kind}-{precision}-{device}"),
                    "n": n,
                    "what": "throughput",
                    # synthetic rows: the static subnets timed in the same process after them
                    "static_steps": cfg["static_steps"] if kind == "synthetic" else 0,
                }
                row = run_child(spec)
                rows.append(row)
                print(fmt_row(row), flush=True)
        shutil.rmtree(folder)
    return rows


def resume_after_kill(tmp: Path, device: str, batch: int) -> dict[str, Any]:
    """bf16 mobilenetv3 killed after its first checkpoint, then resumed: the step it resumed at."""
    out = tmp / "run-kill"
    spec = {
        "space": "mobilenetv3",
        "resolution": 224,
        "data": "synthetic",
        "n": batch * 40,
        "batch": batch,
        "workers": 0,
        "precision": "bf16",
        "device": device,
        "out": str(out),
        "checkpoint_every": 5,
    }
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)})
    while proc.poll() is None and not (out / "checkpoint.json").exists():
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    killed_at = json.loads((out / "checkpoint.json").read_text())["state"]["step"]
    row = run_child(spec)
    return {"killed_at_step": killed_at, "finished_step": row["steps"], "device": row["device"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=False, help="folder for results.json and table.md")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--quick", action="store_true", help="--preset quick")
    parser.add_argument("--device", default="cpu", help="also run the throughput rows here (cuda)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if not args.out:
        parser.error("--out is required")
    preset = "quick" if args.quick else args.preset
    cfg = PRESETS[preset]
    from nas.app.config import git_commit

    commit = git_commit(cwd=ROOT)  # at the start: the code this run loads
    load_before = os.getloadavg()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="train_scale-") as tmp_name:
        tmp = Path(tmp_name)
        mem = memory_rows(tmp, cfg, args.workers)
        thr = throughput_rows(tmp, cfg, "cpu", args.workers)
        gpu = None if args.device == "cpu" else args.device
        resumed = None
        if gpu is not None:
            thr += throughput_rows(tmp, cfg, gpu, os.cpu_count() or 2)
            resumed = resume_after_kill(tmp, gpu, cfg["mbv3_batch"])
    results = {
        "settings": {**cfg, "preset": preset, "workers": args.workers, "device": args.device},
        "host": {
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "minutes": (time.time() - t0) / 60,
        },
        "rows": mem + thr,
        "resume_after_kill": resumed,
        "targets": targets(mem, thr, gpu, commit),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "table.md").write_text(table(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
