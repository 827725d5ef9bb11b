"""Held under load: one prediction run over many images keeps its memory flat."""
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
