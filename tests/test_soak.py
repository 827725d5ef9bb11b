"""Held under load: one prediction run over many images keeps its memory flat."""
import json
import os

import cv2
import numpy as np
import pytest

from iaunet_d2 import predict
from iaunet_d2.inference import cli as predict_cli

from train_utils import REPO_ROOT, save_random_model

IAUNET_CFG = "configs/demo/iaunet_R18_small.yaml"
SMALL = ["INPUT.IMAGE_SIZE", "64", "MODEL.IAUNET.NUM_QUERIES", "10", "MODEL.IAUNET.TEST.SCORE_THRESH", "0.0"]
IMAGES, WARM_UP = 300, 50


def _resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc (Linux)")
def test_resident_memory_stays_flat_over_300_images(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    weights = save_random_model(tmp_path / "iaunet.pth", IAUNET_CFG, SMALL)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(IMAGES):
        cv2.imwrite(str(folder / f"im{k:03d}.png"), rng.integers(0, 256, (48, 56), dtype=np.uint8))
    resident = []
    write = predict_cli.write_outputs

    def write_and_measure(*args, **kwargs):
        labels = write(*args, **kwargs)
        resident.append(_resident_bytes())
        return labels

    monkeypatch.setattr(predict_cli, "write_outputs", write_and_measure)
    status = predict.main(["--config-file", IAUNET_CFG, "--weights", weights, "--input", str(folder),
                           "--output", str(tmp_path / "out"), *SMALL])
    assert status == 0
    assert len(resident) == IMAGES
    after_warm_up = resident[WARM_UP - 1]
    growth = max(resident[WARM_UP:]) / after_warm_up
    assert growth <= 1.10, f"resident memory grew {growth:.3f}x after {WARM_UP} images"


def test_memory_soak_summary():
    from iaunet_d2.apps.memory_soak import summarize

    samples = [{"iter": i, "seconds": 10.0 * (i + 1), "rss_mib": rss}
               for i, rss in enumerate([500, 800, 900, 910, 950, 920])]
    summary = summarize(samples, warm_up_seconds=30)
    assert summary["rss_after_warm_up_mib"] == 900
    assert summary["max_rss_after_warm_up_mib"] == 950
    assert summary["final_rss_mib"] == 920
    assert summary["growth"] == pytest.approx(950 / 900)
    assert summary["iterations"] == 6
    with pytest.raises(ValueError, match="too short for its warm-up"):
        summarize(samples, warm_up_seconds=60)


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc (Linux)")
def test_memory_soak_tool_trains_and_writes_its_record(tmp_path, monkeypatch):
    from iaunet_d2.apps import memory_soak

    from train_utils import DEMO_MASK_RCNN, tiny_rcnn_opts

    monkeypatch.chdir(REPO_ROOT)
    opts = tiny_rcnn_opts(tmp_path / "unused")
    prefix = str(tmp_path / "soak")
    assert memory_soak.main(["--config-file", DEMO_MASK_RCNN, "--minutes", "0.1",
                             "--warm-up-minutes", "0.02", "--output", prefix, *opts]) == 0
    record = json.load(open(prefix + ".json"))
    samples = record["samples"]
    assert len(samples) == record["iterations"] and samples[-1]["seconds"] >= 6.0
    after = [s["rss_mib"] for s in samples if s["seconds"] > 1.2]
    assert record["max_rss_after_warm_up_mib"] == max(after)
    assert "| resident after warm-up (0.02 min) |" in open(prefix + ".md").read()
