"""tools/benchmark.py and tools/compare.py (iaunet_d2.apps) on tiny models (seconds, not
measurements)."""
import csv
import importlib
import json
import os

import iaunet_d2  # noqa: F401
import pytest

from iaunet_d2.apps.benchmark_lib import (
    TABLE_COLUMNS,
    measure_ceiling,
    measure_peak_memory,
    render_markdown,
    run_benchmark,
    summarize,
    synthetic_train_batch,
    table_rows,
)
from train_utils import DEMO_MASK_RCNN, REPO_ROOT, tiny_rcnn_opts

DEMO_IAUNET = os.path.join(REPO_ROOT, "configs", "demo", "iaunet_R18_small.yaml")

# Applied to both configs: R18 everywhere, few proposals/detections, a small IAUNet.
TINY_OPTS = [
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.RES5_DILATION", "1",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "TEST.DETECTIONS_PER_IMAGE", "10",
    "MODEL.IAUNET.CONV_DIM", "32", "MODEL.IAUNET.MASK_DIM", "16",
    "MODEL.IAUNET.NUM_QUERIES", "6", "MODEL.IAUNET.NHEADS", "4",
    "MODEL.IAUNET.DIM_FEEDFORWARD", "64", "MODEL.IAUNET.TRAIN_NUM_POINTS", "256",
]


def _load_tool(name):
    """The application behind tools/<name>.py."""
    return importlib.import_module(f"iaunet_d2.apps.{name}")


def test_ceiling_is_positive():
    c = measure_ceiling("cpu", repeats=1, matmul_size=128, conv_size=16, conv_channels=32)
    assert c["matmul_gflops"] > 0 and c["conv_gflops"] > 0


def test_summary_and_memory_helpers():
    s = summarize([3.0, 1.0, 2.0, 4.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 4.0 and s["iqr"] > 0
    import torch

    mem = measure_peak_memory(lambda: torch.ones(64 * 2 ** 20 // 4).add_(1).sum())
    if mem["method"] != "unavailable":  # /proc-based on Linux
        assert mem["peak_mib"] >= 32  # the 64 MiB tensor, allowing for reused heap
    batch = synthetic_train_batch(48, 40, batch_size=2, num_instances=3)
    assert len(batch) == 2 and batch[0]["instances"].gt_masks.tensor.shape == (3, 48, 40)
    assert batch[0]["instances"].gt_boxes.tensor.shape == (3, 4)


def test_benchmark_table_on_tiny_models(tmp_path):
    messages = []
    result = run_benchmark(
        [DEMO_MASK_RCNN, DEMO_IAUNET], TINY_OPTS, 64, 64, "cpu", repeats=2, warmup=1,
        train_repeats=1, train_batch=1,
        ceiling_kwargs={"matmul_size": 256, "conv_size": 32, "conv_channels": 64},
        log=messages.append,
    )
    assert any("inference median" in m for m in messages)
    rows = result["rows"]
    assert [r["arch"] for r in rows] == ["Mask R-CNN", "IAUNet"]
    # Ratios to the first row, and achieved GFLOP/s against the measured ceiling.
    base, other = rows
    assert other["latency_ratio"] == pytest.approx(other["latency"]["median"] / base["latency"]["median"])
    assert other["train_ratio"] == pytest.approx(other["train"]["median"] / base["train"]["median"])
    assert rows[0]["detections"] == 10  # full R-CNN load: TEST.DETECTIONS_PER_IMAGE
    for r in rows:
        assert r["latency"]["median"] > 0 and r["latency"]["min"] <= r["latency"]["max"]
        assert r["images_per_s"] > 0 and r["flops"] > 0 and r["params"] > 0
        assert r["ceiling_fraction"] == pytest.approx(
            r["flops"] / 1e9 / r["latency"]["median"] / result["ceiling"]["conv_gflops"])
        assert r["train"]["median"] > 0
    assert result["ceiling"]["conv_gflops"] > 0
    table = table_rows(result)
    assert len(table) == 2 and all(len(row) == len(TABLE_COLUMNS) for row in table)
    md = render_markdown(result)
    assert "| " + " | ".join(TABLE_COLUMNS) + " |" in md
    json.dumps(result, default=str)


def test_benchmark_cli_writes_outputs(tmp_path, capsys):
    tool = _load_tool("benchmark")
    out = str(tmp_path / "bench")
    rc = tool.main(["--config-file", DEMO_IAUNET, "--input-size", "64", "64", "--repeats", "1",
                    "--warmup", "0", "--skip-train", "--output", out, *TINY_OPTS])
    assert rc == 0
    data = json.load(open(out + ".json"))
    assert data["rows"][0]["latency"]["median"] > 0 and data["rows"][0]["train"] is None
    assert "fraction of conv ceiling" in open(out + ".md").read()
    assert "inference median" in capsys.readouterr().out


def test_compare_writes_table_csv_and_chart(tmp_path):
    tool = _load_tool("compare")
    prefix = str(tmp_path / "cmp")
    # tiny_rcnn_opts shrinks the inputs and schedule; TINY_OPTS the models.
    opts = tiny_rcnn_opts(tmp_path / "unused", max_iter=1) + TINY_OPTS
    rc = tool.main(["--config-file", DEMO_MASK_RCNN, DEMO_IAUNET, "--train-iters", "1",
                    "--flops-size", "64", "64", "--output", prefix, *opts])
    assert rc == 0
    for ext in (".md", ".csv", ".png"):
        assert os.path.getsize(prefix + ext) > 0
    with open(prefix + ".csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:len(tool.COLUMNS)] == tool.COLUMNS
    assert [r["model"] for r in rows] == ["Mask R-CNN", "IAUNet"]
    assert {r["backbone"] for r in rows} == {"R18"}
    assert all(r["dataset"] == "cells_demo_val" for r in rows)
    for r in rows:
        assert 0.0 <= float(r["AP"]) <= 100.0 and float(r["GFLOPs"]) > 0
        # Paper convention: fvcore multiply-adds for R-CNNs, 2 x them for IAUNet.
        ratio = float(r["GFLOPs"]) / float(r["GFLOPs paper conv."])
        assert ratio == pytest.approx(2.0 if r["model"] == "Mask R-CNN" else 1.0, rel=0.02)
        assert float(r["#params (M)"]) > 1
    assert open(prefix + ".png", "rb").read(4) == b"\x89PNG"
    # Each config trained in its own folder.
    runs = sorted(os.listdir(prefix + "_runs"))
    assert len(runs) == 2


def test_compare_rejects_mismatched_weights(tmp_path):
    tool = _load_tool("compare")
    with pytest.raises(SystemExit):
        tool.main(["--config-file", DEMO_MASK_RCNN, DEMO_IAUNET, "--weights", "a.pth",
                   "--output", str(tmp_path / "x")])
