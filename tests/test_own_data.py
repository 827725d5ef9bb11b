"""A lab's own data: folders of images + label images through train_net.py, evaluation
and prediction; any DatasetCatalog name; measured and cached pixel statistics."""
import json
import logging
import os

import numpy as np
import pytest
import tifffile
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from iaunet_d2 import predict
from iaunet_d2.apps import train as train_net
from iaunet_d2.data import pixel_stats
from iaunet_d2.data.converters import convert_label_folder
from iaunet_d2.data.datasets.cells_demo import render_demo_image
from iaunet_d2.io.images import read_image
from iaunet_d2.data.validation import DatasetError
from iaunet_d2.config import build_config
from train_utils import REPO_ROOT, tiny_rcnn_opts

CUSTOM_IAUNET = os.path.join(REPO_ROOT, "configs", "custom", "iaunet_R50.yaml")
CUSTOM_MASK_RCNN = os.path.join(REPO_ROOT, "configs", "custom", "mask_rcnn_R50.yaml")


def make_label_folder(folder, count, seed, size=80, suffix="_masks"):
    """``count`` uint16 images with ``<name><suffix>.tif`` instance label images."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        image, masks = render_demo_image(rng, size=size, num_cells=int(rng.integers(3, 7)),
                                         min_radius=6, max_radius=12)
        labels = np.zeros((size, size), np.uint16)
        for k, mask in enumerate(masks, 1):
            labels[mask & (labels == 0)] = k
        tifffile.imwrite(os.path.join(folder, f"img{i:02d}.tif"), image.astype(np.uint16) * 40)
        tifffile.imwrite(os.path.join(folder, f"img{i:02d}{suffix}.tif"), labels)
    return folder


def _tiny_iaunet_opts(output_dir):
    return ["MODEL.DEVICE", "cpu", "MODEL.IAUNET.NUM_QUERIES", "20", "INPUT.IMAGE_SIZE", "64",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1",
            "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", str(output_dir)]


def _measured_mean(folder, count, normalization):
    pixels = [read_image(os.path.join(folder, f"img{i:02d}.tif"), normalization=normalization)[..., 0]
              for i in range(count)]
    stacked = np.stack(pixels).astype(np.float64)
    return stacked.mean(), stacked.std()


@pytest.fixture
def own_data(tmp_path):
    return (make_label_folder(str(tmp_path / "train"), 8, seed=0),
            make_label_folder(str(tmp_path / "val"), 3, seed=1))


@pytest.mark.parametrize("config, opts", [
    (CUSTOM_IAUNET, _tiny_iaunet_opts),
    (CUSTOM_MASK_RCNN, lambda out: tiny_rcnn_opts(out, max_iter=2, **{"INPUT.IMAGE_SIZE": 64,
                                                                      "TEST.DETECTIONS_PER_IMAGE": 20})),
], ids=["iaunet", "mask_rcnn"])
def test_train_evaluate_predict_on_a_label_folder(tmp_path, own_data, config, opts):
    train_dir, val_dir = own_data
    out = tmp_path / "run"
    assert train_net.cli(["--config-file", config, "--train-dir", train_dir, "--val-dir", val_dir]
                         + opts(out)) == 0
    assert (out / "model_final.pth").is_file()
    # The evaluation of the training run wrote predictions for the 3 validation images.
    results = json.loads((out / "inference" / "folder_val" / "coco_instances_results.json").read_text())
    assert {r["image_id"] for r in results} <= {1, 2, 3}

    # The saved config holds the measured statistics and needs no dataset lookup.
    saved = str(out / "config.yaml")
    cfg = build_config(saved, prepare_data=False)
    assert not cfg.INPUT.PIXEL_STATS_FROM_DATASET
    assert cfg.INPUT.INTENSITY_NORM.startswith("fixed:")
    mean, std = _measured_mean(train_dir, 8, cfg.INPUT.INTENSITY_NORM)
    assert cfg.MODEL.PIXEL_MEAN[0] == pytest.approx(mean, abs=0.01)
    assert cfg.MODEL.PIXEL_STD[0] == pytest.approx(std, abs=0.01)
    assert os.path.isfile(os.path.join(train_dir, ".iaunet_d2", "pixel_stats.json"))

    # --eval-only with the saved config as-is.
    assert train_net.cli(["--config-file", saved, "--eval-only", "MODEL.WEIGHTS",
                          str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "inference" / "folder_val" / "coco_instances_results.json").is_file()

    # Prediction on the validation folder: the images, not their label images.
    pred = tmp_path / "pred"
    assert predict.main(["--config-file", saved, "--weights", str(out / "model_final.pth"),
                         "--input", val_dir, "--output", str(pred)]) == 0
    written = sorted(p.name for p in pred.glob("*_labels.tif"))
    assert written == ["img00_labels.tif", "img01_labels.tif", "img02_labels.tif"]
    assert tifffile.imread(pred / "img00_labels.tif").shape == (80, 80)


def test_folder_conversion_and_statistics_are_cached_and_redone_on_change(tmp_path, monkeypatch):
    train_dir = make_label_folder(str(tmp_path / "train"), 3, seed=2)
    opts = ["DATASETS.TRAIN_DIR", train_dir, "OUTPUT_DIR", str(tmp_path / "out")]
    first = build_config(CUSTOM_IAUNET, opts)
    mean, _ = _measured_mean(train_dir, 3, first.INPUT.INTENSITY_NORM)
    assert first.MODEL.PIXEL_MEAN == [pytest.approx(mean, abs=0.01)] * 3
    assert list(first.DATASETS.TRAIN) == ["folder_train"]

    # Second run: neither conversion nor measurement again.
    def fail(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(pixel_stats, "compute_pixel_stats", fail)
    monkeypatch.setattr("iaunet_d2.data.datasets.folder.convert_label_folder", fail)
    MetadataCatalog.remove("folder_train")
    assert build_config(CUSTOM_IAUNET, opts).MODEL.PIXEL_MEAN == first.MODEL.PIXEL_MEAN
    monkeypatch.undo()

    # A new image changes the files: converted and measured again.
    make_label_folder(str(tmp_path / "more"), 1, seed=3)
    for name in ("img00.tif", "img00_masks.tif"):
        os.replace(tmp_path / "more" / name, os.path.join(train_dir, name.replace("img00", "img03")))
    MetadataCatalog.remove("folder_train")
    third = build_config(CUSTOM_IAUNET, opts)
    assert len(DatasetCatalog.get("folder_train")) == 4
    assert third.MODEL.PIXEL_MEAN[0] == pytest.approx(_measured_mean(train_dir, 4, third.INPUT.INTENSITY_NORM)[0], abs=0.01)
    assert third.MODEL.PIXEL_MEAN[0] != pytest.approx(first.MODEL.PIXEL_MEAN[0], abs=0.01)


def test_user_pixel_statistics_win(tmp_path):
    train_dir = make_label_folder(str(tmp_path / "train"), 2, seed=4)
    cfg = build_config(CUSTOM_IAUNET, ["DATASETS.TRAIN_DIR", train_dir, "OUTPUT_DIR", str(tmp_path),
                                       "MODEL.PIXEL_MEAN", "[10.0, 10.0, 10.0]",
                                       "MODEL.PIXEL_STD", "[2.0, 2.0, 2.0]"])
    assert list(cfg.MODEL.PIXEL_MEAN) == [10.0] * 3 and list(cfg.MODEL.PIXEL_STD) == [2.0] * 3
    # Nothing measured but the intensity range of the 16-bit images.
    cache = json.loads(open(os.path.join(train_dir, ".iaunet_d2", "pixel_stats.json")).read())
    assert [entry for entry in cache.values() if "mean" in entry] == []


def test_coco_json_folder(tmp_path):
    source = make_label_folder(str(tmp_path / "source"), 2, seed=5)
    # images/ and labels/ subfolders with the same file names, converted first...
    folder = str(tmp_path / "data")
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(folder, sub))
    for i in range(2):
        os.replace(os.path.join(source, f"img{i:02d}.tif"), os.path.join(folder, "images", f"img{i:02d}.tif"))
        os.replace(os.path.join(source, f"img{i:02d}_masks.tif"), os.path.join(folder, "labels", f"img{i:02d}.tif"))
    cfg = build_config(CUSTOM_IAUNET, ["DATASETS.TRAIN_DIR", folder, "OUTPUT_DIR", str(tmp_path)])
    converted = MetadataCatalog.get("folder_train").json_file
    assert len(DatasetCatalog.get("folder_train")) == 2

    coco_dir = tmp_path / "coco"
    os.makedirs(coco_dir)
    os.replace(tmp_path / "data" / "images", coco_dir / "images")
    with open(converted) as f:
        data = json.load(f)
    (coco_dir / "cells.json").write_text(json.dumps(data))
    build_config(CUSTOM_IAUNET, ["DATASETS.TRAIN_DIR", str(coco_dir), "OUTPUT_DIR", str(tmp_path)])
    records = DatasetCatalog.get("folder_train")
    assert [os.path.basename(r["file_name"]) for r in records] == ["img00.tif", "img01.tif"]
    assert all(os.path.isfile(r["file_name"]) for r in records)
    assert cfg.MODEL.PIXEL_MEAN[0] > 0


def test_any_catalog_name_trains_and_evaluates(tmp_path):
    folder = make_label_folder(str(tmp_path / "cells"), 4, seed=6)
    json_file = str(tmp_path / "cells.json")
    assert convert_label_folder(folder, folder, json_file).images == 4
    register_coco_instances("my_lab_cells", {}, json_file, folder)
    try:
        out = tmp_path / "run"
        args = train_net.parse_args(["--config-file", CUSTOM_IAUNET, "DATASETS.TRAIN", "('my_lab_cells',)",
                                     "DATASETS.TEST", "('my_lab_cells',)"] + _tiny_iaunet_opts(out))
        results = train_net.main(args)
        assert set(results["segm"]) >= {"AP", "AP50"}
        cache = json.loads((out / "pixel_stats.json").read_text())
        (entry,) = [e for e in cache.values() if "mean" in e]
        assert entry["mean"][0] == pytest.approx(_measured_mean(folder, 4, entry["normalization"])[0], abs=0.01)
    finally:
        DatasetCatalog.remove("my_lab_cells")
        MetadataCatalog.remove("my_lab_cells")


def test_unknown_dataset_name_is_one_line_exit_2(tmp_path, capsys):
    rc = train_net.cli(["--config-file", CUSTOM_IAUNET, "DATASETS.TRAIN", "('nobody_knows_me',)",
                        "OUTPUT_DIR", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: Dataset 'nobody_knows_me' is not registered")
    assert "--train-dir" in err[-1]


def test_folder_without_labels_is_one_line_exit_2(tmp_path, capsys):
    folder = tmp_path / "only_images"
    os.makedirs(folder)
    tifffile.imwrite(folder / "a.tif", np.zeros((32, 32), np.uint8))
    rc = train_net.cli(["--config-file", CUSTOM_IAUNET, "--train-dir", str(folder),
                        "OUTPUT_DIR", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith(f"error: Data folder '{folder}' gives no usable image")
    assert "a.tif: no label image" in err[-1]


def test_config_without_data_says_how_to_give_it(tmp_path, capsys):
    assert train_net.cli(["--config-file", CUSTOM_IAUNET, "OUTPUT_DIR", str(tmp_path)]) == 2
    assert "--train-dir DIR" in capsys.readouterr().err


def test_label_size_mismatch_is_left_out_and_counted(tmp_path, caplog):
    folder = make_label_folder(str(tmp_path / "train"), 3, seed=7)
    tifffile.imwrite(os.path.join(folder, "img01_masks.tif"), np.ones((40, 80), np.uint16))
    with caplog.at_level(logging.INFO, logger="iaunet_d2"):
        build_config(CUSTOM_IAUNET, ["DATASETS.TRAIN_DIR", folder, "OUTPUT_DIR", str(tmp_path)])
    assert len(DatasetCatalog.get("folder_train")) == 2
    assert "2 image(s)" in caplog.text and "1 failed" in caplog.text
    assert "img01_masks.tif' is 80x40 (WxH) but its image" in caplog.text
