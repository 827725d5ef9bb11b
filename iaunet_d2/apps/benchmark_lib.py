"""Speed and memory benchmark of Detectron2 models, relative to a baseline
(the measurements behind :mod:`iaunet_d2.apps.benchmark`).

Every number that depends on the machine is measured in the same run as the others and
reported as a ratio: the first model is the baseline (ratio 1.0), and achieved GFLOP/s
are a fraction of the machine's own ceiling (a large 3x3 convolution through torch),
measured in the same process just before the models. This keeps the tables comparable
on shared machines whose absolute speed changes with the load.

Fairness of random-initialised models: inference cost grows with the number of boxes
or masks that survive NMS and the score threshold, and a random model keeps a random
number of them. Unless told otherwise (``fair=False``), models are timed and counted
under ``analysis.full_test_workload``: an R-CNN sends all post-NMS proposals through the
box head and TEST.DETECTIONS_PER_IMAGE detections through the mask head, IAUNet
sends every query's mask through mask NMS, as for a trained model on a crowded
image.
"""
import contextlib
import logging
import math
import re
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from iaunet_d2.utils.analysis import describe_model

__all__ = [
    "measure_ceiling",
    "synthetic_image",
    "synthetic_train_batch",
    "time_call",
    "summarize",
    "measure_peak_memory",
    "benchmark_model",
    "run_benchmark",
    "TABLE_COLUMNS",
    "render_markdown",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- helpers
def _sync(device: str):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], repeats: int, warmup: int, device: str = "cpu") -> List[float]:
    """Seconds per call of ``fn`` for ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(max(0, warmup)):
        fn()
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def summarize(times: Sequence[float]) -> Dict[str, float]:
    """median, min, max, q1, q3 and iqr of a list of seconds."""
    ordered = sorted(times)
    med = statistics.median(ordered)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {"median": med, "min": ordered[0], "max": ordered[-1], "q1": q1, "q3": q3,
            "iqr": q3 - q1, "n": len(ordered)}


# ----------------------------------------------------------------------------- ceiling
def measure_ceiling(device: str = "cpu", repeats: int = 3, matmul_size: int = 2048,
                    conv_size: int = 128, conv_channels: int = 256) -> Dict[str, float]:
    """The machine's fp32 throughput through torch, in GFLOP/s (2 x multiply-adds).

    A (n x n) @ (n x n) matmul and a 3x3 convolution (1, C, S, S) -> (1, C, S, S) with
    padding 1; the best of ``repeats`` timed calls after one warm-up (the best, not the
    median: a ceiling is what the machine can do when it gets the chance).
    """
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(matmul_size, matmul_size, generator=gen).to(device)
    b = torch.randn(matmul_size, matmul_size, generator=gen).to(device)
    mm_times = time_call(lambda: a @ b, repeats, 1, device)
    x = torch.randn(1, conv_channels, conv_size, conv_size, generator=gen).to(device)
    w = torch.randn(conv_channels, conv_channels, 3, 3, generator=gen).to(device)
    with torch.no_grad():
        conv_times = time_call(lambda: torch.nn.functional.conv2d(x, w, padding=1), repeats, 1, device)
    mm_flops = 2.0 * matmul_size ** 3
    conv_flops = 2.0 * conv_channels * conv_channels * 9 * conv_size * conv_size
    return {
        "matmul_gflops": mm_flops / min(mm_times) / 1e9,
        "conv_gflops": conv_flops / min(conv_times) / 1e9,
        "matmul_size": matmul_size,
        "conv_shape": f"1x{conv_channels}x{conv_size}x{conv_size}, 3x3",
    }


# ----------------------------------------------------------------------------- inputs
def synthetic_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """(3, H, W) float image in [0, 255]."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(3, height, width, generator=gen) * 255.0


def synthetic_train_batch(height: int, width: int, batch_size: int = 2,
                          num_instances: int = 8, seed: int = 0) -> List[Dict]:
    """Training inputs: images with ``num_instances`` random bright discs each, as
    Instances with gt_classes, gt_boxes and gt_masks (BitMasks)."""
    from detectron2.structures import BitMasks, Boxes, Instances

    gen = torch.Generator().manual_seed(seed)
    ys = torch.arange(height, dtype=torch.float32)[:, None]
    xs = torch.arange(width, dtype=torch.float32)[None, :]
    batch = []
    for _ in range(batch_size):
        radius = torch.empty(num_instances).uniform_(0.03, 0.08, generator=gen) * min(height, width)
        cy = torch.rand(num_instances, generator=gen) * (height - 2 * radius) + radius
        cx = torch.rand(num_instances, generator=gen) * (width - 2 * radius) + radius
        masks = ((ys[None] - cy[:, None, None]) ** 2 + (xs[None] - cx[:, None, None]) ** 2
                 <= radius[:, None, None] ** 2)
        image = torch.rand(3, height, width, generator=gen) * 60.0
        image[:, masks.any(0)] += 150.0
        inst = Instances((height, width))
        inst.gt_classes = torch.zeros(num_instances, dtype=torch.int64)
        inst.gt_masks = BitMasks(masks)
        inst.gt_boxes = Boxes(inst.gt_masks.get_bounding_boxes().tensor)
        batch.append({"image": image, "instances": inst, "height": height, "width": width})
    return batch


# ----------------------------------------------------------------------------- memory
def _proc_status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _release_free_heap():
    """Give memory that the allocator keeps after frees back to the OS (glibc), so that
    the next call's peak shows up as RSS growth instead of reusing retained pages."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_peak_memory(fn: Callable[[], object], device: str = "cpu") -> Dict[str, object]:
    """Peak memory that one call of ``fn`` adds, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` above the allocation before the call.
    CPU: peak resident set size (VmHWM, reset through /proc/self/clear_refs) above the
    RSS before the call, after returning the allocator's free memory to the OS; where the reset is not allowed, the RSS growth after the call
    (a lower bound; the method is reported).
    """
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return {"peak_mib": (torch.cuda.max_memory_allocated() - before) / 2 ** 20,
                "method": "cuda.max_memory_allocated"}
    _release_free_heap()
    before = _proc_status_kib("VmRSS")
    if before is None:
        fn()
        return {"peak_mib": float("nan"), "method": "unavailable"}
    if _reset_peak_rss():
        before = _proc_status_kib("VmRSS")
        fn()
        return {"peak_mib": max(0, _proc_status_kib("VmHWM") - before) / 1024.0,
                "method": "VmHWM-VmRSS"}
    fn()
    return {"peak_mib": max(0, _proc_status_kib("VmRSS") - before) / 1024.0,
            "method": "VmRSS growth (lower bound)"}


# ----------------------------------------------------------------------------- models
def load_benchmark_config(config_file: str, opts: Sequence[str] = (), device: str = "cpu"):
    """Frozen config of ``config_file`` + ``opts`` on ``device``, random init."""
    from iaunet_d2.config import build_config

    base = list(opts) + ["MODEL.DEVICE", device, "MODEL.WEIGHTS", ""]
    return build_config(config_file, base, prepare_data=False)


def benchmark_model(cfg, height: int, width: int, repeats: int = 5, warmup: int = 1,
                    skip_train: bool = False, train_repeats: int = 3, train_batch: int = 2,
                    flops: Optional[float] = None, log: Callable[[str], None] = print,
                    label: str = "", full_load: bool = True) -> Dict[str, object]:
    """Measure one model: parameters, FLOPs, inference latency, memory, training step.

    Inference runs the eval-mode model on one (3, H, W) image under
    ``torch.inference_mode`` (the way an evaluator or predictor calls it). The training
    step is forward + backward + optimizer step (the project's optimizer from the
    config) on ``synthetic_train_batch``. With ``full_load``, inference is timed and
    counted under ``full_test_workload``.
    """
    from detectron2.modeling import build_model

    from iaunet_d2.solver import build_optimizer
    from iaunet_d2.utils.analysis import count_flops, count_parameters, full_test_workload

    device = cfg.MODEL.DEVICE
    arch, backbone = describe_model(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    params = count_parameters(model)["total"]
    if flops is None:
        log(f"[{label}] counting FLOPs at {height}x{width}")
        flops = float(count_flops(model, height, width, full_load=full_load)[0])
    model.eval()
    image = synthetic_image(height, width).to(device)
    inputs = [{"image": image, "height": height, "width": width}]

    def infer():
        with torch.inference_mode():
            return model(inputs)

    # Entered once, outside the timed calls: it copies and zeroes weights.
    with full_test_workload(model) if full_load else contextlib.nullcontext():
        log(f"[{label}] inference: {warmup} warm-up + {repeats} timed runs")
        times = time_call(infer, repeats, warmup, device)
        detections = len(infer()[0]["instances"])
        log(f"[{label}] peak memory of one inference")
        memory = measure_peak_memory(infer, device)
    stats = summarize(times)
    row = {
        "label": label, "model": f"{arch} {backbone}", "arch": arch, "backbone": backbone,
        "params": params, "flops": flops, "latency": stats,
        "images_per_s": 1.0 / stats["median"], "achieved_gflops": flops / stats["median"] / 1e9,
        "peak_mem_mib": memory["peak_mib"], "mem_method": memory["method"],
        "detections": detections, "train": None,
    }
    log(f"[{label}] inference median {stats['median']:.3f} s "
        f"(min {stats['min']:.3f}, max {stats['max']:.3f}), {detections} detections, "
        f"peak +{memory['peak_mib']:.0f} MiB")

    if not skip_train:
        model.train()
        optimizer = build_optimizer(cfg, model)
        batch = synthetic_train_batch(height, width, batch_size=train_batch)

        def step():
            losses = model(batch)
            total = sum(losses.values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()

        log(f"[{label}] training: 1 warm-up + {train_repeats} timed steps (batch {train_batch})")
        from detectron2.utils.events import EventStorage

        with EventStorage(0):  # R-CNN losses log to the event storage
            train_times = time_call(step, train_repeats, 1, device)
        row["train"] = summarize(train_times)
        log(f"[{label}] training step median {row['train']['median']:.3f} s")
    del model
    return row


def run_benchmark(config_files: Sequence[str], opts: Sequence[str] = (), height: int = 512,
                  width: int = 512, device: str = "cpu", repeats: int = 5, warmup: int = 1,
                  threads: int = 0, skip_train: bool = False, train_repeats: int = 3,
                  train_batch: int = 2, fair: bool = True, ceiling_kwargs: Optional[Dict] = None,
                  log: Callable[[str], None] = print) -> Dict[str, object]:
    """Benchmark several configs in one run; the first is the baseline.

    Returns a dict with ``settings``, ``ceiling`` (from ``measure_ceiling``, taken
    before the models and again after them: the table uses the higher reading, both are
    recorded) and ``rows`` (one per config, with ratios to the first).
    """
    if threads > 0:
        torch.set_num_threads(threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    load = _loadavg()
    log(f"machine ceiling ({torch.get_num_threads()} threads, load {load})")
    ceiling_kwargs = dict(ceiling_kwargs or {})
    before = measure_ceiling(device, **ceiling_kwargs)
    log(f"  matmul {before['matmul_gflops']:.1f} GFLOP/s, conv {before['conv_gflops']:.1f} GFLOP/s")
    rows = []
    for i, path in enumerate(config_files):
        cfg = load_benchmark_config(path, opts, device)
        label = f"{i}:{path}"
        log(f"[{label}] building {'/'.join(describe_model(cfg))}")
        rows.append(benchmark_model(cfg, height, width, repeats, warmup, skip_train,
                                    train_repeats, train_batch, log=log, label=label,
                                    full_load=fair))
        rows[-1]["config"] = path
    after = measure_ceiling(device, **ceiling_kwargs)
    log(f"machine ceiling again: matmul {after['matmul_gflops']:.1f}, conv {after['conv_gflops']:.1f}")
    ceiling = {key: max(before[key], after[key]) for key in ("matmul_gflops", "conv_gflops")}
    ceiling.update(before=before, after=after)

    base = rows[0]
    for row in rows:
        row["latency_ratio"] = row["latency"]["median"] / base["latency"]["median"]
        row["memory_ratio"] = (row["peak_mem_mib"] / base["peak_mem_mib"]
                               if base["peak_mem_mib"] and math.isfinite(base["peak_mem_mib"])
                               else float("nan"))
        row["train_ratio"] = (row["train"]["median"] / base["train"]["median"]
                              if row["train"] and base["train"] else None)
        row["ceiling_fraction"] = row["achieved_gflops"] / ceiling["conv_gflops"]
        # The least-disturbed run, comparable to the ceiling (itself a best-of).
        row["best_run_fraction"] = row["flops"] / row["latency"]["min"] / 1e9 / ceiling["conv_gflops"]
    return {
        "settings": {"configs": list(config_files), "opts": list(opts), "input_size": [height, width],
                     "device": device, "repeats": repeats, "warmup": warmup,
                     "threads": torch.get_num_threads(), "train_batch": train_batch,
                     "train_repeats": train_repeats, "skip_train": skip_train, "fair": fair,
                     "load_before": load, "load_after": _loadavg(), "torch": torch.__version__},
        "ceiling": ceiling,
        "rows": rows,
    }


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


# ----------------------------------------------------------------------------- output
TABLE_COLUMNS = [
    "model", "config", "params (M)", "GFLOPs", "latency median (s)", "IQR (s)", "min-max (s)",
    "images/s", "latency ratio", "GFLOP/s", "fraction of conv ceiling",
    "fraction (fastest run)", "peak mem (MiB)",
    "mem ratio", "train step (s)", "train ratio",
]


def table_rows(result: Dict[str, object]) -> List[List[str]]:
    """The benchmark table as strings, one list per model, in ``TABLE_COLUMNS`` order."""
    out = []
    for r in result["rows"]:
        lat = r["latency"]
        train = r["train"]
        out.append([
            r["model"], r["config"], f"{r['params'] / 1e6:.1f}", f"{r['flops'] / 1e9:.1f}",
            f"{lat['median']:.3f}", f"{lat['iqr']:.3f}", f"{lat['min']:.3f}-{lat['max']:.3f}",
            f"{r['images_per_s']:.2f}", f"{r['latency_ratio']:.2f}", f"{r['achieved_gflops']:.1f}",
            f"{r['ceiling_fraction']:.2f}", f"{r['best_run_fraction']:.2f}",
            f"{r['peak_mem_mib']:.0f}", f"{r['memory_ratio']:.2f}",
            "-" if train is None else f"{train['median']:.3f}",
            "-" if r["train_ratio"] is None else f"{r['train_ratio']:.2f}",
        ])
    return out


def render_markdown(result: Dict[str, object]) -> str:
    s = result["settings"]
    c = result["ceiling"]
    h, w = s["input_size"]
    lines = [
        f"Input 1x3x{h}x{w} on {s['device']} ({s['threads']} threads), "
        f"{s['repeats']} timed runs after {s['warmup']} warm-up; load average "
        f"{s['load_before']} before, {s['load_after']} after.",
        f"Ceiling in this run: matmul {c['matmul_gflops']:.1f} GFLOP/s, "
        f"3x3 conv {c['conv_gflops']:.1f} GFLOP/s (best of before/after the models).",
        "Ratios are to the first row. GFLOPs = 2 x fvcore multiply-adds at full test-time "
        "load (see tools/analyze_model.py); GFLOP/s = GFLOPs / median latency; fraction "
        "(fastest run) uses the minimum latency.",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(result)]
    return "\n".join(lines) + "\n"
